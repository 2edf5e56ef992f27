//! Disk images: raw and qcow2 (with base images), as vm-img makes and
//! inspects them and as vm-run's virtio-blk reads and writes them. This
//! crate owns the disk formats; vm-run depends on it for qcow2.

pub mod chain;
pub mod convert;
pub mod create;
pub mod error;
pub mod exit;
pub mod image;
pub mod info;
pub mod iov;
pub mod qcow2;
pub mod size;

pub use chain::open_regular;
pub use error::{Error, Result};
pub use image::{Format, Image, OpenOptions};
