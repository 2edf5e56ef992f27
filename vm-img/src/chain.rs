//! Opening an image's files: the top one and the chain of bases its
//! headers name, each opened and locked by us before imago sees it.
//!
//! We walk the chain ourselves instead of letting imago open backing files:
//! each header is checked first (qcow2/header.rs), relative names are
//! resolved against the folder of the image that names them (as qemu-img
//! does), a chain that loops or is deeper than `MAX_CHAIN` is refused, and
//! every base is opened read-only and locked shared, the top image
//! exclusively when it is written (vmd opens the top image with
//! O_EXLOCK), so two writers never share an image and bases can be shared.

use std::fs::{File, OpenOptions as FsOpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::{Format, OpenOptions};
use crate::qcow2::check::{self, read_upto};
use crate::qcow2::header::{self, Header};

/// Images in one chain, the top one included (vmd allows 4 bases).
pub const MAX_CHAIN: usize = 16;

/// One image of a chain, top first.
#[derive(Debug, Clone)]
pub struct Layer {
    pub path: PathBuf,
    pub format: Format,
    /// For qcow2 images.
    pub header: Option<Header>,
    /// Size of the file (for a raw image, its virtual size).
    pub file_len: u64,
    /// Bytes the file takes on its file system.
    pub disk_usage: u64,
}

impl Layer {
    pub fn virtual_size(&self) -> u64 {
        self.header.as_ref().map_or(self.file_len, |h| h.size)
    }
}

/// Opens `path` for reading (and writing if asked) if it is a regular
/// file or a block device, and refuses anything else without blocking:
/// Error::Format (exit 65) for a FIFO, socket, character device or
/// directory, Error::Open (66, or 77 for permission) when it cannot be
/// opened. Every file vm-img and vm-run take (images, bases, kernels,
/// initrds) should come through here: a FIFO's open(2) blocks until a
/// writer comes, /dev/zero reads as an endless image, and opening some
/// character devices does something (a tty becomes the controlling
/// terminal, a watchdog starts). So the name is looked at (stat) before
/// it is opened, the open is O_NONBLOCK and O_NOCTTY in case it changed
/// in between, and the open file is looked at again.
pub fn open_regular(path: &Path, write: bool) -> Result<File> {
    let before = std::fs::metadata(path).map_err(|e| Error::Open(path.to_path_buf(), e))?;
    refuse_kind(path, before.file_type())?;
    // O_NONBLOCK has no effect on the files and disks that get past here.
    let file = FsOpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| Error::Open(path.to_path_buf(), e))?;
    let now = file
        .metadata()
        .map_err(|e| Error::Open(path.to_path_buf(), e))?;
    refuse_kind(path, now.file_type())?;
    if (now.dev(), now.ino()) != (before.dev(), before.ino()) {
        return Err(Error::Format(
            path.to_path_buf(),
            "replaced while it was being opened".into(),
        ));
    }
    Ok(file)
}

fn refuse_kind(path: &Path, kind: std::fs::FileType) -> Result<()> {
    let what = if kind.is_file() || kind.is_block_device() {
        return Ok(());
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    };
    Err(Error::Format(
        path.to_path_buf(),
        format!("{what}, not a regular file or block device"),
    ))
}

/// Opens `path` as `open_regular` does, and takes its lock.
pub fn open_file(path: &Path, write: bool, lock: bool) -> Result<File> {
    let file = open_regular(path, write)?;
    if lock {
        lock_file(&file, path, !write)?;
    }
    Ok(file)
}

