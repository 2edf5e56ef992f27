//! Snapshots: a guest's whole state as a stream (vm-send writes it,
//! vm-receive reads it). `stream` is the format on the wire, `conf` its
//! first section, `memory` the pages; what each device and vCPU keeps is
//! beside its code, and `board/snapshot.rs` says in which order.

pub mod conf;
pub mod live;
pub mod memory;
pub mod stream;

pub use conf::{DiskRecord, GuestConfig, NicRecord};

/// Pages a MEM section carries at most.
pub const MEM_RUN_PAGES: usize = 256;
pub const PAGE: usize = 4096;
