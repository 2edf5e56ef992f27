//! virtio-blk: request queues over a Disk. Each request is a header
//! (type, sector) in driver-readable buffers, data, and a status byte at
//! the very end of the driver-writable ones; whatever the guest puts in a
//! chain, a request either completes or fails with a status, and a chain
//! too broken to carry a status is returned unused.
//!
//! Data moves between the image and guest memory directly (preadv and
//! pwritev on guest pages): no bounce buffer, no copy.
//!
//! With several queues (VIRTIO_BLK_F_MQ; one per vCPU unless the disk
//! says `queues=N`), Linux submits on the queue of the CPU it runs on
//! and hears back on that queue's own MSI-X vector, which it binds to
//! that CPU. Each queue is served on a thread of its own (a lane, in
//! VirtioDevice's terms) through the one Disk, which takes `&self`: a
//! raw image is one file descriptor whose preadv and pwritev need no
//! lock; a qcow2 image serializes requests on vm-img's own locks. A
//! flush syncs the file, which covers what any queue wrote before: the
//! driver flushes only after the writes it cares about completed.

use std::io;
use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use vm_memory::{Bytes, GuestAddress};

use super::buffers::{self, gather, iovecs, scatter, split_at, total, Buf, Dir};
use super::{Chain, VirtioDevice};
use crate::disk::{Disk, MAX_QUEUES};
use crate::memory::GuestMemory;
use crate::snapshot::stream::{Dec, Enc, StreamError, Tag};

pub const SECTOR: u64 = 512;
pub const QUEUE_SIZE: u16 = 256;
/// Segments a discard or write-zeroes request may carry.
const MAX_RANGES: u32 = 32;
/// Sectors one discard or write-zeroes range may cover (2 GiB - 512).
const MAX_RANGE_SECTORS: u32 = u32::MAX >> 10;
const HEADER_LEN: u64 = 16;
const RANGE_LEN: u64 = 16;
const WRITE_ZEROES_UNMAP: u32 = 1;
const CONFIG_LEN: usize = 60;
/// A read or write this large is completed to the driver at once, not
/// with the rest of the queue (VirtioDevice::signal_now): copying it
/// takes long next to an interrupt, and the guest queues its next request
/// meanwhile. 1 MiB requests at queue depth 4 ran 10-25% faster that way
/// in the test host (raw and qcow2); 4k ones still share an interrupt.
const SIGNAL_NOW_LEN: u64 = 64 << 10;

/// A request's buffers, split by direction.
struct Request {
    readable: Vec<Buf>,
    writable: Vec<Buf>,
}

#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// VIRTIO_BLK_S_IOERR: the request is malformed or the host failed.
    Io,
    /// VIRTIO_BLK_S_UNSUPP.
    Unsupported,
}

pub struct Block {
    disk: Arc<dyn Disk>,
    /// The request queues' sizes, one a queue.
    queues: Vec<u16>,
    name: String,
    read_only: bool,
    serial: Vec<u8>,
    config: Vec<u8>,
    capacity: u64,
    /// The last host error reported, so a failing disk does not flood
    /// stderr with one line per request.
    last_error: Option<io::ErrorKind>,
    /// The data length of the last read or write served.
    last_len: u64,
}

