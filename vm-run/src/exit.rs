//! Exit statuses, from sysexits(3), so that scripts and service files can
//! tell a guest that powered off from one that wants a restart. The same
//! numbers for every tool: they live in vm-img's `exit`.

pub use vm_img::exit::*;
