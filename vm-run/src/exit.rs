//! Exit statuses, from sysexits(3), so that scripts and service files can
//! tell a guest that powered off from one that wants a restart.

pub const OK: i32 = 0;
pub const USAGE: i32 = 64;
pub const DATAERR: i32 = 65;
pub const NOINPUT: i32 = 66;
pub const UNAVAILABLE: i32 = 69;
pub const SOFTWARE: i32 = 70;
pub const OSERR: i32 = 71;
/// The guest asked for a reboot: vmd restarts such a guest, a service
/// manager does the same on this status.
pub const TEMPFAIL: i32 = 75;
pub const NOPERM: i32 = 77;
/// SIGINT, as a shell reports a command it interrupted.
pub const INTERRUPTED: i32 = 130;
