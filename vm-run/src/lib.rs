//! vm-run's parts, one concern a module; src/main.rs is the command. A
//! library so that the fuzz targets (fuzz/) drive the same device code.

pub mod board;
pub mod boot;
pub mod bus;
pub mod clock;
pub mod config;
pub mod console;
pub mod control;
pub mod devices;
pub mod disk;
pub mod error;
pub mod exit;
pub mod irq;
pub mod memory;
pub mod nic;
pub mod outcome;
pub mod pci;
pub mod ratelimit;
pub mod sandbox;
pub mod scsi;
pub mod signals;
pub mod snapshot;
pub mod stats;
pub mod vcpu;
pub mod virtio;
pub mod vm;
pub mod x86;
