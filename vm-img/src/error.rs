//! What can go wrong with an image, with the file it happened to, and the
//! sysexits status each maps to (vm-img(1) lists them).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub use crate::exit::{CANTCREAT, DATAERR, IOERR, NOINPUT, NOPERM, SOFTWARE, UNAVAILABLE, USAGE};

#[derive(Debug)]
pub enum Error {
    /// A bad option or value on the command line.
    Usage(String),
    /// The image (or a base image) cannot be opened.
    Open(PathBuf, io::Error),
    /// Reading or writing an open image failed (a full disk, an I/O error).
    Io(PathBuf, io::Error),
    /// The file is not a valid image of its format, or uses what we lack.
    Format(PathBuf, String),
    /// Another process holds the image locked.
    Locked(PathBuf),
    /// A file to be created exists, or cannot be created.
    Create(PathBuf, io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error from reading or writing an image, by its cause: one of the
    /// system's (EIO, ENOSPC) is an I/O error, 74; one about what the image
    /// holds, which imago and we raise without an errno (reserved bits, a
    /// cluster that does not decompress, a table out of place), makes it
    /// an invalid image, 65.
    pub fn from_io(path: &Path, e: io::Error) -> Error {
        use io::ErrorKind::*;
        match e.kind() {
            InvalidData | InvalidInput | Unsupported | UnexpectedEof | Other
                if e.raw_os_error().is_none() =>
            {
                Error::Format(path.to_path_buf(), strip_os(&e))
            }
            _ => Error::Io(path.to_path_buf(), e),
        }
    }

    pub fn exit_status(&self) -> i32 {
        match self {
            Error::Usage(_) => USAGE,
            Error::Open(_, e) | Error::Create(_, e)
                if e.kind() == io::ErrorKind::PermissionDenied =>
            {
                NOPERM
            }
            Error::Open(..) => NOINPUT,
            Error::Io(..) => IOERR,
            Error::Format(..) => DATAERR,
            Error::Locked(_) => UNAVAILABLE,
            Error::Create(..) => CANTCREAT,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Error::Usage(s) => f.write_str(s),
            Error::Open(p, e) | Error::Io(p, e) | Error::Create(p, e) => {
                write!(f, "{}: {}", p.display(), strip_os(e))
            }
            Error::Format(p, s) => write!(f, "{}: {}", p.display(), s),
            Error::Locked(p) => write!(f, "{}: in use by another process", p.display()),
        }
    }
}

impl std::error::Error for Error {}

/// io::Error's Display appends " (os error N)", which is noise to a user.
pub fn strip_os(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}