impl Block {
    /// A disk with `queues` request queues (1 to MAX_QUEUES; more or
    /// fewer are taken as the nearest), read-only to the guest if
    /// `read_only`; its ID is `serial` or else the image's file name.
    pub fn new(disk: Box<dyn Disk>, read_only: bool, serial: Option<String>, queues: u16) -> Self {
        let queues = queues.clamp(1, MAX_QUEUES);
        let capacity = disk.size() / SECTOR;
        let serial = serial
            .unwrap_or_else(|| {
                let name = disk.path().file_name().unwrap_or_default();
                name.to_string_lossy().chars().take(20).collect()
            })
            .into_bytes();
        let mut c = vec![0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&capacity.to_le_bytes());
        // seg_max: a chain also holds the header and the status.
        c[12..16].copy_from_slice(&(u32::from(QUEUE_SIZE) - 2).to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        // Topology: 4 KiB physical blocks (2^3 sectors), as files and
        // modern disks have them, so the guest aligns its writes.
        c[24] = 3;
        c[26..28].copy_from_slice(&8u16.to_le_bytes());
        c[36..40].copy_from_slice(&MAX_RANGE_SECTORS.to_le_bytes());
        c[40..44].copy_from_slice(&MAX_RANGES.to_le_bytes());
        c[34..36].copy_from_slice(&queues.to_le_bytes());
        c[44..48].copy_from_slice(&8u32.to_le_bytes());
        c[48..52].copy_from_slice(&MAX_RANGE_SECTORS.to_le_bytes());
        c[52..56].copy_from_slice(&MAX_RANGES.to_le_bytes());
        c[56] = 1; // write zeroes may unmap
        Block {
            name: format!("virtio-blk {}", disk.path().display()),
            disk: Arc::from(disk),
            queues: vec![QUEUE_SIZE; usize::from(queues)],
            read_only,
            serial,
            config: c,
            capacity,
            last_error: None,
            last_len: 0,
        }
    }

    fn request(&mut self, req: &Request, mem: &GuestMemory) -> (Result<u32, Failure>, Buf) {
        self.last_len = 0;
        // The status is the last byte the driver lets us write.
        let (data_in, status) = match split_last_byte(&req.writable) {
            Some(x) => x,
            None => return (Err(Failure::Io), Buf { addr: 0, len: 0 }),
        };
        (self.execute(req, &data_in, mem), status)
    }

    fn execute(
        &mut self,
        req: &Request,
        data_in: &[Buf],
        mem: &GuestMemory,
    ) -> Result<u32, Failure> {
        let (header, data_out) = split_at(&req.readable, HEADER_LEN).ok_or(Failure::Io)?;
        let mut h = [0u8; HEADER_LEN as usize];
        gather(mem, &header, &mut h).ok_or(Failure::Io)?;
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let sector = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        match kind {
            VIRTIO_BLK_T_IN => {
                let len = total(data_in);
                let offset = self.range(sector, len)?;
                self.last_len = len;
                let iovs = iovecs(mem, data_in, Dir::IntoGuest).ok_or(Failure::Io)?;
                let r = self.disk.read_at(offset, &iovs);
                self.host(r, "read")?;
                u32::try_from(len).map_err(|_| Failure::Io)
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return Err(Failure::Io);
                }
                let len = total(&data_out);
                let offset = self.range(sector, len)?;
                self.last_len = len;
                let iovs = iovecs(mem, &data_out, Dir::FromGuest).ok_or(Failure::Io)?;
                let r = self.disk.write_at(offset, &iovs);
                self.host(r, "write").map(|_| 0)
            }
            VIRTIO_BLK_T_FLUSH => {
                let r = self.disk.flush();
                self.host(r, "flush").map(|_| 0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let n = self.serial.len().min(VIRTIO_BLK_ID_BYTES as usize);
                let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
                id[..n].copy_from_slice(&self.serial[..n]);
                let room = total(data_in).min(id.len() as u64) as usize;
                scatter(mem, data_in, &id[..room]).ok_or(Failure::Io)?;
                Ok(room as u32)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                if self.read_only {
                    return Err(Failure::Io);
                }
                let len = total(&data_out);
                if len == 0
                    || !len.is_multiple_of(RANGE_LEN)
                    || len / RANGE_LEN > u64::from(MAX_RANGES)
                {
                    return Err(Failure::Io);
                }
                let mut raw = vec![0u8; len as usize];
                gather(mem, &data_out, &mut raw).ok_or(Failure::Io)?;
                let mut ranges = Vec::new();
                for r in raw.chunks_exact(RANGE_LEN as usize) {
                    let start = u64::from_le_bytes(r[0..8].try_into().unwrap_or_default());
                    let count = u32::from_le_bytes(r[8..12].try_into().unwrap_or_default());
                    let flags = u32::from_le_bytes(r[12..16].try_into().unwrap_or_default());
                    let allowed = if kind == VIRTIO_BLK_T_DISCARD {
                        0
                    } else {
                        WRITE_ZEROES_UNMAP
                    };
                    if flags & !allowed != 0 {
                        return Err(Failure::Unsupported);
                    }
                    if count > MAX_RANGE_SECTORS {
                        return Err(Failure::Io);
                    }
                    let bytes = u64::from(count) * SECTOR;
                    ranges.push((
                        self.range(start, bytes)?,
                        bytes,
                        flags & WRITE_ZEROES_UNMAP != 0,
                    ));
                }
                for (offset, bytes, unmap) in ranges {
                    let r = if kind == VIRTIO_BLK_T_DISCARD {
                        self.disk.discard(offset, bytes)
                    } else {
                        self.disk.write_zeroes(offset, bytes, unmap)
                    };
                    self.host(r, "discard")?;
                }
                Ok(0)
            }
            _ => Err(Failure::Unsupported),
        }
    }

    /// How many request queues the disk in a stream's PCIX record had:
    /// the record holds the count when it is more than one, and there is
    /// no record at all for a disk with one, as in every stream before
    /// multiqueue. The receiver builds the disk with as many, before it
    /// restores its transport's state.
    pub fn saved_queues(state: Option<&[u8]>) -> Result<u16, StreamError> {
        let Some(state) = state else { return Ok(1) };
        let mut d = Dec::new(Tag::PciDevices, state);
        let n = d.u16()?;
        d.end()?;
        if !(2..=MAX_QUEUES).contains(&n) {
            return Err(d.bad(format!("virtio-blk: {n} queues")));
        }
        Ok(n)
    }

    fn queue_count(&self) -> u16 {
        self.queues.len() as u16
    }

    /// The byte offset of `len` bytes at `sector`, if they are whole
    /// sectors within the disk.
    fn range(&self, sector: u64, len: u64) -> Result<u64, Failure> {
        let end = sector.checked_add(len / SECTOR).ok_or(Failure::Io)?;
        if !len.is_multiple_of(SECTOR) || end > self.capacity {
            return Err(Failure::Io);
        }
        Ok(sector * SECTOR)
    }

    /// A host error fails the request; say so once per kind of error.
    fn host(&mut self, r: io::Result<()>, what: &str) -> Result<(), Failure> {
        match r {
            Ok(()) => Ok(()),
            Err(e) => {
                if self.last_error != Some(e.kind()) {
                    self.last_error = Some(e.kind());
                    crate::ratelimit::warn(format_args!(
                        "{}: {what}: {e}",
                        self.disk.path().display()
                    ));
                }
                Err(Failure::Io)
            }
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn features(&self) -> u64 {
        let mut f = 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_TOPOLOGY
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
        if self.queues.len() > 1 {
            f |= 1 << VIRTIO_BLK_F_MQ;
        }
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queues
    }

    fn signal_now(&self) -> bool {
        self.last_len >= SIGNAL_NOW_LEN
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn lane(&self) -> Option<Box<dyn VirtioDevice>> {
        Some(Box::new(Block {
            disk: self.disk.clone(),
            queues: self.queues.clone(),
            name: self.name.clone(),
            read_only: self.read_only,
            serial: self.serial.clone(),
            config: self.config.clone(),
            capacity: self.capacity,
            last_error: None,
            last_len: 0,
        }))
    }

    /// The queue count, when there is more than one (Block::saved_queues):
    /// a disk with one keeps no state, as before multiqueue.
    fn save(&self, e: &mut Enc) {
        if self.queue_count() > 1 {
            e.u16(self.queue_count());
        }
    }

    fn restore(&mut self, d: &mut Dec) -> Result<(), StreamError> {
        let n = if d.is_empty() { 1 } else { d.u16()? };
        if n != self.queue_count() {
            return Err(d.bad(format!(
                "{}: {n} queues in the stream, {} here",
                self.name,
                self.queue_count()
            )));
        }
        Ok(())
    }

    fn handle(&mut self, _queue: usize, chain: Chain<'_>, mem: &GuestMemory) -> u32 {
        let Some(req) = split(chain) else {
            return 0;
        };
        let (result, status) = self.request(&req, mem);
        if status.len == 0 {
            return 0;
        }
        let (code, written) = match result {
            Ok(n) => (VIRTIO_BLK_S_OK, n),
            Err(Failure::Io) => (VIRTIO_BLK_S_IOERR, 0),
            Err(Failure::Unsupported) => (VIRTIO_BLK_S_UNSUPP, 0),
        };
        match mem.write_obj(code as u8, GuestAddress(status.addr)) {
            Ok(()) => written + 1,
            Err(_) => 0,
        }
    }
}

/// Splits a chain into its readable and writable buffers.
fn split(chain: Chain<'_>) -> Option<Request> {
    let (readable, writable) = buffers::split(chain)?;
    Some(Request { readable, writable })
}

fn split_last_byte(bufs: &[Buf]) -> Option<(Vec<Buf>, Buf)> {
    let n = total(bufs).checked_sub(1)?;
    let (data, last) = split_at(bufs, n)?;
    let last = *last.first()?;
    Some((
        data,
        Buf {
            addr: last.addr,
            len: 1,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{self, DiskSpec};
    use std::path::PathBuf;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestMemoryMmap;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;
    const MEM: u64 = 16 << 20;

    struct Rig {
        mem: crate::memory::GuestMemory,
        dev: Block,
        dir: PathBuf,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A 1 MiB image whose sector n is filled with byte n.
    fn rig(name: &str, read_only: bool) -> Rig {
        rig_with(name, read_only, 1)
    }

    fn rig_with(name: &str, read_only: bool, queues: u16) -> Rig {
        let dir = std::env::temp_dir().join(format!("vm-run-blk-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        let image: Vec<u8> = (0..2048u32).flat_map(|s| [s as u8; 512]).collect();
        std::fs::write(&path, image).unwrap();
        let spec = DiskSpec {
            path,
            format: None,
            read_only,
            serial: Some("serial-0".into()),
            queues: None,
        };
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let dev = Block::new(disk::open(&spec).unwrap(), read_only, spec.serial, queues);
        Rig { mem, dev, dir }
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    impl Rig {
        fn header(&self, kind: u32, sector: u64) {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
            self.mem.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
        }

        /// Runs one chain made of `descs` (linked in order); returns the
        /// used length and the status byte.
        fn run(&mut self, descs: &[RawDescriptor]) -> (u32, u8) {
            let q = MockSplitQueue::new(&self.mem, 16);
            let chain = q.build_desc_chain(descs).unwrap();
            let len = self.dev.handle(0, chain, &self.mem);
            (len, self.mem.read_obj(GuestAddress(STATUS)).unwrap())
        }

        fn read_request(&mut self, sector: u64, len: u32) -> (u32, u8) {
            self.header(VIRTIO_BLK_T_IN, sector);
            self.run(&[desc(HDR, 16, 0), desc(DATA, len, W), desc(STATUS, 1, W)])
        }
    }

    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

    #[test]
    fn reads_and_writes_reach_the_image() {
        let mut r = rig("rw", false);
        assert_eq!(r.read_request(3, 1024), (1025, OK));
        let mut got = vec![0u8; 1024];
        r.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert!(got[..512].iter().all(|b| *b == 3) && got[512..].iter().all(|b| *b == 4));

        r.mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        r.header(VIRTIO_BLK_T_OUT, 7);
        assert_eq!(
            r.run(&[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)]),
            (1, OK)
        );
        let image = std::fs::read(r.dir.join("disk.img")).unwrap();
        assert!(image[7 * 512..8 * 512].iter().all(|b| *b == 0x5a));
        assert!(image[8 * 512..9 * 512].iter().all(|b| *b == 8));

        r.header(VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(r.run(&[desc(HDR, 16, 0), desc(STATUS, 1, W)]), (1, OK));
        r.header(VIRTIO_BLK_T_GET_ID, 0);
        assert_eq!(
            r.run(&[desc(HDR, 16, 0), desc(DATA, 20, W), desc(STATUS, 1, W)]),
            (21, OK)
        );
        let mut id = [0u8; 8];
        r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"serial-0");
    }

    #[test]
    fn large_requests_are_signalled_at_once_small_ones_with_the_rest() {
        let mut r = rig("signal", false);
        assert_eq!(r.read_request(0, 4096).1, OK);
        assert!(!r.dev.signal_now(), "4 KiB read");
        assert_eq!(r.read_request(0, 64 << 10).1, OK);
        assert!(r.dev.signal_now(), "64 KiB read");
        r.header(VIRTIO_BLK_T_OUT, 0);
        let (_, st) = r.run(&[
            desc(HDR, 16, 0),
            desc(DATA, 128 << 10, 0),
            desc(STATUS, 1, W),
        ]);
        assert_eq!(st, OK);
        assert!(r.dev.signal_now(), "128 KiB write");
        r.header(VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(r.run(&[desc(HDR, 16, 0), desc(STATUS, 1, W)]).1, OK);
        assert!(!r.dev.signal_now(), "flush");
        // A failed request is no long one either.
        assert_eq!(r.read_request(4096, 64 << 10).1, IOERR);
        assert!(!r.dev.signal_now(), "read past the end");
    }

    #[test]
    fn any_layout_header_and_status_share_buffers() {
        // Header and data in one readable buffer, data and status in one
        // writable buffer: VIRTIO_F_ANY_LAYOUT (implied by version 1).
        let mut r = rig("layout", false);
        r.header(VIRTIO_BLK_T_IN, 5);
        let (len, _) = r.run(&[desc(HDR, 16, 0), desc(DATA, 513, W)]);
        assert_eq!(len, 513);
        let mut got = vec![0u8; 513];
        r.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert!(got[..512].iter().all(|b| *b == 5));
        assert_eq!(got[512], OK);
    }

    #[test]
    fn discard_and_write_zeroes_read_back_zeroes() {
        let mut r = rig("discard", false);
        for (kind, flags) in [(VIRTIO_BLK_T_DISCARD, 0u32), (VIRTIO_BLK_T_WRITE_ZEROES, 1)] {
            let mut seg = [0u8; 16];
            seg[0..8].copy_from_slice(&8u64.to_le_bytes());
            seg[8..12].copy_from_slice(&16u32.to_le_bytes());
            seg[12..16].copy_from_slice(&flags.to_le_bytes());
            r.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
            r.header(kind, 0);
            assert_eq!(
                r.run(&[desc(HDR, 16, 0), desc(DATA, 16, 0), desc(STATUS, 1, W)]),
                (1, OK)
            );
        }
        let image = std::fs::read(r.dir.join("disk.img")).unwrap();
        assert_eq!(image.len(), 1 << 20, "size kept");
        assert!(image[8 * 512..24 * 512].iter().all(|b| *b == 0));
        assert!(image[24 * 512..25 * 512].iter().all(|b| *b == 24));
        // Discard takes no flags.
        let mut seg = [0u8; 16];
        seg[12] = 1;
        r.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
        r.header(VIRTIO_BLK_T_DISCARD, 0);
        assert_eq!(
            r.run(&[desc(HDR, 16, 0), desc(DATA, 16, 0), desc(STATUS, 1, W)])
                .1,
            UNSUPP
        );
    }

    #[test]
    fn a_read_only_disk_refuses_writes() {
        let mut r = rig("ro", true);
        assert_ne!(r.dev.features() & 1 << VIRTIO_BLK_F_RO, 0);
        r.header(VIRTIO_BLK_T_OUT, 0);
        assert_eq!(
            r.run(&[desc(HDR, 16, 0), desc(DATA, 512, 0), desc(STATUS, 1, W)]),
            (1, IOERR)
        );
        let image = std::fs::read(r.dir.join("disk.img")).unwrap();
        assert!(image[..512].iter().all(|b| *b == 0));
        assert_eq!(r.read_request(1, 512), (513, OK));
    }

    #[test]
    fn malicious_requests_fail_cleanly() {
        let mut r = rig("evil", false);
        // Past the end, at the end, absurd sectors, partial sectors.
        assert_eq!(r.read_request(2048, 512).1, IOERR);
        assert_eq!(r.read_request(2047, 1024).1, IOERR);
        assert_eq!(r.read_request(u64::MAX, 512).1, IOERR);
        assert_eq!(r.read_request(u64::MAX / 512, 512).1, IOERR);
        assert_eq!(r.read_request(0, 100).1, IOERR);
        assert_eq!(r.read_request(2047, 512), (513, OK));
        // Data outside guest memory, or across its end.
        r.header(VIRTIO_BLK_T_IN, 0);
        for addr in [MEM, MEM - 256, u64::MAX - 100] {
            assert_eq!(
                r.run(&[desc(HDR, 16, 0), desc(addr, 512, W), desc(STATUS, 1, W)])
                    .1,
                IOERR
            );
        }
        // A header that is short or outside memory.
        assert_eq!(
            r.run(&[desc(HDR, 8, 0), desc(DATA, 512, W), desc(STATUS, 1, W)])
                .1,
            IOERR
        );
        assert_eq!(
            r.run(&[desc(MEM + 4096, 16, 0), desc(STATUS, 1, W)]).1,
            IOERR
        );
        // Unknown request types.
        r.header(0x7777, 0);
        assert_eq!(r.run(&[desc(HDR, 16, 0), desc(STATUS, 1, W)]), (1, UNSUPP));
        // No room for a status: nothing is written, nothing used.
        r.header(VIRTIO_BLK_T_IN, 0);
        assert_eq!(r.run(&[desc(HDR, 16, 0)]), (0, 0xaa));
        // A status outside memory.
        assert_eq!(r.run(&[desc(HDR, 16, 0), desc(MEM, 1, W)]).0, 0);
        // A readable buffer after a writable one.
        assert_eq!(
            r.run(&[
                desc(HDR, 16, 0),
                desc(DATA, 512, W),
                desc(DATA, 512, 0),
                desc(STATUS, 1, W)
            ]),
            (0, 0xaa)
        );
        // A 4 GiB write to a small image: refused before any I/O.
        r.header(VIRTIO_BLK_T_OUT, 0);
        let huge: Vec<_> = (0..4)
            .map(|_| desc(DATA, (u32::MAX / 4) & !511, 0))
            .collect();
        let mut chain = vec![desc(HDR, 16, 0)];
        chain.extend(huge);
        chain.push(desc(STATUS, 1, W));
        assert_eq!(r.run(&chain), (1, IOERR));
        // Discard ranges: too many, not whole, past the end.
        r.header(VIRTIO_BLK_T_DISCARD, 0);
        let n = (MAX_RANGES + 1) * 16;
        assert_eq!(
            r.run(&[desc(HDR, 16, 0), desc(DATA, n, 0), desc(STATUS, 1, W)])
                .1,
            IOERR
        );
        assert_eq!(
            r.run(&[desc(HDR, 16, 0), desc(DATA, 15, 0), desc(STATUS, 1, W)])
                .1,
            IOERR
        );
        let mut seg = [0u8; 16];
        seg[0..8].copy_from_slice(&2040u64.to_le_bytes());
        seg[8..12].copy_from_slice(&16u32.to_le_bytes());
        r.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
        assert_eq!(
            r.run(&[desc(HDR, 16, 0), desc(DATA, 16, 0), desc(STATUS, 1, W)])
                .1,
            IOERR
        );
    }

    #[test]
    fn one_queue_is_offered_as_before_multiqueue() {
        let r = rig("one", false);
        assert_eq!(r.dev.features() & 1 << VIRTIO_BLK_F_MQ, 0);
        assert_eq!(r.dev.queue_max_sizes(), &[QUEUE_SIZE]);
        let mut e = Enc::default();
        r.dev.save(&mut e);
        assert!(e.0.is_empty(), "no PCIX record, as in older streams");
    }

    #[test]
    fn several_queues_are_offered_each_with_its_own_lane() {
        let mut r = rig_with("mq", false, 2);
        assert_ne!(r.dev.features() & 1 << VIRTIO_BLK_F_MQ, 0);
        assert_eq!(r.dev.config()[34..36], 2u16.to_le_bytes(), "num_queues");
        assert_eq!(r.dev.queue_max_sizes().len(), 2);
        assert_eq!(
            Block::new(Box::new(Nothing), false, None, 0).queue_count(),
            1
        );
        assert_eq!(
            Block::new(Box::new(Nothing), false, None, 999).queue_count(),
            MAX_QUEUES
        );
        // The device and a lane write at once, each its own sectors, each
        // from its own queue's rings and buffers, on threads of their own.
        let mut lane = r.dev.lane().expect("a lane");
        let write = |dev: &mut dyn VirtioDevice, mem: &GuestMemory, queue: usize, at: u64| {
            let (hdr, data, status) = (at + 0x1000, at + 0x2000, at + 0x3000);
            let fill = 0x40 + queue as u8;
            for sector in (queue as u64..512).step_by(2) {
                let mut h = [0u8; 16];
                h[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
                h[8..16].copy_from_slice(&sector.to_le_bytes());
                mem.write_slice(&h, GuestAddress(hdr)).unwrap();
                mem.write_slice(&[fill; 512], GuestAddress(data)).unwrap();
                let descs = [desc(hdr, 16, 0), desc(data, 512, 0), desc(status, 1, W)];
                let q = MockSplitQueue::create(mem, GuestAddress(at), 16);
                let chain = q.build_desc_chain(&descs).unwrap();
                assert_eq!(dev.handle(queue, chain, mem), 1);
                assert_eq!(mem.read_obj::<u8>(GuestAddress(status)).unwrap(), OK);
            }
        };
        let mem = &r.mem;
        std::thread::scope(|s| {
            s.spawn(|| write(lane.as_mut(), mem, 1, 0x40_0000));
            write(&mut r.dev, mem, 0, 0x50_0000);
        });
        // A flush on either queue covers both queues' writes.
        r.header(VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(r.run(&[desc(HDR, 16, 0), desc(STATUS, 1, W)]), (1, OK));
        let image = std::fs::read(r.dir.join("disk.img")).unwrap();
        for (n, sector) in image[..512 * 512].chunks(512).enumerate() {
            let want = 0x40 + (n % 2) as u8;
            assert!(sector.iter().all(|b| *b == want), "sector {n}");
        }
        let rest = image[512 * 512..].chunks(512).enumerate();
        assert!(rest.fold(true, |ok, (i, s)| ok
            && s.iter().all(|b| *b == (512 + i) as u8)));
    }

    #[test]
    fn the_queue_count_round_trips_through_a_snapshot() {
        let r = rig_with("save", false, 3);
        let mut e = Enc::default();
        r.dev.save(&mut e);
        // The receiver builds the disk from the record, then restores it.
        let n = Block::saved_queues(Some(&e.0)).unwrap();
        assert_eq!(n, 3);
        let mut copy = Block::new(Box::new(Nothing), false, None, n);
        let mut d = Dec::new(Tag::PciDevices, &e.0);
        copy.restore(&mut d).unwrap();
        d.end().unwrap();
        assert_eq!(copy.queue_max_sizes(), r.dev.queue_max_sizes());
        // A disk built otherwise refuses the stream.
        let mut other = Block::new(Box::new(Nothing), false, None, 2);
        assert!(other.restore(&mut Dec::new(Tag::PciDevices, &e.0)).is_err());
        // No record (every older stream): one queue; and it restores so.
        assert_eq!(Block::saved_queues(None).unwrap(), 1);
        assert!(other.restore(&mut Dec::new(Tag::PciDevices, &[])).is_err());
        let mut one = Block::new(Box::new(Nothing), false, None, 1);
        one.restore(&mut Dec::new(Tag::PciDevices, &[])).unwrap();
        // Records no vm-run writes.
        for bad in [&[][..], &[1, 0], &[0, 0], &[17, 0], &[2, 0, 0], &[2]] {
            assert!(Block::saved_queues(Some(bad)).is_err(), "{bad:?}");
        }
    }

    /// An empty disk, for devices that serve no request.
    struct Nothing;

    impl Disk for Nothing {
        fn path(&self) -> &std::path::Path {
            std::path::Path::new("nothing")
        }
        fn size(&self) -> u64 {
            0
        }
        fn read_at(&self, _: u64, _: &[crate::disk::IoVec]) -> io::Result<()> {
            Ok(())
        }
        fn write_at(&self, _: u64, _: &[crate::disk::IoVec]) -> io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn discard(&self, _: u64, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn descriptor_loops_end() {
        // A chain whose last descriptor points back at the first: the
        // chain iterator stops after the queue size, the request fails.
        let mut r = rig("loop", false);
        r.header(VIRTIO_BLK_T_IN, 0);
        let q = MockSplitQueue::new(&r.mem, 4);
        let next = VRING_DESC_F_NEXT as u16;
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, next, 1)),
            RawDescriptor::from(SplitDescriptor::new(DATA, 512, W | next, 2)),
            RawDescriptor::from(SplitDescriptor::new(STATUS, 1, W | next, 0)),
        ];
        let chain = q.build_multiple_desc_chains(&descs).unwrap();
        let len = r.dev.handle(0, chain, &r.mem);
        // Readable after writable once it wraps: refused without a status.
        assert_eq!(len, 0);
    }
}
