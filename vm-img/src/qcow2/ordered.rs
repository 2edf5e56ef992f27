//! The storage under a writable qcow2 image: imago's file, with the L1
//! table's writes held back until the next flush.
//!
//! imago writes an L1 entry as soon as it allocates an L2 table, while the
//! refcount block that counts the new table may still sit in its cache: a
//! crash (kill -9 of vm-run) in between leaves an L1 entry pointing at a
//! cluster whose refcount is 0, which `qemu-img check` rightly calls
//! corruption. QEMU flushes its refcount cache first (l2_allocate). We
//! cannot reorder imago from outside, so this layer keeps the L1 table's
//! bytes in memory and writes them at the next flush, after imago has
//! written its refcount blocks and L2 tables (and after an fdatasync, so
//! that the order holds across a power cut too). On disk, the L1 table
//! then never points at a table that is not counted: a crash leaks
//! clusters at worst. imago reads the L1 table only when it opens the
//! image, and moves it only when the image grows, so nothing else sees
//! the difference. Data written but not flushed may be lost in a crash,
//! which is what a disk without a completed flush promises anyway.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use imago::file::File;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::storage::drivers::CommonStorageHelper;
use imago::storage::PreallocateMode;
use imago::Storage;

/// The L1 table as it should be, and the range of it not yet on disk.
#[derive(Debug)]
pub struct HeldL1 {
    start: u64,
    bytes: Vec<u8>,
    dirty: Option<(usize, usize)>,
}

impl HeldL1 {
    /// The table at `start`, `len` bytes long, as `file` holds it now.
    pub fn load(file: &std::fs::File, start: u64, len: u64) -> io::Result<HeldL1> {
        let mut bytes = vec![0u8; len as usize];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut bytes, start)?;
        Ok(HeldL1 {
            start,
            bytes,
            dirty: None,
        })
    }

    /// The part of [offset, offset + len) inside the table, as indices of
    /// `bytes` and of the request.
    fn overlap(&self, offset: u64, len: u64) -> Option<(usize, usize, usize)> {
        let end = self.start + self.bytes.len() as u64;
        let (lo, hi) = (offset.max(self.start), (offset + len).min(end));
        (lo < hi).then(|| {
            (
                (lo - self.start) as usize,
                (hi - self.start) as usize,
                (lo - offset) as usize,
            )
        })
    }
}

/// Shared with the image, which turns the holding off before it resizes
/// (the L1 table may move then).
pub type Held = Arc<Mutex<Option<HeldL1>>>;

pub fn lock(h: &Held) -> MutexGuard<'_, Option<HeldL1>> {
    h.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
pub struct Ordered {
    inner: File,
    held: Held,
    /// The same file, for lseek(SEEK_DATA) and the image's direct reads
    /// and writes of data clusters (image.rs): imago's file does not lend
    /// its descriptor.
    fd: std::fs::File,
    /// The end of the last direct write past imago's idea of the file's
    /// size, which imago's file only learns from its own writes.
    direct_end: AtomicU64,
}

impl Ordered {
    pub fn new(inner: File, held: Held, fd: std::fs::File) -> Self {
        Ordered {
            inner,
            held,
            fd,
            direct_end: AtomicU64::new(0),
        }
    }

    /// The descriptor for reads and writes of data at offsets imago mapped.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether [offset, offset + len) touches the held-back L1 table, whose
    /// bytes on disk are stale: such a range must go through imago (and so
    /// through this layer), never to the descriptor.
    pub fn holds(&self, offset: u64, len: u64) -> bool {
        lock(&self.held)
            .as_ref()
            .is_some_and(|h| h.overlap(offset, len).is_some())
    }

    /// A direct write ended at `end`.
    pub fn wrote_to(&self, end: u64) {
        self.direct_end.fetch_max(end, Ordering::Relaxed);
    }

    /// Whether [offset, offset + n) of the file may hold data (false: a
    /// hole, which reads as zeroes), and n, at most `len` and at least 1.
    /// Errors, and file systems without SEEK_DATA, say data.
    pub fn extent(&self, offset: u64, len: u64) -> (bool, u64) {
        let seek = |whence| {
            let at = i64::try_from(offset).ok()?;
            // SAFETY: lseek on our own descriptor; imago reads and writes
            // at explicit offsets, so the file position is ours to move.
            let r = unsafe { libc::lseek(self.fd.as_raw_fd(), at, whence) };
            Some(if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(r as u64)
            })
        };
        match seek(libc::SEEK_DATA) {
            Some(Ok(data)) if data > offset => (false, (data - offset).min(len)),
            Some(Err(e)) if e.raw_os_error() == Some(libc::ENXIO) => (false, len),
            Some(Ok(_)) => match seek(libc::SEEK_HOLE) {
                Some(Ok(hole)) if hole > offset => (true, (hole - offset).min(len)),
                _ => (true, len),
            },
            _ => (true, len),
        }
    }

    /// Writes the held-back part of the L1 table, once what it points at
    /// is durable.
    pub fn write_held(inner: &File, held: &mut Option<HeldL1>) -> io::Result<()> {
        let Some(h) = held.as_mut() else {
            return Ok(());
        };
        let Some((lo, hi)) = h.dirty else {
            return Ok(());
        };
        inner.sync()?;
        let part = &h.bytes[lo..hi];
        // SAFETY: a plain write of our own buffer to the table's place in
        // the file; imago does not write there while we hold the lock.
        unsafe { inner.pure_writev(IoVector::from(part), h.start + lo as u64) }?;
        h.dirty = None;
        Ok(())
    }
}