/// flock, exclusive or shared, without waiting.
pub fn lock_file(file: &File, path: &Path, shared: bool) -> Result<()> {
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

/// The length of a file or block device.
pub fn file_len(file: &File, path: &Path) -> Result<u64> {
    let mut f = file;
    f.seek(SeekFrom::End(0))
        .map_err(|e| Error::Io(path.to_path_buf(), e))
}

/// Reads the format (and, for qcow2, the checked header) of an open file.
pub fn probe(
    file: &File,
    path: &Path,
    forced: Option<Format>,
) -> Result<(Format, Option<Header>, u64)> {
    let len = file_len(file, path)?;
    if forced == Some(Format::Raw) {
        return Ok((Format::Raw, None, len));
    }
    let io = |e| Error::Io(path.to_path_buf(), e);
    let mut first = vec![0u8; 4096];
    let n = read_upto(file, &mut first, 0).map_err(io)?;
    first.truncate(n);
    if !header::is_qcow2(&first) {
        return match forced {
            Some(Format::Qcow2) => Err(Error::Format(
                path.to_path_buf(),
                "not a qcow2 image".into(),
            )),
            _ => Ok((Format::Raw, None, len)),
        };
    }
    // The header, its extensions and the backing name may fill the whole
    // first cluster.
    if n >= 24 {
        let bits = u32::from_be_bytes([first[20], first[21], first[22], first[23]]);
        if (13..=header::MAX_CLUSTER_BITS).contains(&bits) {
            let mut c0 = vec![0u8; 1 << bits];
            let n = read_upto(file, &mut c0, 0).map_err(io)?;
            c0.truncate(n);
            first = c0;
        }
    }
    let h = Header::parse(&first, len).map_err(|e| Error::Format(path.to_path_buf(), e.0))?;
    Ok((Format::Qcow2, Some(h), len))
}

/// Where the image at `image` finds the base it calls `name`.
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    image.parent().unwrap_or(Path::new(".")).join(p)
}

/// Follows the chain from the open top image down: each file opened,
/// locked (if asked), its header checked. The top image comes first.
pub fn walk(top: File, path: &Path, opts: &OpenOptions) -> Result<(Vec<Layer>, Vec<File>)> {
    let mut layers: Vec<Layer> = Vec::new();
    let mut files: Vec<File> = Vec::new();
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let (mut file, mut path) = (top, path.to_path_buf());
    let mut format = opts.format;
    loop {
        let meta = file.metadata().map_err(|e| Error::Io(path.clone(), e))?;
        seen.push((meta.dev(), meta.ino()));
        let (fmt, header, file_len) = probe(&file, &path, format)?;
        if let (true, Some(h)) = (opts.write && layers.is_empty(), &header) {
            if let Some(why) = h.write_refusal() {
                return Err(Error::Format(path, why.into()));
            }
            if !check::header_is_counted(&file, h).map_err(|e| Error::Io(path.clone(), e))? {
                return Err(Error::Format(
                    path,
                    "its refcounts do not count its header (qemu-img check -r all repairs it)"
                        .into(),
                ));
            }
        }
        let backing = header.as_ref().and_then(|h| {
            h.backing_file
                .clone()
                .map(|b| (b, h.backing_format.clone()))
        });
        layers.push(Layer {
            path: path.clone(),
            format: fmt,
            header,
            file_len,
            disk_usage: meta.blocks() * 512,
        });
        files.push(file);
        let Some((base, base_format)) = backing else {
            return Ok((layers, files));
        };
        if layers.len() == MAX_CHAIN {
            return Err(Error::Format(
                layers[0].path.clone(),
                format!("the backing chain is deeper than {MAX_CHAIN} images"),
            ));
        }
        format = match base_format.as_deref() {
            None => None,
            Some(f) => Some(Format::from_name(f).ok_or_else(|| {
                Error::Format(path.clone(), format!("backing format {f} is not supported"))
            })?),
        };
        let next = resolve_backing(&path, &base);
        // Before opening it: our own lock on an image further up would
        // make a loop look like another process's. (A file swapped in
        // between is stopped by MAX_CHAIN.)
        if let Ok(m) = std::fs::metadata(&next) {
            if seen.contains(&(m.dev(), m.ino())) {
                return Err(Error::Format(
                    path,
                    format!("the backing chain loops back to {base}"),
                ));
            }
        }
        file = open_file(&next, false, opts.lock)?;
        path = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{DATAERR, NOINPUT};

    #[test]
    fn open_regular_takes_files_only_and_never_blocks() {
        let d = std::env::temp_dir().join(format!("vm-img-open-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        std::fs::write(d.join("file"), b"data").unwrap();
        for write in [false, true] {
            assert!(open_regular(&d.join("file"), write).is_ok());
            for (p, status) in [
                (fifo.as_path(), DATAERR),
                (Path::new("/dev/null"), DATAERR),
                (d.as_path(), DATAERR),
                (&d.join("missing"), NOINPUT),
            ] {
                let e = open_regular(p, write).unwrap_err();
                assert_eq!(e.exit_status(), status, "{}: {e}", p.display());
            }
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
