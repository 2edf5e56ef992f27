//! Disk images as the block device sees them: a size and positioned,
//! vectored reads and writes straight into guest memory, plus flush,
//! discard and write zeroes. raw.rs serves raw files and block devices;
//! qcow2 comes as another implementation of the same trait.
//!
//! Opening takes the lock vmd takes with O_EXLOCK: exclusive for an image
//! the guest may write, shared for a read-only one, so two guests never
//! write one image and base images can be shared.

pub mod raw;

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A buffer in guest memory: the iovec that preadv/pwritev take.
pub type IoVec = libc::iovec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

/// A disk as the command line gives it: `[raw:|qcow2:]path[,ro][,serial=ID]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub format: Option<Format>,
    pub read_only: bool,
    pub serial: Option<String>,
}

pub trait Disk: Send {
    fn path(&self) -> &Path;
    /// Size in bytes.
    fn size(&self) -> u64;
    fn read_at(&mut self, offset: u64, bufs: &[IoVec]) -> io::Result<()>;
    fn write_at(&mut self, offset: u64, bufs: &[IoVec]) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> io::Result<()>;
    /// The guest no longer needs the range: give the space back if we can.
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// The range must read as zeroes; `unmap` allows freeing it.
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// Opens and locks the image `spec` names.
pub fn open(spec: &DiskSpec) -> Result<Box<dyn Disk>> {
    let path = &spec.path;
    let mut file = OpenOptions::new()
        .read(true)
        .write(!spec.read_only)
        .open(path)
        .map_err(|e| Error::Open(path.clone(), e))?;
    lock(&file, path, spec.read_only)?;
    let mut magic = [0u8; 4];
    let looks_qcow2 = file.read_exact(&mut magic).is_ok() && &magic == QCOW2_MAGIC;
    match spec.format {
        Some(Format::Qcow2) => Err(Error::Format(
            path.clone(),
            "qcow2 images are not supported yet".into(),
        )),
        // A raw image whose guest wrote a qcow2 header must not turn into
        // a qcow2 image (with a backing file of the guest's choosing): the
        // format comes from the header only when the user did not say.
        None if looks_qcow2 => Err(Error::Format(
            path.clone(),
            "a qcow2 image; vm-run reads raw images only (raw: forces raw)".into(),
        )),
        _ => Ok(Box::new(raw::Raw::new(file, path.clone())?)),
    }
}

fn lock(file: &File, path: &Path, shared: bool) -> Result<()> {
    let how = if shared { libc::LOCK_SH } else { libc::LOCK_EX };
    // SAFETY: flock takes a valid fd and integer flags.
    if unsafe { libc::flock(file.as_raw_fd(), how | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(Error::Locked(path.to_path_buf()))
    } else {
        Err(Error::Open(path.to_path_buf(), e))
    }
}

impl std::str::FromStr for DiskSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut parts = s.split(',');
        let first = parts.next().unwrap_or_default();
        let (format, path) = match first.split_once(':') {
            Some(("raw", p)) => (Some(Format::Raw), p),
            Some(("qcow2", p)) => (Some(Format::Qcow2), p),
            _ => (None, first),
        };
        if path.is_empty() {
            return Err("no image path".into());
        }
        let mut spec = DiskSpec {
            path: PathBuf::from(path),
            format,
            read_only: false,
            serial: None,
        };
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "ro" => spec.read_only = true,
                Some(("serial", id)) if id.len() <= 20 && id.is_ascii() => {
                    spec.serial = Some(id.to_string())
                }
                Some(("serial", _)) => return Err("serial: at most 20 ASCII characters".into()),
                _ => return Err(format!("{opt}: not ro or serial=ID")),
            }
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let s: DiskSpec = "qcow2:/a/b.img,ro,serial=xyz".parse().unwrap();
        assert_eq!(s.path, PathBuf::from("/a/b.img"));
        assert_eq!(
            (s.format, s.read_only, s.serial.as_deref()),
            (Some(Format::Qcow2), true, Some("xyz"))
        );
        let s: DiskSpec = "disk.img".parse().unwrap();
        assert_eq!((s.format, s.read_only, s.serial), (None, false, None));
        let s: DiskSpec = "raw:c:d".parse().unwrap();
        assert_eq!(s.path, PathBuf::from("c:d"));
        for bad in [
            "",
            "raw:",
            "x,rw",
            "x,serial=123456789012345678901",
            "x,ro=1",
        ] {
            assert!(bad.parse::<DiskSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_writable_image_is_locked_exclusively() {
        let dir = std::env::temp_dir().join(format!("vm-run-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.img");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let spec = |ro| DiskSpec {
            path: path.clone(),
            format: None,
            read_only: ro,
            serial: None,
        };
        let first = open(&spec(false)).unwrap();
        assert!(matches!(open(&spec(false)), Err(Error::Locked(_))));
        assert!(matches!(open(&spec(true)), Err(Error::Locked(_))));
        drop(first);
        let r1 = open(&spec(true)).unwrap();
        let _r2 = open(&spec(true)).unwrap();
        assert!(matches!(open(&spec(false)), Err(Error::Locked(_))));
        drop(r1);
        std::fs::write(&path, b"QFI\xfb\0\0\0\x03").unwrap();
        drop(_r2);
        assert!(matches!(open(&spec(false)), Err(Error::Format(..))));
        let forced = DiskSpec {
            format: Some(Format::Raw),
            ..spec(false)
        };
        assert_eq!(open(&forced).unwrap().size(), 8);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
