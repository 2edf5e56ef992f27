//! What the fuzz targets (vm-run/fuzz) run, also run by a unit test on
//! pseudo-random input so that it keeps building and is exercised on
//! stable Rust: a guest that controls every byte of a small memory, the
//! rings and the queue's configuration included.

use std::io;
use std::path::Path;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::block::Block;
use super::{drain_queue, ActiveQueue};
use crate::disk::{Disk, IoVec};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 64 << 10;
const DISK_SIZE: usize = 64 << 10;

/// A disk in memory, so that fuzzing touches no files.
struct MemDisk(Vec<u8>);

impl MemDisk {
    fn range(&self, offset: u64, bufs: &[IoVec]) -> io::Result<usize> {
        let len: usize = bufs.iter().map(|b| b.iov_len).sum();
        let end = (offset as usize)
            .checked_add(len)
            .filter(|e| *e <= self.0.len());
        end.map(|_| offset as usize)
            .ok_or_else(|| io::Error::other("past the end"))
    }
}

impl Disk for MemDisk {
    fn path(&self) -> &Path {
        Path::new("fuzz.img")
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&mut self, offset: u64, bufs: &[IoVec]) -> io::Result<()> {
        let mut at = self.range(offset, bufs)?;
        for b in bufs {
            // SAFETY: the block device built the iovec from a guest
            // memory slice it checked, which stays mapped.
            unsafe { std::ptr::copy(self.0[at..].as_ptr(), b.iov_base.cast(), b.iov_len) };
            at += b.iov_len;
        }
        Ok(())
    }
    fn write_at(&mut self, offset: u64, bufs: &[IoVec]) -> io::Result<()> {
        let mut at = self.range(offset, bufs)?;
        for b in bufs {
            // SAFETY: as in read_at.
            unsafe { std::ptr::copy(b.iov_base.cast(), self.0[at..].as_mut_ptr(), b.iov_len) };
            at += b.iov_len;
        }
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, _: bool) -> io::Result<()> {
        let (start, len) = (offset as usize, len as usize);
        self.0
            .get_mut(start..start.saturating_add(len))
            .ok_or_else(|| io::Error::other("past the end"))?
            .fill(0);
        Ok(())
    }
}

/// The first 8 bytes configure the queue (size, ring addresses, event
/// index); the rest is the guest's memory, rings and buffers alike.
pub fn block_queue(data: &[u8]) {
    let Some((cfg, image)) = data.split_first_chunk::<8>() else {
        return;
    };
    let mem = crate::memory::GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
        .expect("64 KiB of anonymous memory");
    let n = image.len().min(MEM_SIZE);
    if mem.write_slice(&image[..n], GuestAddress(0)).is_err() {
        return;
    }
    let mut dev = Block::new(
        Box::new(MemDisk(vec![0x5a; DISK_SIZE])),
        cfg[7] & 1 != 0,
        None,
    );
    let Ok(mut q) = Queue::new(256) else { return };
    let addr = |b: u8| u64::from(b) << 8;
    if q.try_set_size(u16::from(cfg[0]) + 1).is_err()
        || q.try_set_desc_table_address(GuestAddress(addr(cfg[1])))
            .is_err()
        || q.try_set_avail_ring_address(GuestAddress(addr(cfg[2])))
            .is_err()
        || q.try_set_used_ring_address(GuestAddress(addr(cfg[3])))
            .is_err()
    {
        return;
    }
    q.set_event_idx(cfg[4] & 1 != 0);
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return;
    }
    // Errors are how a broken ring is reported; they must not panic.
    let kick = std::sync::Arc::new(EventFd::new(0).expect("an eventfd"));
    let mut q = ActiveQueue::new(0, q, kick, 0);
    let _ = drain_queue(&mut dev, &mut q, &mem);
}

#[cfg(test)]
mod tests {
    /// xorshift64*: deterministic, so a failure reproduces.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn random_guests_do_not_crash_the_block_device() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..300 {
            let len = (next(&mut s) % 4096) as usize + 8;
            let mut data: Vec<u8> = (0..len).map(|_| next(&mut s) as u8).collect();
            // Half the runs: a plausible ring (size 16 at 0, 0x100, 0x200)
            // with random descriptors, so that requests get parsed.
            if next(&mut s) & 1 == 0 {
                data[..4].copy_from_slice(&[15, 0, 1, 2]);
                data.resize(data.len().max(0x400), 0);
                data[8 + 0x100 + 2] = (next(&mut s) % 17) as u8; // avail idx
                for i in 0..16 {
                    data[8 + 0x104 + 2 * i] = (next(&mut s) % 16) as u8;
                    data[8 + 0x104 + 2 * i + 1] = 0;
                }
            }
            super::block_queue(&data);
        }
    }
}
