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
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use imago::file::File as ImagoFile;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, Mapping};

use crate::error::{Error, Result};
use crate::iov::{self, Cursor};
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
    /// Reads, writes and flushes share the lock; discard, write zeroes and
    /// resize take it alone. The direct paths below trust a mapping imago
    /// gave for as long as they hold the shared lock, which holds because
    /// everything that can unmap or move a data cluster takes it alone.
    access: Arc<RwLock<Access>>,
    writable: bool,
    /// The top image's cluster size, when it is a qcow2 image.
    cluster: Option<u64>,
    scratch: Mutex<Scratch>,
}

/// Space the direct paths reuse from request to request. Not for speed of
/// malloc as such: vm-run is linked with musl, whose allocator hands the
/// pages of a freed block of a few KiB back to the kernel (munmap), so a
/// buffer allocated per request costs an mmap, a munmap and a page fault
/// per page, every time (6 of each per 1 MiB read through imago, one 64 KiB
/// COW buffer per allocating write, seen with strace).
#[derive(Default)]
struct Scratch {
    /// A run's share of the caller's buffers.
    iov: Vec<libc::iovec>,
    /// One cluster, for copy-on-write.
    cow: Vec<u8>,
}

// SAFETY: the iovecs point into a caller's buffers only during one call,
// under the mutex, and are cleared before it returns; between calls the
// vector holds no pointers at all.
unsafe impl Send for Scratch {}

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
        let cluster = match (&layers[0].format, &layers[0].header) {
            (Format::Qcow2, Some(h)) => Some(h.cluster_size()),
            _ => None,
        };
        Ok(Image {
            layers,
            held: top_held,
            access: Arc::new(RwLock::new(access)),
            writable: opts.write,
            cluster,
            scratch: Mutex::new(Scratch::default()),
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
        // SAFETY: an IoSliceMut is an iovec on Unix (std guarantees the
        // layout), and the slices are borrowed mutably for the call.
        unsafe { self.read_iovecs(offset, as_iovecs(bufs)) }
    }

    pub fn write(&self, offset: u64, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        // SAFETY: as in read; these are only read.
        unsafe { self.write_iovecs(offset, as_iovecs(bufs)) }
    }

    /// `read` on buffers given as iovecs (vm-run's guest memory), without
    /// building slices for them.
    ///
    /// # Safety
    /// Each iovec must describe memory that is writable and that nothing
    /// else reads or writes until the call returns.
    pub unsafe fn read_iovecs(&self, offset: u64, bufs: &[libc::iovec]) -> io::Result<()> {
        let a = read_lock(&self.access);
        let mut s = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the caller's promise, passed on.
        let r = unsafe { read_runs(&a, offset, bufs, &mut s.iov) };
        s.iov.clear();
        r
    }

    /// `write` on buffers given as iovecs.
    ///
    /// # Safety
    /// Each iovec must describe readable memory that nothing writes until
    /// the call returns.
    pub unsafe fn write_iovecs(&self, offset: u64, bufs: &[libc::iovec]) -> io::Result<()> {
        let a = read_lock(&self.access);
        let len = iov::total(bufs);
        if !self.writable {
            return Err(io::Error::other("Image is read-only"));
        }
        if offset.checked_add(len).is_none_or(|end| end > a.size()) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("Cannot write beyond the disk size ({len} + {offset})"),
            ));
        }
        let mut s = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the caller's promise, passed on.
        let r = unsafe { self.write_runs(&a, offset, bufs, &mut s) };
        s.iov.clear();
        r
    }

    /// Writes each run of the request that imago maps to a writable data
    /// cluster straight to its place in the file (one pwritev a run of
    /// contiguous host clusters); what needs a new cluster goes to
    /// `allocate`.
    ///
    /// # Safety
    /// As for `write_iovecs`.
    unsafe fn write_runs(
        &self,
        a: &Access,
        offset: u64,
        bufs: &[libc::iovec],
        s: &mut Scratch,
    ) -> io::Result<()> {
        let total = iov::total(bufs);
        let mut cur = Cursor::new(bufs);
        let mut pos = 0;
        while pos < total {
            let at = offset + pos;
            let (m, len) = a.get_mapping(at, total - pos)?;
            let len = len.min(total - pos);
            match m {
                Mapping::Raw {
                    storage,
                    offset: host,
                    writable: true,
                    ..
                } if len > 0 && !storage.holds(host, len) => {
                    s.iov.clear();
                    cur.take(len, &mut s.iov);
                    // SAFETY: the caller's buffers; the run is a data
                    // cluster of the top image that imago says is ours to
                    // write, under the shared lock.
                    unsafe { iov::pwritev_all(storage.raw_fd(), &mut s.iov, host) }?;
                    storage.wrote_to(host + len);
                }
                _ => {
                    // Unallocated, zero, compressed or shared: this run,
                    // but the first cluster alone when the write covers
                    // only part of it.
                    let len = self.allocate(a, at, len.max(1), &mut cur, s)?;
                    pos += len;
                    continue;
                }
            }
            pos += len;
        }
        Ok(())
    }

    /// Writes the next bytes of the request at guest offset `at`, which
    /// has no writable cluster yet, and returns how many it wrote (at most
    /// `len`). Whole clusters go to imago, which allocates them and skips
    /// copying what is overwritten. A write into part of a cluster is
    /// copy-on-write: imago's copies the old cluster whole (a 64 KiB read
    /// and write into a buffer it allocates each time) and then writes the
    /// guest's bytes over it; here the old contents are read once into a
    /// kept buffer and go to the new cluster with the guest's bytes in one
    /// pwritev, as QEMU does. imago still allocates the cluster and maps it
    /// (prepare/commit: the L2 entry only after the data is written), so
    /// the order on disk is imago's.
    fn allocate(
        &self,
        a: &Access,
        at: u64,
        len: u64,
        cur: &mut Cursor<'_>,
        s: &mut Scratch,
    ) -> io::Result<u64> {
        let Some(cs) = self.cluster else {
            return self.write_through(a, at, len, cur, s);
        };
        let start = at & !(cs - 1);
        let n = len.min(start + cs - at);
        if n == cs {
            // Whole clusters, as many as the run holds.
            return self.write_whole(a, at, len & !(cs - 1), cur, s);
        }
        if let (Mapping::Zero { .. }, whole) = a.get_mapping(start, cs)? {
            if whole >= cs {
                // Nothing to copy: imago zeroes the rest of the cluster
                // with write-zeroes, which keeps it sparse (vm-img convert
                // writes into such clusters, and tests that its output
                // takes no more space than its data).
                return self.write_through(a, at, n, cur, s);
            }
        }
        let c = cs as usize;
        s.cow.resize(c, 0);
        let old = [libc::iovec {
            iov_base: s.cow.as_mut_ptr().cast(),
            iov_len: c,
        }];
        // SAFETY: our own buffer, not otherwise borrowed here. Read before
        // the mapping is prepared: imago may block other I/O on the range
        // until it is committed.
        unsafe { read_runs(a, start, &old, &mut s.iov) }?;
        let m = a.prepare_data_mapping(start, cs, true)?;
        let (storage, host) = (m.storage(), m.offset());
        // Neither happens in a sound image (a mapping covers whole
        // clusters; data never lies on the L1 table): refuse rather than
        // write past the cluster or around the held-back table.
        if m.length() < cs {
            return Err(io::Error::other("qcow2: imago mapped less than a cluster"));
        }
        if storage.holds(host, cs) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "qcow2: a data cluster overlaps the L1 table",
            ));
        }
        let head = (at - start) as usize;
        let tail = head + n as usize;
        s.iov.clear();
        let base = s.cow.as_mut_ptr();
        s.iov.push(libc::iovec {
            iov_base: base.cast(),
            iov_len: head,
        });
        cur.take(n, &mut s.iov);
        s.iov.push(libc::iovec {
            // SAFETY: tail <= c: the address stays within the buffer.
            iov_base: unsafe { base.add(tail) }.cast(),
            iov_len: c - tail,
        });
        // SAFETY: our buffer and the caller's; the cluster is the one imago
        // just prepared for this range, not visible until committed.
        unsafe { iov::pwritev_all(storage.raw_fd(), &mut s.iov, host) }?;
        storage.wrote_to(host + cs);
        a.commit_data_mapping(m)?;
        Ok(n)
    }

    /// Whole clusters without a writable data cluster, `len` bytes from
    /// `at`: imago allocates them (as few runs as it can, nothing copied:
    /// they are overwritten whole) and maps them once the data is in,
    /// which is what its writev does; the data goes from the caller's
    /// buffers with one pwritev a run, where imago's writev would cut
    /// its buffer vector into new ones.
    fn write_whole(
        &self,
        a: &Access,
        at: u64,
        len: u64,
        cur: &mut Cursor<'_>,
        s: &mut Scratch,
    ) -> io::Result<u64> {
        let mut done = 0;
        while done < len {
            let m = a.prepare_data_mapping(at + done, len - done, true)?;
            let (storage, host) = (m.storage(), m.offset());
            let n = m.length().min(len - done);
            if storage.holds(host, n) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "qcow2: a data cluster overlaps the L1 table",
                ));
            }
            s.iov.clear();
            cur.take(n, &mut s.iov);
            // SAFETY: the caller's buffers; the clusters are the ones imago
            // just prepared for this range, not visible until committed.
            unsafe { iov::pwritev_all(storage.raw_fd(), &mut s.iov, host) }?;
            storage.wrote_to(host + n);
            a.commit_data_mapping(m)?;
            done += n;
        }
        Ok(len)
    }

    /// The next `len` bytes of the request through imago's writev.
    fn write_through(
        &self,
        a: &Access,
        at: u64,
        len: u64,
        cur: &mut Cursor<'_>,
        s: &mut Scratch,
    ) -> io::Result<u64> {
        s.iov.clear();
        cur.take(len, &mut s.iov);
        let mut v = IoVector::with_capacity(s.iov.len());
        for b in &s.iov {
            // SAFETY: a part of the caller's buffers, readable for the call.
            v.push(unsafe { std::slice::from_raw_parts(b.iov_base.cast::<u8>(), b.iov_len) });
        }
        a.writev(v, at)?;
        Ok(len)
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
        // Alone: it may free data clusters (see `access`).
        let a = self.access.write().unwrap_or_else(|e| e.into_inner());
        a.write_zeroes(offset, len)
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

/// A slice of IoSlice or IoSliceMut as the iovecs they are.
fn as_iovecs<T>(bufs: &[T]) -> &[libc::iovec] {
    const { assert!(std::mem::size_of::<T>() == std::mem::size_of::<libc::iovec>()) };
    // SAFETY: only called on IoSlice and IoSliceMut, which std guarantees
    // to be ABI compatible with iovec on Unix; same length, same lifetime.
    unsafe { std::slice::from_raw_parts(bufs.as_ptr().cast(), bufs.len()) }
}

/// Reads [offset, offset + total(bufs)) into `bufs`, run by run as imago
/// maps it: data in a file (any image of the chain) with one preadv a run
/// of contiguous host clusters, straight into the caller's buffers; zeroes
/// by memset; compressed clusters (and anything overlapping the held-back
/// L1 table) through imago. imago's own readv does the same runs, but cuts
/// its buffer vector into new vectors for each (allocations, see Scratch).
///
/// # Safety
/// As for `Image::read_iovecs`.
unsafe fn read_runs(
    a: &Access,
    offset: u64,
    bufs: &[libc::iovec],
    scratch: &mut Vec<libc::iovec>,
) -> io::Result<()> {
    let total = iov::total(bufs);
    let mut cur = Cursor::new(bufs);
    let mut pos = 0;
    while pos < total {
        let at = offset + pos;
        let (m, len) = a.get_mapping(at, total - pos)?;
        // Eof (length 0): the rest reads as zeroes.
        let len = if len == 0 {
            total - pos
        } else {
            len.min(total - pos)
        };
        scratch.clear();
        cur.take(len, scratch);
        match m {
            Mapping::Raw {
                storage,
                offset: host,
                ..
            } if !storage.holds(host, len) => {
                // SAFETY: the caller's buffers, at offsets imago mapped.
                unsafe { iov::preadv_all(storage.raw_fd(), scratch, host) }?
            }
            Mapping::Zero { .. } | Mapping::Eof { .. } => {
                // SAFETY: the caller's buffers.
                unsafe { iov::zero(scratch) }
            }
            _ => {
                let mut v = IoVectorMut::with_capacity(scratch.len());
                for b in scratch.iter() {
                    // SAFETY: a part of the caller's buffers, writable and
                    // not otherwise borrowed for the call.
                    v.push(unsafe {
                        std::slice::from_raw_parts_mut(b.iov_base.cast::<u8>(), b.iov_len)
                    });
                }
                a.readv(v, at)?;
            }
        }
        pos += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::create::{self, CreateOptions};
    use std::os::unix::fs::FileExt;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn dir(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("vm-img-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn seed(name: &str, to: &Path) {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/qcow2-corpus")
            .join(name);
        std::fs::copy(from, to).unwrap();
    }
    fn open(path: &Path, write: bool) -> Image {
        let opts = OpenOptions {
            write,
            format: None,
            lock: false,
        };
        Image::open(path, &opts).unwrap()
    }
    fn overlay(path: &Path, base: &str, cluster_size: u64) {
        let opts = CreateOptions {
            format: Format::Qcow2,
            size: None,
            base: Some(base.into()),
            cluster_size,
        };
        create::create(path, &opts).unwrap();
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
    }

    /// What imago's own readv gives (the path the direct one replaces).
    fn imago_read(img: &Image, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        read_lock(&img.access)
            .readv(IoVectorMut::from(&mut buf[..]), offset)
            .unwrap();
        buf
    }

    /// The direct path, into buffers cut at random places (a guest's
    /// pages, empty ones too).
    fn direct_read(img: &Image, rng: &mut Rng, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0xeeu8; len];
        let mut cuts: Vec<usize> = (0..rng.below(5))
            .map(|_| rng.below(len as u64 + 1) as usize)
            .collect();
        cuts.extend([0, len]);
        cuts.sort();
        let mut rest = &mut buf[..];
        let mut slices = Vec::new();
        for w in cuts.windows(2) {
            let (a, b) = rest.split_at_mut(w[1] - w[0]);
            slices.push(IoSliceMut::new(a));
            rest = b;
        }
        img.read(offset, &mut slices).unwrap();
        buf
    }

    fn same_as_imago(img: &Image, rng: &mut Rng, what: &str) {
        let size = img.size();
        // Whole image, then pieces that start and end anywhere.
        assert!(
            direct_read(img, rng, 0, size as usize) == imago_read(img, 0, size as usize),
            "{what}: whole"
        );
        for _ in 0..300 {
            let at = rng.below(size);
            let len = rng.below((size - at).min(200 << 10)) as usize + 1;
            let len = len.min((size - at) as usize);
            assert!(
                direct_read(img, rng, at, len) == imago_read(img, at, len),
                "{what}: {len} at {at}"
            );
        }
    }

    /// Reads over allocated, zero (with and without a host cluster),
    /// unallocated-with-base (raw and qcow2 bases) and compressed clusters
    /// return what imago's readv returns.
    #[test]
    fn direct_reads_return_what_imago_reads() {
        let d = dir("direct-reads");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for name in [
            "compressed.qcow2",
            "zero-clusters.qcow2",
            "data-v3.qcow2",
            "cluster-512.qcow2",
            "v2.qcow2",
        ] {
            let p = d.0.join(name);
            seed(name, &p);
            same_as_imago(&open(&p, false), &mut rng, name);
        }
        // A chain: a qcow2 overlay (16 KiB clusters) on the compressed
        // image (4 KiB clusters), partly written; and one on a raw base.
        seed("compressed.qcow2", &d.0.join("c.qcow2"));
        let top = d.0.join("top.qcow2");
        overlay(&top, "c.qcow2", 16 << 10);
        {
            let img = open(&top, true);
            img.write(5000, &[IoSlice::new(&[0x5a; 9000])]).unwrap();
            img.write(64 << 10, &[IoSlice::new(&[0x11; 16 << 10])])
                .unwrap();
            img.write_zeroes(96 << 10, 16 << 10).unwrap();
            img.flush().unwrap();
        }
        same_as_imago(&open(&top, false), &mut rng, "overlay on compressed");
        let raw = d.0.join("base.raw");
        std::fs::write(
            &raw,
            (0..300_000u32)
                .map(|i| (i * 7 / 3) as u8)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let top = d.0.join("top-raw.qcow2");
        overlay(&top, "base.raw", 64 << 10);
        {
            let img = open(&top, true);
            img.write(70_000, &[IoSlice::new(&[0x33; 100])]).unwrap();
            img.flush().unwrap();
        }
        // The raw base ends inside the last cluster: the rest is zeroes.
        same_as_imago(&open(&top, false), &mut rng, "overlay on raw");
    }

    /// Writes of every shape (inside one cluster, across clusters, whole
    /// clusters, into allocated, unallocated, zero and compressed ones)
    /// give the bytes a plain model says, land in the file where imago's
    /// mapping says, and leave an image `check` calls clean.
    #[test]
    fn direct_writes_land_where_imago_maps() {
        let d = dir("direct-writes");
        seed("compressed.qcow2", &d.0.join("c.qcow2"));
        let top = d.0.join("top.qcow2");
        overlay(&top, "c.qcow2", 16 << 10);
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let img = open(&top, true);
        let size = img.size();
        let mut model = imago_read(&img, 0, size as usize);
        for i in 0..400u32 {
            let at = rng.below(size);
            let len =
                (rng.below(if i % 3 == 0 { 40 << 10 } else { 6000 }) + 1).min(size - at) as usize;
            let (at, len) = if i % 17 == 0 {
                (at & !(16383), 16384.min(size - (at & !16383)) as usize)
            } else {
                (at, len)
            };
            if i % 29 == 0 {
                img.write_zeroes(at & !4095, 4096).unwrap();
                model[(at & !4095) as usize..][..4096].fill(0);
                continue;
            }
            let data: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
            let cut = rng.below(len as u64) as usize;
            img.write(
                at,
                &[
                    IoSlice::new(&data[..cut]),
                    IoSlice::new(&[]),
                    IoSlice::new(&data[cut..]),
                ],
            )
            .unwrap();
            model[at as usize..at as usize + len].copy_from_slice(&data);
            let (a, n) = (rng.below(size), 8192);
            let n = n.min(size - a) as usize;
            assert!(
                direct_read(&img, &mut rng, a, n) == model[a as usize..a as usize + n],
                "after write {i}"
            );
        }
        assert!(imago_read(&img, 0, size as usize) == model);
        // Each data cluster of the top image holds its bytes at the host
        // offset imago maps it to.
        let file = File::open(&top).unwrap();
        let mut mapped = 0;
        for c in (0..size).step_by(16 << 10) {
            let a = read_lock(&img.access);
            let (m, len) = a.get_mapping(c, 16 << 10).unwrap();
            if let Mapping::Raw {
                offset: host,
                writable: true,
                ..
            } = m
            {
                let mut on_disk = vec![0u8; len as usize];
                file.read_exact_at(&mut on_disk, host).unwrap();
                assert!(
                    on_disk == model[c as usize..(c + len) as usize],
                    "cluster at {c}"
                );
                mapped += 1;
            }
        }
        assert!(mapped > 8, "{mapped} clusters written");
        img.flush().unwrap();
        drop(img);
        let img = open(&top, false);
        assert!(
            imago_read(&img, 0, size as usize) == model,
            "after reopening"
        );
        let (h, len) = (
            img.layers()[0].header.clone().unwrap(),
            img.layers()[0].file_len,
        );
        let r = check::check(&file, &h, len).unwrap();
        assert!(r.is_clean(), "{:?}", r.problems);
    }

    #[test]
    fn direct_writes_refuse_what_imago_refuses() {
        let d = dir("direct-refuse");
        let p = d.0.join("e.qcow2");
        seed("data-v3.qcow2", &p);
        let ro = open(&p, false);
        assert!(ro.write(0, &[IoSlice::new(b"x")]).is_err());
        drop(ro);
        let img = open(&p, true);
        let size = img.size();
        assert!(img.write(size - 1, &[IoSlice::new(b"xy")]).is_err());
        assert!(img.write(u64::MAX, &[IoSlice::new(b"x")]).is_err());
        img.write(size - 1, &[IoSlice::new(b"x")]).unwrap();
    }
}
