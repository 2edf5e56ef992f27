//! An open image: the top file and its chain of base images, each opened
//! and locked by us, read and written through imago.
//!
//! We walk the chain ourselves instead of letting imago open backing files:
//! each header is checked first (qcow2/header.rs), relative names are
//! resolved against the folder of the image that names them (as qemu-img
//! does), a chain that loops or is deeper than `MAX_CHAIN` is refused, and
//! every base is opened read-only and locked shared, the top image
//! exclusively when it is written (vmd opens the top image with
//! O_EXLOCK), so two writers never share an image and bases can be shared.

use std::fs::{File, OpenOptions as FsOpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use imago::file::File as ImagoFile;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Mapping};

use crate::error::{Error, Result};
use crate::qcow2::check::{self, read_upto};
use crate::qcow2::header::{self, Header};
use crate::qcow2::ordered::{self, Held, HeldL1, Ordered};

/// Images in one chain, the top one included (vmd allows 4 bases).
pub const MAX_CHAIN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }

    /// The format names qemu-img writes into a backing format extension.
    pub fn from_name(s: &str) -> Option<Format> {
        match s {
            "raw" | "file" => Some(Format::Raw),
            "qcow2" => Some(Format::Qcow2),
            _ => None,
        }
    }

    /// vmctl's rule: a `.qcow2` name is qcow2, anything else raw.
    pub fn from_file_name(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("qcow2") => Format::Qcow2,
            _ => Format::Raw,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Open the top image for writing (bases are always read-only).
    pub write: bool,
    /// The top image's format; None reads it from the header.
    pub format: Option<Format>,
    /// Take flock locks (exclusive on a written top image, else shared).
    pub lock: bool,
}

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

type Access = FormatAccess<Ordered>;

pub struct Image {
    layers: Vec<Layer>,
    /// The top image's L1 table, held back between flushes (ordered.rs).
    held: Held,
    /// Reads, writes and flushes share the lock; discard and resize, which
    /// imago wants exclusive, take it alone.
    access: Arc<RwLock<Access>>,
}

/// A handle that flushes an image's caches from another thread (vm-run
/// flushes its disks on the way out and before a snapshot).
#[derive(Clone)]
pub struct Flusher(Arc<RwLock<Access>>, PathBuf);

impl Flusher {
    pub fn flush(&self) -> io::Result<()> {
        let a = read_lock(&self.0);
        a.flush()?;
        a.sync()
    }

    pub fn path(&self) -> &Path {
        &self.1
    }
}

fn read_lock(l: &RwLock<Access>) -> RwLockReadGuard<'_, Access> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// Opens `path` for reading (and writing), and takes its lock.
pub fn open_file(path: &Path, write: bool, lock: bool) -> Result<File> {
    // O_NONBLOCK, so that a name (a base's, from a header) that leads to a
    // FIFO does not hang the open; nothing but files and disks is taken.
    let file = FsOpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::Open(path.to_path_buf(), e))?;
    let kind = file
        .metadata()
        .map_err(|e| Error::Open(path.to_path_buf(), e))?
        .file_type();
    if !kind.is_file() && !kind.is_block_device() {
        return Err(Error::Format(
            path.to_path_buf(),
            "not a regular file or block device".into(),
        ));
    }
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

fn imago_error(path: &Path, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::Unsupported | io::ErrorKind::Other => {
            Error::Format(path.to_path_buf(), crate::error::strip_os(&e))
        }
        _ => Error::Io(path.to_path_buf(), e),
    }
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

impl Image {
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Image> {
        let file = open_file(path, opts.write, opts.lock)?;
        Image::from_file(file, path, opts)
    }

