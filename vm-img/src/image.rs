//! An open image: the top file and its chain of base images (opened and
//! locked in chain.rs), read and written through imago and the direct data
//! path of qcow2/data.rs.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder};

use crate::error::{Error, Result};
use crate::iov::as_iovecs;
use crate::qcow2::data::{self, Access, DataPath};
use crate::qcow2::ordered::{self, Held, HeldL1, Ordered};

pub use crate::chain::{
    file_len, lock_file, open_file, open_regular, probe, resolve_backing, walk, Layer, MAX_CHAIN,
};

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

pub struct Image {
    layers: Vec<Layer>,
    /// The top image's L1 table, held back between flushes (ordered.rs).
    held: Held,
    /// Reads, writes and flushes share the lock; discard, write zeroes and
    /// resize take it alone. The direct paths trust a mapping imago gave
    /// for as long as they hold the shared lock, which holds because
    /// everything that can unmap or move a data cluster takes it alone.
    access: Arc<RwLock<Access>>,
    writable: bool,
    data: DataPath,
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
            .map_err(|e| Error::from_io(&layer.path, e))?;
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
            data: DataPath::new(cluster),
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
        // SAFETY: the caller's promise, passed on.
        unsafe { self.data.read(&read_lock(&self.access), offset, bufs) }
    }

    /// `write` on buffers given as iovecs.
    ///
    /// # Safety
    /// Each iovec must describe readable memory that nothing writes until
    /// the call returns.
    pub unsafe fn write_iovecs(&self, offset: u64, bufs: &[libc::iovec]) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::other("Image is read-only"));
        }
        // SAFETY: the caller's promise, passed on.
        unsafe { self.data.write(&read_lock(&self.access), offset, bufs) }
    }

    /// Whether [offset, offset + n) may hold data (false: it reads as
    /// zeroes: unallocated through the whole chain, zero clusters, holes
    /// of a raw file), and n: at most `max`, at least 1 when `max` is.
    pub fn extent(&self, offset: u64, max: u64) -> io::Result<(bool, u64)> {
        data::extent(&read_lock(&self.access), offset, max)
    }

    /// imago's view of the chain, under the shared lock (for tests that
    /// compare the direct paths with imago's own).
    #[cfg(test)]
    pub(crate) fn access(&self) -> RwLockReadGuard<'_, Access> {
        read_lock(&self.access)
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

    /// Sets the virtual size. Growing an image whose base is longer than
    /// it was zeroes the new area, or the base's bytes would show through
    /// it (QEMU's bdrv_co_truncate does the same); as far as the base
    /// reaches, rounded up to a cluster: past it, a base reads as zeroes.
    pub fn resize(&self, size: u64) -> io::Result<()> {
        // Growing may move the L1 table: no more holding it back.
        self.flush()?;
        *ordered::lock(&self.held) = None;
        let mut a = self.access.write().unwrap_or_else(|e| e.into_inner());
        let old = a.size();
        a.resize(size, imago::format::PreallocateMode::None)?;
        let (Some(base), Some(h)) = (self.layers.get(1), &self.layers[0].header) else {
            return Ok(());
        };
        let reach = base
            .virtual_size()
            .checked_next_multiple_of(h.cluster_size())
            .unwrap_or(u64::MAX)
            .min(size);
        if reach > old {
            a.write_zeroes(old, reach - old)?;
        }
        Ok(())
    }
}
