//! qcow2: what imago does not do for us. The header check that runs
//! before any table is trusted, and the refcount walk of `vm-img check`.
//! Reading and writing go through imago (see `image.rs`).

pub mod check;
#[cfg(any(test, fuzzing))]
pub mod fuzz;
pub mod header;

pub use header::Header;
