//! What the fuzz targets (vm-run/fuzz) run, also run by a unit test on
//! pseudo-random input so that it keeps building and is exercised on
//! stable Rust: a guest that controls every byte of a small memory, the
//! rings and the queue's configuration included, against virtio-blk
//! (`block_queue`) or virtio-scsi's CD-ROM (`scsi_queue`).

use std::io;
use std::path::Path;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::block::Block;
use super::scsi::Scsi;
use super::{drain_queue, ActiveQueue, VirtioDevice};
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
/// index, and for each device a byte of its own); the rest is the
/// guest's memory, rings and buffers alike.
fn guest(data: &[u8]) -> Option<([u8; 8], crate::memory::GuestMemory, ActiveQueue)> {
    let (cfg, image) = data.split_first_chunk::<8>()?;
    let mem = crate::memory::GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
        .expect("64 KiB of anonymous memory");
    let n = image.len().min(MEM_SIZE);
    mem.write_slice(&image[..n], GuestAddress(0)).ok()?;
    let mut q = Queue::new(256).ok()?;
    let addr = |b: u8| u64::from(b) << 8;
    q.try_set_size(u16::from(cfg[0]) + 1).ok()?;
    q.try_set_desc_table_address(GuestAddress(addr(cfg[1])))
        .ok()?;
    q.try_set_avail_ring_address(GuestAddress(addr(cfg[2])))
        .ok()?;
    q.try_set_used_ring_address(GuestAddress(addr(cfg[3])))
        .ok()?;
    q.set_event_idx(cfg[4] & 1 != 0);
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return None;
    }
    let kick = std::sync::Arc::new(EventFd::new(0).expect("an eventfd"));
    Some((*cfg, mem, ActiveQueue::new(0, q, kick, 0)))
}

/// virtio-blk on an in-memory disk; bit 0 of the 8th byte makes it
/// read-only.
pub fn block_queue(data: &[u8]) {
    let Some((cfg, mem, mut q)) = guest(data) else {
        return;
    };
    let mut dev = Block::new(
        Box::new(MemDisk(vec![0x5a; DISK_SIZE])),
        cfg[7] & 1 != 0,
        None,
    );
    // Errors are how a broken ring is reported; they must not panic.
    let _ = drain_queue(&mut dev, &mut q, &mem);
}

/// virtio-scsi with its CD-ROM on an in-memory image; the 6th byte
/// picks the queue (control, event, request) the rings are for.
pub fn scsi_queue(data: &[u8]) {
    scsi_run(data);
}

