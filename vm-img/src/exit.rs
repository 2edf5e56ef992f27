//! Exit statuses, from sysexits(3), for every tool of the workspace:
//! vm-img uses them here, vm-run, vm-receive, vm-send and vm-ctl through
//! vm-run's `exit`, and vm-net includes this file (it depends on no crate
//! of ours, to stay small). One number means one thing in every tool, and
//! each man page's EXIT STATUS lists the ones its tool uses.

pub const OK: i32 = 0;
/// A bad option or value on the command line.
pub const USAGE: i32 = 64;
/// A file or stream that is not what it must be (not a kernel, an invalid
/// image, a corrupt snapshot stream).
pub const DATAERR: i32 = 65;
/// A file that is not there.
pub const NOINPUT: i32 = 66;
/// A user named on the command line that does not exist.
pub const NOUSER: i32 = 67;
/// What the host cannot give: /dev/kvm, memory, a locked image, a guest
/// that is not running.
pub const UNAVAILABLE: i32 = 69;
/// Our bug, or KVM failing to run the guest.
pub const SOFTWARE: i32 = 70;
/// A system call failed.
pub const OSERR: i32 = 71;
/// A file to be made exists or cannot be made.
pub const CANTCREAT: i32 = 73;
/// Reading or writing failed (a full disk, an I/O error).
pub const IOERR: i32 = 74;
/// The guest asked for a reboot: vmd restarts such a guest, a service
/// manager does the same on this status.
pub const TEMPFAIL: i32 = 75;
/// Permission denied.
pub const NOPERM: i32 = 77;
/// SIGINT, as a shell reports a command it interrupted.
pub const INTERRUPTED: i32 = 130;
