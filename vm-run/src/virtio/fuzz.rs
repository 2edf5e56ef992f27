//! What the fuzz targets (vm-run/fuzz) run, also run by a unit test on
//! pseudo-random input so that it keeps building and is exercised on
//! stable Rust: a guest that controls every byte of a small memory, the
//! rings and the queue's configuration included, against virtio-blk
//! (`block_queue`), virtio-scsi's CD-ROM (`scsi_queue`) or virtio-net
//! (`net_queues`, with a socket pair as its tap).

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

/// A disk in memory, so that fuzzing touches no files. The lock stands
/// for what a file gives: calls from several queues' threads at once.
struct MemDisk(std::sync::Mutex<Vec<u8>>);

impl MemDisk {
    fn new(image: Vec<u8>) -> Self {
        MemDisk(std::sync::Mutex::new(image))
    }

    fn image(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn range(image: &[u8], offset: u64, bufs: &[IoVec]) -> io::Result<usize> {
        let len: usize = bufs.iter().map(|b| b.iov_len).sum();
        let end = (offset as usize)
            .checked_add(len)
            .filter(|e| *e <= image.len());
        end.map(|_| offset as usize)
            .ok_or_else(|| io::Error::other("past the end"))
    }
}

impl Disk for MemDisk {
    fn path(&self) -> &Path {
        Path::new("fuzz.img")
    }
    fn size(&self) -> u64 {
        self.image().len() as u64
    }
    fn read_at(&self, offset: u64, bufs: &[IoVec]) -> io::Result<()> {
        let image = self.image();
        let mut at = Self::range(&image, offset, bufs)?;
        for b in bufs {
            // SAFETY: the block device built the iovec from a guest
            // memory slice it checked, which stays mapped.
            unsafe { std::ptr::copy(image[at..].as_ptr(), b.iov_base.cast(), b.iov_len) };
            at += b.iov_len;
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, bufs: &[IoVec]) -> io::Result<()> {
        let mut image = self.image();
        let mut at = Self::range(&image, offset, bufs)?;
        for b in bufs {
            // SAFETY: as in read_at.
            unsafe { std::ptr::copy(b.iov_base.cast(), image[at..].as_mut_ptr(), b.iov_len) };
            at += b.iov_len;
        }
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _: bool) -> io::Result<()> {
        let (start, len) = (offset as usize, len as usize);
        self.image()
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

/// virtio-blk with two queues on an in-memory disk; bit 0 of the 8th
/// byte makes it read-only, bit 1 puts the rings on the second queue,
/// served by a lane of the device (as its own thread would serve it).
pub fn block_queue(data: &[u8]) {
    let Some((cfg, mem, mut q)) = guest(data) else {
        return;
    };
    let mut dev = Block::new(
        Box::new(MemDisk::new(vec![0x5a; DISK_SIZE])),
        cfg[7] & 1 != 0,
        None,
        2,
    );
    // Errors are how a broken ring is reported; they must not panic.
    if cfg[7] & 2 != 0 {
        q.index = 1;
        if let Some(mut lane) = dev.lane() {
            let _ = drain_queue(lane.as_mut(), &mut q, &mem);
        }
    } else {
        let _ = drain_queue(&mut dev, &mut q, &mem);
    }
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
    let mut dev = Scsi::new(Box::new(MemDisk::new(image)));
    q.index = usize::from(cfg[5] % 3);
    let index = q.index;
    let _ = dev.serve(Some(index), std::slice::from_mut(&mut q), &mem);
    Some(mem)
}

/// A datagram socket pair keeps frame boundaries as a tap does: the
/// device gets one end, the fuzzer plays the host's network on the other.
struct Wire(std::os::fd::OwnedFd);

impl std::os::fd::AsRawFd for Wire {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl super::net::Backend for Wire {
    fn readv(&mut self, iov: &[IoVec]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: the device built the iovecs from guest memory it checked.
        let r = unsafe { libc::readv(self.0.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
        usize::try_from(r).map_err(|_| io::Error::last_os_error())
    }
    fn writev(&mut self, iov: &[IoVec]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: as in readv.
        let r = unsafe { libc::writev(self.0.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
        usize::try_from(r).map_err(|_| io::Error::last_os_error())
    }
    fn set_offload(&mut self, _: u32) -> io::Result<()> {
        Ok(())
    }
}

/// The device's end and the host's.
fn wire() -> Option<(Wire, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: both fds are new and ours alone.
    unsafe {
        Some((
            Wire(std::os::fd::OwnedFd::from_raw_fd(fds[0])),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        ))
    }
}

/// Bits of byte 8 of a net_queues input, in order: the features the
/// driver took.
const NET_FEATURES: [u32; 6] = [
    virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF,
    virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_CSUM,
    virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_TSO4,
    virtio_bindings::virtio_net::VIRTIO_NET_F_GUEST_TSO6,
    virtio_bindings::virtio_net::VIRTIO_NET_F_CSUM,
    virtio_bindings::virtio_net::VIRTIO_NET_F_HOST_TSO4,
];

/// virtio-net's receive and transmit queues over real guest memory, its
/// tap a socket pair. Bytes 0-3 place the receive queue and 4-7 the
/// transmit queue (size - 1, then descriptor table, available and used
/// ring addresses in units of 256 bytes); byte 8 is the features (bits
/// as NET_FEATURES, bit 6 event index, bit 7 a DHCP lease); byte 9 the
/// number of frames (0-3) the host sends, each a little-endian u16
/// length and its bytes. The rest is the guest's memory.
pub fn net_queues(data: &[u8]) {
    net_run(data);
}

/// net_queues, returning the guest's memory and the frames the guest
/// sent to the host.
fn net_run(data: &[u8]) -> Option<(crate::memory::GuestMemory, Vec<Vec<u8>>)> {
    use std::os::fd::AsRawFd;
    let (cfg, mut rest) = data.split_first_chunk::<10>()?;
    let (dev_end, host) = wire()?;
    for _ in 0..cfg[9] % 4 {
        let (len, r) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_le_bytes(*len)).min(r.len());
        let (frame, r) = r.split_at(len);
        // SAFETY: frame is a live buffer of that length.
        unsafe { libc::send(host.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        rest = r;
    }
    let mem = crate::memory::GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
        .expect("64 KiB of anonymous memory");
    let n = rest.len().min(MEM_SIZE);
    mem.write_slice(&rest[..n], GuestAddress(0)).ok()?;
    let addr = |b: u8| GuestAddress(u64::from(b) << 8);
    let mut queues = Vec::new();
    for (index, c) in [&cfg[0..4], &cfg[4..8]].into_iter().enumerate() {
        let mut q = Queue::new(super::net::QUEUE_SIZE).ok()?;
        q.try_set_size(u16::from(c[0]) + 1).ok()?;
        q.try_set_desc_table_address(addr(c[1])).ok()?;
        q.try_set_avail_ring_address(addr(c[2])).ok()?;
        q.try_set_used_ring_address(addr(c[3])).ok()?;
        q.set_event_idx(cfg[8] & 1 << 6 != 0);
        q.set_ready(true);
        if !q.is_valid(&mem) {
            return None;
        }
        let kick = std::sync::Arc::new(EventFd::new(0).ok()?);
        queues.push(ActiveQueue::new(index, q, kick, 0));
    }
    let features = NET_FEATURES
        .iter()
        .enumerate()
        .filter(|(i, _)| cfg[8] & 1 << i != 0)
        .fold(0u64, |f, (_, bit)| f | 1 << bit);
    let lease = (cfg[8] & 1 << 7 != 0).then(|| crate::nic::dhcp::Lease {
        host: std::net::Ipv4Addr::new(100, 64, 0, 2),
        guest: std::net::Ipv4Addr::new(100, 64, 0, 3),
        dns: Some(std::net::Ipv4Addr::new(100, 64, 0, 2)),
    });
    let mac = [0xfe, 0xe1, 0xba, 0xd0, 0, 1];
    let mut dev = super::net::Net::new(Box::new(dev_end), "fuzz".into(), mac, lease);
    dev.activate(features);
    // Errors are how a broken ring is reported; they must not panic.
    let _ = dev.serve(Some(super::net::TX), &mut queues, &mem);
    let _ = dev.serve(Some(super::net::RX), &mut queues, &mem);
    let _ = dev.serve(None, &mut queues, &mem);
    let mut sent = Vec::new();
    let mut buf = vec![0u8; 1 << 17];
    loop {
        // SAFETY: buf is a live buffer of that length.
        let r = unsafe { libc::recv(host.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(len) = usize::try_from(r) else { break };
        sent.push(buf[..len].to_vec());
    }
    Some((mem, sent))
}

/// The helpers of every fuzz entry's unit tests: pseudo-random input and
/// the seed corpora on disk (vm-run/fuzz/corpus/<target>/).
#[cfg(test)]
pub(crate) mod support {
    /// xorshift64*: deterministic, so a failure reproduces.
    pub fn next(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `runs` inputs of up to `max` random bytes; some are seeds with
    /// bytes flipped, so that the entry gets past its first checks.
    pub fn inputs(seed: u64, runs: usize, max: usize, seeds: &[(&str, Vec<u8>)]) -> Vec<Vec<u8>> {
        let mut s = seed;
        (0..runs)
            .map(
                |_| match seeds.get((next(&mut s) % (2 * seeds.len() as u64 + 1)) as usize) {
                    Some((_, seed)) if !seed.is_empty() => {
                        let mut v = seed.clone();
                        for _ in 0..1 + next(&mut s) % 8 {
                            let at = (next(&mut s) % v.len() as u64) as usize;
                            v[at] = next(&mut s) as u8;
                        }
                        if next(&mut s).is_multiple_of(4) {
                            v.truncate((next(&mut s) % v.len() as u64) as usize);
                        }
                        v
                    }
                    _ => {
                        let len = (next(&mut s) % max as u64) as usize;
                        (0..len).map(|_| next(&mut s) as u8).collect()
                    }
                },
            )
            .collect()
    }

    fn dir(target: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target)
    }

    /// Fails unless the committed corpus of `target` is what `seeds` makes
    /// (regenerate with `cargo test -p vm-run write_seeds -- --ignored`).
    pub fn corpus_is_current(target: &str, seeds: &[(&str, Vec<u8>)]) {
        for (name, data) in seeds {
            let on_disk = std::fs::read(dir(target).join(name)).unwrap_or_default();
            assert!(on_disk == *data, "{target}/{name}: stale or missing seed");
        }
    }

    pub fn write_corpus(target: &str, seeds: &[(&str, Vec<u8>)]) {
        std::fs::create_dir_all(dir(target)).unwrap();
        for (name, data) in seeds {
            std::fs::write(dir(target).join(name), data).unwrap();
        }
    }
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

#[cfg(test)]
mod net_tests {
    use super::support;
    use vm_memory::{Bytes, GuestAddress};

    const NEXT: u16 = 1;
    const WRITE: u16 = 2;
    /// The receive ring (16 entries) at 0, 0x100, 0x200; the transmit
    /// ring at 0x300, 0x400, 0x500; buffers from 0x600.
    const RING: [u8; 8] = [15, 0, 1, 2, 15, 3, 4, 5];

    /// An input whose rings hold `rx` and `tx` (chains of address,
    /// length, flags), with `bytes` (address, contents) in memory and
    /// `host` frames from the host.
    fn input(
        features: u8,
        host: &[Vec<u8>],
        rx: &[&[(u64, u32, u16)]],
        tx: &[&[(u64, u32, u16)]],
        bytes: &[(u64, Vec<u8>)],
    ) -> Vec<u8> {
        let mut mem = vec![0u8; 0x600];
        for (ring, chains) in [(0usize, rx), (0x300, tx)] {
            let mut desc = 0usize;
            for (n, chain) in chains.iter().enumerate() {
                let slot = ring + 0x104 + 2 * n;
                mem[slot..slot + 2].copy_from_slice(&(desc as u16).to_le_bytes());
                for (i, &(addr, len, flags)) in chain.iter().enumerate() {
                    let d = &mut mem[ring + 16 * desc..ring + 16 * (desc + 1)];
                    d[0..8].copy_from_slice(&addr.to_le_bytes());
                    d[8..12].copy_from_slice(&len.to_le_bytes());
                    let more = if i + 1 < chain.len() { NEXT } else { 0 };
                    d[12..14].copy_from_slice(&(flags | more).to_le_bytes());
                    d[14..16].copy_from_slice(&(desc as u16 + 1).to_le_bytes());
                    desc += 1;
                }
            }
            mem[ring + 0x102] = chains.len() as u8;
        }
        for (addr, b) in bytes {
            let at = *addr as usize;
            mem.resize(mem.len().max(at + b.len()), 0);
            mem[at..at + b.len()].copy_from_slice(b);
        }
        let mut data = RING.to_vec();
        data.extend_from_slice(&[features, host.len() as u8]);
        for f in host {
            data.extend_from_slice(&(f.len() as u16).to_le_bytes());
            data.extend_from_slice(f);
        }
        data.extend_from_slice(&mem);
        data
    }

    /// A vnet header and an Ethernet frame of `len` bytes.
    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend([0xff; 6]);
        f.extend([0xfe, 0xe1, 0xba, 0xd0, 0, 1, 0x08, 0x00]);
        f.extend((14..len).map(|i| i as u8));
        f
    }

    /// A guest's DHCPDISCOVER, behind its vnet header.
    fn discover() -> Vec<u8> {
        let mut f = frame(14);
        f.extend([0x45, 0, 1, 0x48, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend([0, 0, 0, 0, 255, 255, 255, 255]);
        f.extend([0, 68, 0, 67, 1, 0x34, 0, 0]);
        let mut bootp = vec![0u8; 236];
        bootp[..4].copy_from_slice(&[1, 1, 6, 0]);
        bootp[4..8].copy_from_slice(&[1, 2, 3, 4]);
        bootp[28..34].copy_from_slice(&[0xfe, 0xe1, 0xba, 0xd0, 0, 1]);
        f.extend(bootp);
        f.extend([99, 130, 83, 99, 53, 1, 1, 255]);
        f.resize(12 + 14 + 328, 0);
        f
    }

    type NetSeed = (&'static str, Vec<u8>, (u16, u16), usize);

    /// The seeds of vm-run/fuzz/corpus/virtio_net, with the used ring
    /// indexes (receive, transmit) and the number of frames the host gets.
    fn net_seeds() -> Vec<NetSeed> {
        let (buf, buf2) = (0x600u64, 0xe00u64);
        let tx = frame(60);
        let big = frame(1200);
        vec![
            (
                "tx",
                input(0, &[], &[], &[&[(buf, 72, 0)]], &[(buf, tx.clone())]),
                (0, 1),
                1,
            ),
            (
                "tx_split_header",
                input(
                    0,
                    &[],
                    &[],
                    &[&[(buf, 12, 0), (buf + 12, 60, 0)]],
                    &[(buf, tx.clone())],
                ),
                (0, 1),
                1,
            ),
            (
                "tx_tso",
                input(
                    0b11_0000,
                    &[],
                    &[],
                    &[&[(buf, 72, 0)]],
                    &[(buf, [&[1u8, 1, 54, 0, 0xb4, 5][..], &tx[6..]].concat())],
                ),
                (0, 1),
                1,
            ),
            (
                "rx",
                input(
                    0,
                    std::slice::from_ref(&tx),
                    &[&[(buf, 1600, WRITE)]],
                    &[],
                    &[],
                ),
                (1, 0),
                0,
            ),
            (
                "rx_mergeable",
                input(
                    1,
                    &[big],
                    &[
                        &[(buf, 600, WRITE)],
                        &[(buf2, 600, WRITE)],
                        &[(buf2 + 0x300, 300, WRITE), (buf2 + 0x600, 300, WRITE)],
                    ],
                    &[],
                    &[],
                ),
                (3, 0),
                0,
            ),
            (
                "dhcp_discover",
                input(
                    0x80,
                    &[],
                    &[&[(buf2, 1600, WRITE)]],
                    &[&[(buf, 354, 0)]],
                    &[(buf, discover())],
                ),
                (1, 1),
                0,
            ),
            (
                "rx_and_tx_event_idx",
                input(
                    0x40,
                    std::slice::from_ref(&tx),
                    &[&[(buf2, 1600, WRITE)]],
                    &[&[(buf, 72, 0)]],
                    &[(buf, tx.clone())],
                ),
                (1, 1),
                1,
            ),
        ]
    }

    fn named() -> Vec<(&'static str, Vec<u8>)> {
        net_seeds().into_iter().map(|(n, d, _, _)| (n, d)).collect()
    }

    #[test]
    fn net_seeds_are_served_as_intended() {
        for (name, data, (rx, tx), sent) in net_seeds() {
            let (mem, got) = super::net_run(&data).unwrap_or_else(|| panic!("{name}: no guest"));
            let rx_used: u16 = mem.read_obj(GuestAddress(0x202)).unwrap();
            let tx_used: u16 = mem.read_obj(GuestAddress(0x502)).unwrap();
            assert_eq!((rx_used, tx_used, got.len()), (rx, tx, sent), "{name}");
        }
    }

    #[test]
    fn random_guests_do_not_crash_the_nic() {
        for data in support::inputs(0x5851_f42d_4c95_7f2d, 300, 8192, &named()) {
            super::net_queues(&data);
        }
    }

    #[test]
    fn net_corpus_is_current() {
        support::corpus_is_current("virtio_net", &named());
    }

    #[test]
    #[ignore]
    fn write_seeds() {
        support::write_corpus("virtio_net", &named());
    }
}