/// scsi_queue, returning the guest's memory afterwards.
fn scsi_run(data: &[u8]) -> Option<crate::memory::GuestMemory> {
    let (cfg, mem, mut q) = guest(data)?;
    let image: Vec<u8> = (0..DISK_SIZE).map(|i| (i / 2048) as u8).collect();
    let mut dev = Scsi::new(Box::new(MemDisk(image)));
    q.index = usize::from(cfg[5] % 3);
    let index = q.index;
    let _ = dev.serve(Some(index), std::slice::from_mut(&mut q), &mem);
    Some(mem)
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

    /// Random input, half of it with a plausible ring (size 16 at 0,
    /// 0x100, 0x200) of random descriptors, so that requests get parsed.
    fn random_inputs(seed: u64, runs: usize) -> Vec<Vec<u8>> {
        let mut s = seed;
        (0..runs)
            .map(|_| {
                let len = (next(&mut s) % 4096) as usize + 8;
                let mut data: Vec<u8> = (0..len).map(|_| next(&mut s) as u8).collect();
                if next(&mut s) & 1 == 0 {
                    data[..4].copy_from_slice(&[15, 0, 1, 2]);
                    data.resize(data.len().max(0x400), 0);
                    data[8 + 0x100 + 2] = (next(&mut s) % 17) as u8; // avail idx
                    for i in 0..16 {
                        data[8 + 0x104 + 2 * i] = (next(&mut s) % 16) as u8;
                        data[8 + 0x104 + 2 * i + 1] = 0;
                    }
                }
                data
            })
            .collect()
    }

    #[test]
    fn random_guests_do_not_crash_the_cd_rom() {
        for data in random_inputs(0x2545_f491_4f6c_dd1d, 300) {
            super::scsi_queue(&data);
        }
    }

    use vm_memory::{Bytes, GuestAddress};

    const REQ: u64 = 0x1000;
    const RESP: u64 = 0x2000;
    const DATA: u64 = 0x3000;
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;

    /// A fuzz input with one chain of `descs` (address, length, flags)
    /// on `queue`, and `req` at REQ: a ring of 16 at 0, 0x100, 0x200.
    fn input(queue: u8, descs: &[(u64, u32, u16)], req: &[u8]) -> Vec<u8> {
        let mut mem = vec![0u8; REQ as usize + req.len()];
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let d = &mut mem[16 * i..16 * (i + 1)];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            let more = if i + 1 < descs.len() { NEXT } else { 0 };
            d[12..14].copy_from_slice(&(flags | more).to_le_bytes());
            d[14..16].copy_from_slice(&(i as u16 + 1).to_le_bytes());
        }
        mem[0x102] = 1; // avail idx: one chain, head 0
        mem[REQ as usize..].copy_from_slice(req);
        let mut data = vec![15, 0, 1, 2, 0, queue, 0, 0];
        data.extend_from_slice(&mem);
        data
    }

    /// A SCSI command to target 0 LUN `lun` with `room` bytes of data-in.
    fn command(lun: u8, cdb: &[u8], room: u32) -> Vec<u8> {
        let mut req = vec![0u8; 51];
        req[0..4].copy_from_slice(&[1, 0, 0x40, lun]);
        req[19..19 + cdb.len()].copy_from_slice(cdb);
        let mut descs = vec![(REQ, 51, 0), (RESP, 108, WRITE)];
        if room > 0 {
            descs.push((DATA, room, WRITE));
        }
        input(2, &descs, &req)
    }

    /// The seeds of vm-run/fuzz/corpus/virtio_scsi: one well-formed
    /// request of each kind the device serves, with the virtio-scsi
    /// response and SCSI status each gets.
    fn scsi_seeds() -> Vec<(&'static str, Vec<u8>, u8, u8)> {
        let c = |cdb: &[u8], room| command(0, cdb, room);
        let mut tmf = 0u32.to_le_bytes().to_vec();
        tmf.extend_from_slice(&5u32.to_le_bytes()); // logical unit reset
        tmf.extend_from_slice(&[1, 0, 0x40, 0, 0, 0, 0, 0]);
        tmf.extend_from_slice(&[0; 8]);
        let mut an = 1u32.to_le_bytes().to_vec();
        an.extend_from_slice(&[1, 0, 0x40, 0, 0, 0, 0, 0]);
        an.extend_from_slice(&0x10u32.to_le_bytes());
        vec![
            ("test_unit_ready", c(&[0x00; 6], 0), 0, 0),
            ("request_sense", c(&[0x03, 0, 0, 0, 18, 0], 18), 0, 0),
            ("inquiry", c(&[0x12, 0, 0, 0, 36, 0], 36), 0, 0),
            ("inquiry_vpd", c(&[0x12, 1, 0x83, 0, 64, 0], 64), 0, 0),
            (
                "read_capacity_10",
                c(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8),
                0,
                0,
            ),
            (
                "read_capacity_16",
                c(&[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], 32),
                0,
                0,
            ),
            ("read_10", c(&[0x28, 0, 0, 0, 0, 2, 0, 0, 2, 0], 4096), 0, 0),
            (
                "read_12",
                c(&[0xa8, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0], 2048),
                0,
                0,
            ),
            (
                "read_16",
                c(&[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0], 2048),
                0,
                0,
            ),
            (
                "read_past_end",
                c(&[0x28, 0, 0, 0, 0, 32, 0, 0, 1, 0], 2048),
                0,
                2,
            ),
            ("read_toc", c(&[0x43, 0, 0, 0, 0, 0, 0, 0, 20, 0], 20), 0, 0),
            (
                "read_toc_session_msf",
                c(&[0x43, 2, 1, 0, 0, 0, 0, 0, 12, 0], 12),
                0,
                0,
            ),
            (
                "get_configuration",
                c(&[0x46, 0, 0, 0, 0, 0, 0, 1, 0, 0], 256),
                0,
                0,
            ),
            ("mode_sense_6", c(&[0x1a, 0, 0x2a, 0, 64, 0], 64), 0, 0),
            (
                "mode_sense_10",
                c(&[0x5a, 0, 0x3f, 0, 0, 0, 0, 0, 64, 0], 64),
                0,
                0,
            ),
            (
                "get_event_status",
                c(&[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0], 8),
                0,
                0,
            ),
            (
                "mechanism_status",
                c(&[0xbd, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], 8),
                0,
                0,
            ),
            ("prevent_allow", c(&[0x1e, 0, 0, 0, 1, 0], 0), 0, 0),
            ("start_stop_unit", c(&[0x1b, 0, 0, 0, 2, 0], 0), 0, 0),
            (
                "read_disc_information",
                c(&[0x51, 0, 0, 0, 0, 0, 0, 0, 34, 0], 34),
                0,
                0,
            ),
            (
                "report_luns",
                c(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], 16),
                0,
                0,
            ),
            (
                "unsupported",
                c(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], 0),
                0,
                2,
            ),
            ("bad_lun", command(1, &[0x12, 0, 0, 0, 36, 0], 36), 3, 0),
            (
                "tmf_lun_reset",
                input(0, &[(REQ, 24, 0), (RESP, 1, WRITE)], &tmf),
                0,
                0,
            ),
            (
                "an_query",
                input(0, &[(REQ, 16, 0), (RESP, 5, WRITE)], &an),
                0,
                0,
            ),
        ]
    }

    #[test]
    fn scsi_seeds_are_served_as_intended() {
        for (name, data, response, status) in scsi_seeds() {
            let mem = super::scsi_run(&data).unwrap_or_else(|| panic!("{name}: no guest"));
            let used: u16 = mem.read_obj(GuestAddress(0x202)).unwrap();
            assert_eq!(used, 1, "{name}: used ring index");
            if data[5] == 0 {
                let at = if name == "an_query" { RESP + 4 } else { RESP };
                let r: u8 = mem.read_obj(GuestAddress(at)).unwrap();
                assert_eq!(r, response, "{name}");
                continue;
            }
            let mut head = [0u8; 12];
            mem.read_slice(&mut head, GuestAddress(RESP)).unwrap();
            assert_eq!((head[11], head[10]), (response, status), "{name}");
        }
    }

    /// The corpus on disk is what scsi_seeds makes (regenerate with
    /// `cargo test -p vm-run write_scsi_seeds -- --ignored`).
    #[test]
    fn scsi_corpus_is_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/virtio_scsi");
        for (name, data, _, _) in scsi_seeds() {
            let on_disk = std::fs::read(dir.join(name)).unwrap_or_default();
            assert!(on_disk == data, "{name}: stale or missing seed");
        }
    }

    #[test]
    #[ignore]
    fn write_scsi_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/virtio_scsi");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, data, _, _) in scsi_seeds() {
            std::fs::write(dir.join(name), data).unwrap();
        }
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
