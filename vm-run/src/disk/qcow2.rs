//! qcow2 images (and their base images) as a virtio-blk backend: vm-img's
//! `Image`, which reads and writes through imago, fed the guest's buffers
//! in place.

use std::io::{self, IoSlice, IoSliceMut};
use std::path::Path;

use vm_img::Image;

use super::{Disk, Flusher, IoVec};

pub struct Qcow2 {
    img: Image,
}

impl Qcow2 {
    pub fn new(img: Image) -> Self {
        Qcow2 { img }
    }
}

impl Disk for Qcow2 {
    fn path(&self) -> &Path {
        self.img.path()
    }

    fn size(&self) -> u64 {
        self.img.size()
    }

    fn read_at(&mut self, offset: u64, bufs: &[IoVec]) -> io::Result<()> {
        let mut slices: Vec<IoSliceMut> = bufs
            .iter()
            // SAFETY: the block device checked every buffer against guest
            // memory, which stays mapped for the life of the process; the
            // guest gave these bytes to the device until it completes the
            // request, so nothing else in vm-run touches them meanwhile.
            .map(|b| {
                IoSliceMut::new(unsafe {
                    std::slice::from_raw_parts_mut(b.iov_base.cast(), b.iov_len)
                })
            })
            .collect();
        self.img.read(offset, &mut slices)
    }

    fn write_at(&mut self, offset: u64, bufs: &[IoVec]) -> io::Result<()> {
        let slices: Vec<IoSlice> = bufs
            .iter()
            // SAFETY: as in read_at; these are only read.
            .map(|b| {
                IoSlice::new(unsafe { std::slice::from_raw_parts(b.iov_base.cast(), b.iov_len) })
            })
            .collect();
        self.img.write(offset, &slices)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.img.flush()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.img.discard(offset, len)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
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