impl fmt::Display for Ordered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Storage for Ordered {
    fn mem_align(&self) -> usize {
        self.inner.mem_align()
    }

    fn req_align(&self) -> usize {
        self.inner.req_align()
    }

    fn zero_align(&self) -> usize {
        self.inner.zero_align()
    }

    fn discard_align(&self) -> usize {
        self.inner.discard_align()
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self
            .inner
            .size()?
            .max(self.direct_end.load(Ordering::Relaxed)))
    }

    fn resolve_relative_path<P: AsRef<Path>>(&self, relative: P) -> io::Result<PathBuf> {
        self.inner.resolve_relative_path(relative)
    }

    fn get_filename(&self) -> Option<PathBuf> {
        self.inner.get_filename()
    }

    unsafe fn pure_readv(&self, bufv: IoVectorMut<'_>, offset: u64) -> io::Result<()> {
        let held = lock(&self.held);
        let Some((lo, hi, at)) = held.as_ref().and_then(|h| h.overlap(offset, bufv.len())) else {
            drop(held);
            // SAFETY: passed on as the caller gave it.
            return unsafe { self.inner.pure_readv(bufv, offset) };
        };
        let mut tmp = vec![0u8; bufv.len() as usize];
        // SAFETY: our own buffer.
        unsafe { self.inner.pure_readv(IoVectorMut::from(&mut tmp), offset) }?;
        if let Some(h) = held.as_ref() {
            tmp[at..at + (hi - lo)].copy_from_slice(&h.bytes[lo..hi]);
        }
        let mut done = 0;
        for mut s in bufv.into_inner() {
            let n = s.len();
            s.copy_from_slice(&tmp[done..done + n]);
            done += n;
        }
        Ok(())
    }

    unsafe fn pure_writev(&self, bufv: IoVector<'_>, offset: u64) -> io::Result<()> {
        let mut held = lock(&self.held);
        let Some((lo, hi, at)) = held.as_ref().and_then(|h| h.overlap(offset, bufv.len())) else {
            drop(held);
            // SAFETY: passed on as the caller gave it.
            return unsafe { self.inner.pure_writev(bufv, offset) };
        };
        let mut tmp = vec![0u8; bufv.len() as usize];
        bufv.copy_into_slice(&mut tmp);
        if let Some(h) = held.as_mut() {
            h.bytes[lo..hi].copy_from_slice(&tmp[at..at + (hi - lo)]);
            h.dirty = Some(match h.dirty {
                None => (lo, hi),
                Some((a, b)) => (a.min(lo), b.max(hi)),
            });
        }
        // What lies around the table (an unaligned write) goes through.
        let tail = at + (hi - lo);
        // SAFETY: slices of our own buffer.
        unsafe {
            if at > 0 {
                self.inner.pure_writev(IoVector::from(&tmp[..at]), offset)?;
            }
            if tail < tmp.len() {
                self.inner
                    .pure_writev(IoVector::from(&tmp[tail..]), offset + tail as u64)?;
            }
        }
        Ok(())
    }

    unsafe fn pure_write_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        // SAFETY: passed on as the caller gave it.
        unsafe { self.inner.pure_write_zeroes(offset, length) }
    }

    unsafe fn pure_write_allocated_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        // SAFETY: passed on as the caller gave it.
        unsafe { self.inner.pure_write_allocated_zeroes(offset, length) }
    }

    unsafe fn pure_discard(&self, offset: u64, length: u64) -> io::Result<()> {
        // SAFETY: passed on as the caller gave it.
        unsafe { self.inner.pure_discard(offset, length) }
    }

    fn flush(&self) -> io::Result<()> {
        // imago flushes its caches before it flushes its storage: what the
        // held entries point at has been written by now.
        self.inner.flush()?;
        Ordered::write_held(&self.inner, &mut lock(&self.held))
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }

    unsafe fn invalidate_cache(&self) -> io::Result<()> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.inner.invalidate_cache() }
    }

    fn get_storage_helper(&self) -> &CommonStorageHelper {
        self.inner.get_storage_helper()
    }

    fn resize(&self, new_size: u64, prealloc_mode: PreallocateMode) -> io::Result<()> {
        self.inner.resize(new_size, prealloc_mode)
    }
}
