//! What can go wrong before or while the guest runs, each with the context a
//! user needs to act on it, and the exit status it maps to.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::exit;

#[derive(Debug)]
pub enum Error {
    /// A bad option or value on the command line.
    Usage(String),
    /// A file named on the command line cannot be opened or read.
    Open(PathBuf, io::Error),
    /// A disk image another process holds locked.
    Locked(PathBuf),
    /// A guest of this name is running.
    NameInUse(String),
    /// A file was read but is not what it should be (not a kernel, ...).
    Format(PathBuf, String),
    /// /dev/kvm is missing or refuses us.
    Kvm(String, kvm_ioctls::Error),
    /// The host cannot give what was asked (memory, vCPUs, ...).
    Unavailable(String),
    /// Setting up the guest failed in a way that is our bug or the host's.
    Setup(String),
    /// A system call unrelated to KVM failed.
    Os(String, io::Error),
    /// A snapshot stream that cannot be received: truncated, corrupt, of
    /// another version, or not fitting this VM.
    Snapshot(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn exit_status(&self) -> i32 {
        match self {
            Error::Usage(_) => exit::USAGE,
            Error::Open(_, e) if e.kind() == io::ErrorKind::PermissionDenied => exit::NOPERM,
            Error::Open(..) => exit::NOINPUT,
            Error::Format(..) => exit::DATAERR,
            Error::Locked(_) | Error::NameInUse(_) => exit::UNAVAILABLE,
            Error::Kvm(_, e) if matches!(e.errno(), libc::EACCES | libc::EPERM) => exit::NOPERM,
            Error::Kvm(_, e) if e.errno() == libc::ENOENT || e.errno() == libc::ENXIO => {
                exit::UNAVAILABLE
            }
            Error::Kvm(..) => exit::OSERR,
            Error::Unavailable(_) => exit::UNAVAILABLE,
            Error::Setup(_) => exit::SOFTWARE,
            Error::Os(..) => exit::OSERR,
            Error::Snapshot(_) => exit::DATAERR,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Error::Usage(s) | Error::Unavailable(s) | Error::Setup(s) => f.write_str(s),
            Error::Snapshot(s) => write!(f, "snapshot stream: {s}"),
            Error::Open(p, e) => write!(f, "{}: {}", p.display(), strip_os(e)),
            Error::Format(p, s) => write!(f, "{}: {}", p.display(), s),
            Error::Locked(p) => write!(f, "{}: in use by another process", p.display()),
            Error::NameInUse(n) => write!(f, "{n}: a guest of this name is running"),
            Error::Kvm(what, e) => {
                write!(
                    f,
                    "{what}: {}",
                    strip_os(&io::Error::from_raw_os_error(e.errno()))
                )
            }
            Error::Os(what, e) => write!(f, "{what}: {}", strip_os(e)),
        }
    }
}

/// A KVM ioctl that failed, by name, on a path that reports rather than
/// exits (pause, snapshots).
#[derive(Debug)]
pub struct KvmError(pub &'static str, pub kvm_ioctls::Error);

impl fmt::Display for KvmError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.0,
            strip_os(&io::Error::from_raw_os_error(self.1.errno()))
        )
    }
}

/// io::Error's Display without the " (os error N)" noise.
pub use vm_img::error::strip_os;
