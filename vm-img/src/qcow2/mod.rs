//! qcow2: what imago does not do for us. The header check that runs
//! before any table is trusted, and the refcount walk of `vm-img check`.
//! Reading and writing go through imago and `data.rs`, over the
//! storage of `ordered.rs`, which keeps its metadata writes in a safe order.

pub mod check;
pub mod data;
#[cfg(any(test, fuzzing))]
pub mod fuzz;
pub mod header;
pub mod ordered;

pub use header::Header;
