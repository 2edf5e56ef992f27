//! qcow2 images (and their base images) as a virtio-blk backend: vm-img's
//! `Image`, which reads and writes data clusters itself where imago maps
//! them and leaves the rest to imago, fed the guest's buffers in place (as
//! iovecs: no slices built per request).

use std::io;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use vm_img::Image;

use super::{Disk, Flusher, IoVec};

pub struct Qcow2 {
    img: Image,
    /// Held by whatever may change the image's metadata (writes, discard,
    /// write zeroes) and by flush, which several queues may ask for at
    /// once. A flush writes the L1 table last, after the refcounts and L2
    /// tables (vm-img's ordered.rs); a write on another queue allocating
    /// an L2 table in between would put an L1 entry on disk before its
    /// refcount. Writes already go one at a time through vm-img's data
    /// path, so this costs them nothing more; reads do not take it.
    order: Mutex<()>,
}

impl Qcow2 {
    pub fn new(img: Image) -> Self {
        Qcow2 {
            img,
            order: Mutex::new(()),
        }
    }

    fn order(&self) -> MutexGuard<'_, ()> {
        self.order.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Disk for Qcow2 {
    fn path(&self) -> &Path {
        self.img.path()
    }

    fn size(&self) -> u64 {
        self.img.size()
    }

    fn read_at(&self, offset: u64, bufs: &[IoVec]) -> io::Result<()> {
        // SAFETY: the block device checked every buffer against guest
        // memory, which stays mapped for the life of the process; the guest
        // gave these bytes to the device until it completes the request, so
        // nothing else in vm-run touches them meanwhile.
        unsafe { self.img.read_iovecs(offset, bufs) }
    }

    fn write_at(&self, offset: u64, bufs: &[IoVec]) -> io::Result<()> {
        let _order = self.order();
        // SAFETY: as in read_at; these are only read.
        unsafe { self.img.write_iovecs(offset, bufs) }
    }

    fn flush(&self) -> io::Result<()> {
        let _order = self.order();
        self.img.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let _order = self.order();
        self.img.discard(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let _order = self.order();
        if unmap {
            self.img.discard(offset, len)
        } else {
            self.img.write_zeroes(offset, len)
        }
    }

    fn flusher(&self) -> Option<Flusher> {
        Some(self.img.flusher())
    }
}
