//! Disk images as the block device sees them: a size and positioned,
//! vectored reads and writes straight into guest memory, plus flush,
//! discard and write zeroes. raw.rs serves raw files and block devices;
//! qcow2.rs serves qcow2 images and their bases through vm-img's library,
//! which owns the disk formats.
//!
//! Opening takes the lock vmd takes with O_EXLOCK: exclusive for an image
//! the guest may write, shared for a read-only one, so two guests never
//! write one image and base images can be shared.

pub mod qcow2;
pub mod raw;

use std::io;
use std::path::{Path, PathBuf};

use vm_img::image;
pub use vm_img::image::{Flusher, Format};

use crate::error::{Error, Result};

/// A buffer in guest memory: the iovec that preadv/pwritev take.
pub type IoVec = libc::iovec;

/// Request queues a virtio-blk disk may have at most (`queues=N`, and
/// the default of one per vCPU): Linux's driver uses one per CPU at
/// most, and each costs an MSI-X vector, an ioeventfd and a thread.
pub const MAX_QUEUES: u16 = 16;

/// A disk as the command line gives it:
/// `[raw:|qcow2:]path[,ro][,serial=ID][,queues=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub format: Option<Format>,
    pub read_only: bool,
    pub serial: Option<String>,
    /// The request queues asked for; None is one per vCPU.
    pub queues: Option<u16>,
}

/// Every call takes `&self`: a disk's queues are served on threads of
/// their own, at the same time, through one shared disk. A raw image is
/// a file descriptor, which preadv and pwritev share as they are; a
/// qcow2 image keeps its own locks (vm-img's `Image`).
pub trait Disk: Send + Sync {
    fn path(&self) -> &Path;
    /// Size in bytes.
    fn size(&self) -> u64;
    fn read_at(&self, offset: u64, bufs: &[IoVec]) -> io::Result<()>;
    fn write_at(&self, offset: u64, bufs: &[IoVec]) -> io::Result<()>;
    /// Makes every completed write durable, whichever queue wrote it.
    fn flush(&self) -> io::Result<()>;
    /// The guest no longer needs the range: give the space back if we can.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// The range must read as zeroes; `unmap` allows freeing it.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// For an image that caches metadata in vm-run (qcow2): a handle that
    /// writes it out from another thread, as vm-run exits or sends the
    /// guest. A raw image has nothing of its own to write.
    fn flusher(&self) -> Option<Flusher> {
        None
    }
}

/// Opens and locks the image `spec` names: the format comes from the
/// header (never from the name) unless `raw:` or `qcow2:` says it.
pub fn open(spec: &DiskSpec) -> Result<Box<dyn Disk>> {
    let path = &spec.path;
    let file = image::open_file(path, !spec.read_only, true).map_err(from_img)?;
    let (format, _, _) = image::probe(&file, path, spec.format).map_err(from_img)?;
    match format {
        Format::Raw => Ok(Box::new(raw::Raw::new(
            file,
            path.clone(),
            spec.format.is_none(),
        )?)),
        Format::Qcow2 => {
            let opts = image::OpenOptions {
                write: !spec.read_only,
                format: Some(format),
                lock: true,
            };
            let img = vm_img::Image::from_file(file, path, &opts).map_err(from_img)?;
            Ok(Box::new(qcow2::Qcow2::new(img)))
        }
    }
}

/// vm-img's errors as vm-run reports them (with the same exit statuses).
/// vm-img's errors as vm-run's (the same exit statuses).
pub fn from_img(e: vm_img::Error) -> Error {
    match e {
        vm_img::Error::Open(p, e) | vm_img::Error::Io(p, e) | vm_img::Error::Create(p, e) => {
            Error::Open(p, e)
        }
        vm_img::Error::Format(p, s) => Error::Format(p, s),
        vm_img::Error::Locked(p) => Error::Locked(p),
        vm_img::Error::Usage(s) => Error::Usage(s),
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
            queues: None,
        };
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "ro" => spec.read_only = true,
                Some(("serial", id)) if id.len() <= 20 && id.is_ascii() => {
                    spec.serial = Some(id.to_string())
                }
                Some(("serial", _)) => return Err("serial: at most 20 ASCII characters".into()),
                Some(("queues", n)) => match n.parse::<u16>() {
                    Ok(n) if (1..=MAX_QUEUES).contains(&n) => spec.queues = Some(n),
                    _ => return Err(format!("queues: a number from 1 to {MAX_QUEUES}")),
                },
                _ => return Err(format!("{opt}: not ro, serial=ID or queues=N")),
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
        assert_eq!(s.queues, None);
        let s: DiskSpec = "disk.img,queues=1".parse().unwrap();
        assert_eq!(s.queues, Some(1));
        let s: DiskSpec = "raw:c:d".parse().unwrap();
        assert_eq!(s.path, PathBuf::from("c:d"));
        for bad in [
            "",
            "raw:",
            "x,rw",
            "x,serial=123456789012345678901",
            "x,ro=1",
            "x,queues=0",
            "x,queues=17",
            "x,queues=two",
        ] {
            assert!(bad.parse::<DiskSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_guest_cannot_turn_a_probed_raw_image_into_qcow2() {
        let dir = std::env::temp_dir().join(format!("vm-run-magic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.img");
        std::fs::write(&path, b"QFI\0and the rest").unwrap();
        let spec = |format| DiskSpec {
            path: path.clone(),
            format,
            read_only: false,
            serial: None,
            queues: None,
        };
        let write = |disk: &dyn Disk, offset, bytes: &[u8]| {
            let iov = IoVec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            };
            disk.write_at(offset, &[iov])
        };
        let probed = open(&spec(None)).unwrap();
        // One byte that completes the magic, and the whole magic at once.
        let e = write(&*probed, 3, b"\xfb").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(write(&*probed, 0, b"QFI\xfb\0\0\0\x03").is_err());
        write(&*probed, 0, b"boot").unwrap();
        write(&*probed, 3, b"\xfb").unwrap();
        drop(probed);
        assert!(std::fs::read(&path).unwrap().starts_with(b"boo\xfb"));
        // `raw:` says the header is the guest's business.
        let forced = open(&spec(Some(Format::Raw))).unwrap();
        write(&*forced, 0, b"QFI\xfb").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
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
            queues: None,
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