    /// Opens the image whose top file the caller has opened (and locked,
    /// if it wants locks) already.
    pub fn from_file(top: File, path: &Path, opts: &OpenOptions) -> Result<Image> {
        let (layers, files) = walk(top, path, opts)?;
        if let Some((l, why)) = layers
            .iter()
            .find_map(|l| Some((l, l.header.as_ref()?.open_refusal()?)))
        {
            return Err(Error::Format(l.path.clone(), why.into()));
        }
        let mut below: Option<Access> = None;
        let mut top_held = Held::default();
        for (i, (layer, file)) in layers.iter().zip(files).enumerate().rev() {
            let write = opts.write && i == 0;
            let io = |e| Error::Io(layer.path.clone(), e);
            let held = Held::default();
            if let (true, Some(h)) = (write, &layer.header) {
                let len = u64::from(h.l1_size) * 8;
                *ordered::lock(&held) =
                    Some(HeldL1::load(&file, h.l1_table_offset, len).map_err(io)?);
                top_held = held.clone();
            }
            let fd = file.try_clone().map_err(io)?;
            let storage = Ordered::new(ImagoFile::try_from(file).map_err(io)?, held, fd);
            let gate = DenyImplicitOpenGate::default();
            let access = match layer.format {
                Format::Raw => Raw::builder(storage)
                    .write(write)
                    .open(gate)
                    .map(FormatAccess::new),
                Format::Qcow2 => Qcow2::builder(storage)
                    .backing(below.take())
                    .write(write)
                    .open(gate)
                    .map(FormatAccess::new),
            }
            .map_err(|e| imago_error(&layer.path, e))?;
            below = Some(access);
        }
        let access =
            below.ok_or_else(|| Error::Format(layers[0].path.clone(), "no image".into()))?;
        Ok(Image {
            layers,
            held: top_held,
            access: Arc::new(RwLock::new(access)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.layers[0].path
    }

    pub fn format(&self) -> Format {
        self.layers[0].format
    }

    /// The top image first, then its bases.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    pub fn size(&self) -> u64 {
        read_lock(&self.access).size()
    }

    pub fn flusher(&self) -> Flusher {
        Flusher(self.access.clone(), self.path().to_path_buf())
    }

    /// Reads `bufs` from guest offset `offset`; past the end of a shorter
    /// base, an image reads as zeroes.
    pub fn read(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> io::Result<()> {
        let mut v = IoVectorMut::with_capacity(bufs.len());
        for b in bufs.iter_mut().filter(|b| !b.is_empty()) {
            v.push(&mut b[..]);
        }
        read_lock(&self.access).readv(v, offset)
    }

    pub fn write(&self, offset: u64, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        let mut v = IoVector::with_capacity(bufs.len());
        for b in bufs.iter().filter(|b| !b.is_empty()) {
            v.push(&b[..]);
        }
        read_lock(&self.access).writev(v, offset)
    }

    /// Whether [offset, offset + n) may hold data (false: it reads as
    /// zeroes: unallocated through the whole chain, zero clusters, holes
    /// of a raw file), and n: at most `max`, at least 1 when `max` is.
    pub fn extent(&self, offset: u64, max: u64) -> io::Result<(bool, u64)> {
        let a = read_lock(&self.access);
        let (m, len) = a.get_mapping(offset, max)?;
        Ok(match m {
            Mapping::Zero { .. } | Mapping::Eof { .. } => (false, if len == 0 { max } else { len }),
            Mapping::Raw {
                storage,
                offset: at,
                ..
            } => storage.extent(at, len.max(1)),
            _ => (true, len.max(1)),
        })
    }

    /// Writes cached metadata and makes every completed write durable.
    pub fn flush(&self) -> io::Result<()> {
        self.flusher().flush()
    }

    /// The range must read as zeroes from now on.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        read_lock(&self.access).write_zeroes(offset, len)
    }

    /// The guest no longer needs the range: free what can be freed. It
    /// reads as zeroes afterwards, never as stale data of a base.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut a = self.access.write().unwrap_or_else(|e| e.into_inner());
        a.discard_to_zero(offset, len)
    }

    pub fn resize(&self, size: u64) -> io::Result<()> {
        // Growing may move the L1 table: no more holding it back.
        self.flush()?;
        *ordered::lock(&self.held) = None;
        let mut a = self.access.write().unwrap_or_else(|e| e.into_inner());
        a.resize(size, imago::format::PreallocateMode::None)
    }
}
