//! virtio-scsi with one target and one LUN, a CD-ROM (scsi/cdrom.rs):
//! `-r file.iso`. vmd gives its guests a CD-ROM the same way, and both
//! SeaBIOS and Linux drive virtio-scsi, so neither needs IDE emulated.
//!
//! Queue 0 is the control queue (task management and asynchronous
//! notification requests, answered at once: no command is ever in
//! flight), 1 the event queue (no events: its buffers stay with the
//! device), 2 the one request queue. A request is a header with the LUN
//! and the CDB in driver-readable buffers (then data-out, ignored: no
//! command takes any), a response header of `sense_size` bytes' room in
//! driver-writable ones, then data-in. Whatever the guest puts in a
//! chain, it gets a response, or a chain too short to carry one is
//! returned unused; reads go from the image straight into guest memory.

use std::io;
use std::path::Path;

use virtio_bindings::virtio_ids::VIRTIO_ID_SCSI;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_bindings::virtio_scsi::*;

use super::buffers::{gather, iovecs, scatter_all, split, split_at, total, Buf, Dir};
use super::{drain_queue, ActiveQueue, Chain, VirtioDevice};
use crate::disk::{self, Disk, DiskSpec, Format};
use crate::error::{Error, Result};
use crate::memory::GuestMemory;
use crate::scsi::cdrom::{CdRom, Reply, SECTOR};
use crate::scsi::sense::Sense;
use crate::snapshot::stream::{Dec, Enc, StreamError};

pub const CONTROL_QUEUE: usize = 0;
pub const EVENT_QUEUE: usize = 1;
pub const REQUEST_QUEUE: usize = 2;
/// SeaBIOS's rings hold at most 128 entries.
pub const QUEUE_SIZE: u16 = 128;

/// The sizes the configuration announces; drivers may write others,
/// which this device does not take (the configuration is read-only), so
/// these are what every request carries.
const CDB_SIZE: usize = VIRTIO_SCSI_CDB_DEFAULT_SIZE as usize;
const SENSE_SIZE: usize = VIRTIO_SCSI_SENSE_DEFAULT_SIZE as usize;
/// lun[8], tag, task attribute, priority, CRN, then the CDB.
const REQ_LEN: u64 = 8 + 8 + 3 + CDB_SIZE as u64;
/// sense_len, resid, status qualifier, status, response, then the sense.
const RESP_LEN: u64 = 4 + 4 + 2 + 1 + 1 + SENSE_SIZE as u64;
/// Task management: type, subtype, lun[8], id; the answer is one byte.
const TMF_LEN: u64 = 4 + 4 + 8 + 8;
/// Asynchronous notification query or subscription: type, lun[8], the
/// events asked for; the answer: events given, response.
const AN_LEN: u64 = 4 + 8 + 4;
const AN_RESP_LEN: u64 = 4 + 1;
const CONFIG_LEN: usize = 36;
/// SCSI status codes.
const GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;
/// As virtio-blk does (block.rs): a long read is completed at once.
const SIGNAL_NOW_LEN: u64 = 64 << 10;
/// A task management function done (the spec's value; the bindings
/// lack it).
const VIRTIO_SCSI_S_FUNCTION_COMPLETE: u32 = 0;

pub struct Scsi {
    disk: Box<dyn Disk>,
    cd: CdRom,
    name: String,
    config: Vec<u8>,
    /// The last host error reported, so that a failing image does not
    /// flood stderr.
    last_error: Option<io::ErrorKind>,
    /// The data length of the last read served.
    last_len: u64,
}

/// The virtio-scsi answer to one request, before it is written.
struct Response {
    response: u8,
    status: u8,
    sense: Option<Sense>,
    /// Bytes of data-in written.
    written: u64,
}

impl Response {
    fn transport(response: u32) -> Self {
        Response {
            response: response as u8,
            status: GOOD,
            sense: None,
            written: 0,
        }
    }
}

impl Scsi {
    /// Opens `path` read-only (a shared lock, so guests may share an
    /// ISO) as raw, whatever its first bytes say.
    pub fn open(path: &Path) -> Result<Self> {
        let spec = DiskSpec {
            path: path.to_path_buf(),
            format: Some(Format::Raw),
            read_only: true,
            serial: None,
            queues: None,
        };
        let disk = disk::open(&spec)?;
        if disk.size() < SECTOR {
            return Err(Error::Format(
                path.to_path_buf(),
                "not a CD image: smaller than one 2048-byte sector".into(),
            ));
        }
        Ok(Scsi::new(disk))
    }

    pub fn new(disk: Box<dyn Disk>) -> Self {
        let mut c = vec![0u8; CONFIG_LEN];
        let mut put = |at: usize, v: u32| c[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put(0, 1); // num_queues: request queues
        put(4, u32::from(QUEUE_SIZE) - 2); // seg_max: room for both headers
        put(8, 0xffff); // max_sectors
        put(12, u32::from(QUEUE_SIZE)); // cmd_per_lun
        put(16, 0); // event_info_size: no events
        put(20, SENSE_SIZE as u32);
        put(24, CDB_SIZE as u32);
        // max_channel, max_target and max_lun are 0: one of each.
        Scsi {
            cd: CdRom::new(disk.size()),
            name: format!("virtio-scsi {}", disk.path().display()),
            disk,
            config: c,
            last_error: None,
            last_len: 0,
        }
    }

    fn request(&mut self, readable: &[Buf], data_in: &[Buf], mem: &GuestMemory) -> Response {
        self.last_len = 0;
        let mut req = [0u8; REQ_LEN as usize];
        let header = split_at(readable, REQ_LEN).map(|(h, _)| h);
        if header.and_then(|h| gather(mem, &h, &mut req)).is_none() {
            return Response::transport(VIRTIO_SCSI_S_FAILURE);
        }
        if !is_our_lun(&req[0..8]) {
            return Response::transport(VIRTIO_SCSI_S_BAD_TARGET);
        }
        let room = total(data_in);
        let mut r = Response::transport(VIRTIO_SCSI_S_OK);
        let check = |r: &mut Response, s: Sense| {
            r.status = CHECK_CONDITION;
            r.sense = Some(s);
        };
        match self.cd.command(&req[19..]) {
            Reply::Data(d) => {
                let n = d.len().min(usize::try_from(room).unwrap_or(usize::MAX));
                if scatter_all(mem, data_in, &d[..n]).is_none() {
                    return Response::transport(VIRTIO_SCSI_S_FAILURE);
                }
                r.written = n as u64;
            }
            // The initiator asked for more than it gave room for.
            Reply::Read { len, .. } if len > room => {
                return Response::transport(VIRTIO_SCSI_S_OVERRUN)
            }
            Reply::Read { offset, len } => {
                let Some(iovs) =
                    split_at(data_in, len).and_then(|(b, _)| iovecs(mem, &b, Dir::IntoGuest))
                else {
                    return Response::transport(VIRTIO_SCSI_S_FAILURE);
                };
                self.last_len = len;
                match self.disk.read_at(offset, &iovs) {
                    Ok(()) => r.written = len,
                    Err(e) => {
                        if self.last_error != Some(e.kind()) {
                            self.last_error = Some(e.kind());
                            eprintln!("vm-run: {}: read: {e}", self.disk.path().display());
                        }
                        check(&mut r, Sense::READ_ERROR);
                    }
                }
            }
            Reply::Check(s) => check(&mut r, s),
        }
        r
    }

    /// Task management and notification requests: `None` if the chain
    /// is too short for the request or its answer.
    fn control(&mut self, readable: &[Buf], writable: &[Buf], mem: &GuestMemory) -> Option<u32> {
        let mut kind = [0u8; 4];
        gather(mem, &split_at(readable, 4)?.0, &mut kind)?;
        match u32::from_le_bytes(kind) {
            VIRTIO_SCSI_T_TMF => {
                let mut req = [0u8; TMF_LEN as usize];
                gather(mem, &split_at(readable, TMF_LEN)?.0, &mut req)?;
                split_at(writable, 1)?;
                let subtype = u32::from_le_bytes([req[4], req[5], req[6], req[7]]);
                // Every command completes before the next is read: there
                // is never a task to abort or to find.
                let response = if !is_our_lun(&req[8..16]) {
                    VIRTIO_SCSI_S_BAD_TARGET
                } else {
                    match subtype {
                        VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET
                        | VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET => {
                            self.cd.reset();
                            VIRTIO_SCSI_S_FUNCTION_COMPLETE
                        }
                        VIRTIO_SCSI_T_TMF_ABORT_TASK
                        | VIRTIO_SCSI_T_TMF_ABORT_TASK_SET
                        | VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET
                        | VIRTIO_SCSI_T_TMF_QUERY_TASK
                        | VIRTIO_SCSI_T_TMF_QUERY_TASK_SET => VIRTIO_SCSI_S_FUNCTION_COMPLETE,
                        // No ACA, and nothing else.
                        _ => VIRTIO_SCSI_S_FUNCTION_REJECTED,
                    }
                };
                scatter_all(mem, writable, &[response as u8])?;
                Some(1)
            }
            VIRTIO_SCSI_T_AN_QUERY | VIRTIO_SCSI_T_AN_SUBSCRIBE => {
                let mut req = [0u8; AN_LEN as usize];
                gather(mem, &split_at(readable, AN_LEN)?.0, &mut req)?;
                split_at(writable, AN_RESP_LEN)?;
                let response = if is_our_lun(&req[4..12]) {
                    VIRTIO_SCSI_S_OK
                } else {
                    VIRTIO_SCSI_S_BAD_TARGET
                };
                // No event class is supported: event_actual is 0.
                scatter_all(mem, writable, &[0, 0, 0, 0, response as u8])?;
                Some(AN_RESP_LEN as u32)
            }
            _ => None,
        }
    }
}

/// Target 0, LUN 0, in the single-level format both SeaBIOS and Linux
/// send: 1, the target, the LUN with flat (0x40) or peripheral (0x00)
/// addressing, and zeroes.
fn is_our_lun(lun: &[u8]) -> bool {
    lun[0] == 1 && lun[1] == 0 && matches!(lun[2], 0x00 | 0x40) && lun[3..8] == [0; 5]
}

impl VirtioDevice for Scsi {
    /// The drive's state (the transport saves the queues).
    fn save(&self, e: &mut Enc) {
        self.cd.save(e);
    }

    fn restore(&mut self, d: &mut Dec) -> std::result::Result<(), StreamError> {
        self.cd.restore(d)
    }

    fn device_type(&self) -> u32 {
        VIRTIO_ID_SCSI
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_RING_F_INDIRECT_DESC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn signal_now(&self) -> bool {
        self.last_len >= SIGNAL_NOW_LEN
    }

    fn handle(&mut self, queue: usize, chain: Chain<'_>, mem: &GuestMemory) -> u32 {
        let Some((readable, writable)) = split(chain) else {
            return 0;
        };
        if queue == CONTROL_QUEUE {
            return self.control(&readable, &writable, mem).unwrap_or(0);
        }
        if queue != REQUEST_QUEUE {
            return 0;
        }
        let Some((resp, data_in)) = split_at(&writable, RESP_LEN) else {
            return 0;
        };
        let r = self.request(&readable, &data_in, mem);
        let mut head = [0u8; RESP_LEN as usize];
        if let Some(s) = r.sense {
            let fixed = s.fixed();
            head[0..4].copy_from_slice(&(fixed.len() as u32).to_le_bytes());
            head[12..12 + fixed.len()].copy_from_slice(&fixed);
        }
        // resid: the data-in room left unwritten.
        let resid = total(&data_in).saturating_sub(r.written);
        head[4..8].copy_from_slice(&(resid.min(u32::MAX.into()) as u32).to_le_bytes());
        head[10] = r.status;
        head[11] = r.response;
        match scatter_all(mem, &resp, &head) {
            Some(()) => (RESP_LEN + r.written).min(u32::MAX.into()) as u32,
            None => 0,
        }
    }

    /// Event buffers wait for an event that never comes: serving them
    /// would hand them back as "no event", which the driver answers by
    /// queueing them again, for ever.
    fn serve(
        &mut self,
        kicked: Option<usize>,
        queues: &mut [ActiveQueue],
        mem: &GuestMemory,
    ) -> std::result::Result<u64, (usize, virtio_queue::Error)> {
        let Some(q) = queues
            .iter_mut()
            .find(|q| Some(q.index) == kicked && q.index != EVENT_QUEUE)
        else {
            return Ok(0);
        };
        match drain_queue(self, q, mem) {
            Ok(used) => Ok(u64::from(used) << q.index),
            Err(e) => Err((q.index, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::path::PathBuf;
    use std::sync::Arc;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::GuestMemoryMmap;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const REQ: u64 = 0x10_0000;
    const RESP: u64 = 0x20_0000;
    const DATA: u64 = 0x30_0000;
    const MEM: u64 = 16 << 20;
    /// Sectors of the test image; sector n is filled with byte n.
    const SECTORS: u64 = 64;

    struct Rig {
        mem: GuestMemory,
        dev: Scsi,
        dir: PathBuf,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn tmpdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vm-run-scsi-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn rig(name: &str) -> Rig {
        let dir = tmpdir(name);
        let path = dir.join("cd.iso");
        let image: Vec<u8> = (0..SECTORS).flat_map(|s| [s as u8; 2048]).collect();
        std::fs::write(&path, image).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        Rig {
            mem,
            dev: Scsi::open(&path).unwrap(),
            dir,
        }
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// What the driver reads back of a response header.
    #[derive(Debug)]
    struct Resp {
        sense_len: u32,
        resid: u32,
        status: u8,
        response: u8,
        sense: [u8; 18],
    }

    impl Rig {
        /// A request header for `lun` with `cdb`; the response area
        /// is filled with 0xaa first, so that what is written shows.
        fn header(&self, lun: [u8; 8], cdb: &[u8]) {
            let mut h = [0u8; REQ_LEN as usize];
            h[0..8].copy_from_slice(&lun);
            h[19..19 + cdb.len()].copy_from_slice(cdb);
            self.mem.write_slice(&h, GuestAddress(REQ)).unwrap();
            self.mem
                .write_slice(&[0xaa; RESP_LEN as usize], GuestAddress(RESP))
                .unwrap();
        }

        fn run(&mut self, queue: usize, descs: &[RawDescriptor]) -> u32 {
            let q = MockSplitQueue::new(&self.mem, 16);
            let chain = q.build_desc_chain(descs).unwrap();
            self.dev.handle(queue, chain, &self.mem)
        }

        fn resp(&self) -> Resp {
            let mut h = [0u8; RESP_LEN as usize];
            self.mem.read_slice(&mut h, GuestAddress(RESP)).unwrap();
            let mut sense = [0u8; 18];
            sense.copy_from_slice(&h[12..30]);
            Resp {
                sense_len: u32::from_le_bytes(h[0..4].try_into().unwrap()),
                resid: u32::from_le_bytes(h[4..8].try_into().unwrap()),
                status: h[10],
                response: h[11],
                sense,
            }
        }

        /// One command to LUN 0 with `room` bytes of data-in.
        fn command(&mut self, cdb: &[u8], room: u32) -> (u32, Resp) {
            self.header(LUN0, cdb);
            let mut d = vec![desc(REQ, REQ_LEN as u32, 0), desc(RESP, RESP_LEN as u32, W)];
            if room > 0 {
                d.push(desc(DATA, room, W));
            }
            let len = self.run(REQUEST_QUEUE, &d);
            (len, self.resp())
        }

        fn data(&self, n: usize) -> Vec<u8> {
            let mut v = vec![0u8; n];
            self.mem.read_slice(&mut v, GuestAddress(DATA)).unwrap();
            v
        }
    }

    const LUN0: [u8; 8] = [1, 0, 0x40, 0, 0, 0, 0, 0];
    const OK: u8 = VIRTIO_SCSI_S_OK as u8;

    fn read10(lba: u32, count: u16) -> Vec<u8> {
        let mut c = vec![0x28, 0];
        c.extend_from_slice(&lba.to_be_bytes());
        c.push(0);
        c.extend_from_slice(&count.to_be_bytes());
        c.push(0);
        c
    }

    #[test]
    fn reads_reach_guest_memory() {
        let mut r = rig("read");
        let (len, resp) = r.command(&read10(3, 2), 4096);
        assert_eq!((resp.response, resp.status, resp.resid), (OK, GOOD, 0));
        assert_eq!(len, RESP_LEN as u32 + 4096);
        let got = r.data(4096);
        assert!(got[..2048].iter().all(|b| *b == 3) && got[2048..].iter().all(|b| *b == 4));
        assert!(!r.dev.signal_now());
        let (_, resp) = r.command(&read10(0, 32), 64 << 10);
        assert_eq!(resp.status, GOOD);
        assert!(r.dev.signal_now(), "64 KiB read");
        // A read split over descriptors, header and response shared
        // with data buffers (any layout).
        r.header(LUN0, &read10(7, 1));
        r.mem.write_slice(&[0u8; 4096], GuestAddress(DATA)).unwrap();
        let len = r.run(
            REQUEST_QUEUE,
            &[
                desc(REQ, 10, 0),
                desc(REQ + 10, REQ_LEN as u32 - 10, 0),
                desc(RESP, 100, W),
                desc(RESP + 100, 8 + 1000, W),
                desc(DATA + 2000, 1048, W),
            ],
        );
        assert_eq!(len, RESP_LEN as u32 + 2048);
        let resp = r.resp();
        assert_eq!((resp.response, resp.status), (OK, GOOD));
        let mut first = vec![0u8; 1000];
        r.mem
            .read_slice(&mut first, GuestAddress(RESP + RESP_LEN))
            .unwrap();
        assert!(first.iter().all(|b| *b == 7));
        assert!(r.data(2000 + 1048)[2000..].iter().all(|b| *b == 7));
    }

    #[test]
    fn small_answers_are_cut_and_resid_says_by_how_much() {
        let mut r = rig("inquiry");
        let (len, resp) = r.command(&[0x12, 0, 0, 0, 96, 0], 200);
        assert_eq!((resp.response, resp.status), (OK, GOOD));
        assert_eq!((len, resp.resid), (RESP_LEN as u32 + 36, 200 - 36));
        let inq = r.data(36);
        assert_eq!((inq[0], &inq[8..16]), (5, &b"VM-TOOLS"[..]));
        // Less room than the allocation length: what fits.
        let (len, resp) = r.command(&[0x12, 0, 0, 0, 96, 0], 10);
        assert_eq!(
            (len, resp.resid, resp.status),
            (RESP_LEN as u32 + 10, 0, GOOD)
        );
        // READ CAPACITY: 63 and 2048.
        let (_, resp) = r.command(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
        assert_eq!(resp.status, GOOD);
        assert_eq!(r.data(8), [0, 0, 0, 63, 0, 0, 8, 0]);
        // No data at all.
        let (len, resp) = r.command(&[0; 6], 0);
        assert_eq!(
            (len, resp.status, resp.sense_len),
            (RESP_LEN as u32, GOOD, 0)
        );
    }

    #[test]
    fn failures_carry_sense() {
        let mut r = rig("sense");
        let (len, resp) = r.command(&read10(SECTORS as u32, 1), 2048);
        assert_eq!((resp.response, resp.status), (OK, CHECK_CONDITION));
        assert_eq!(len, RESP_LEN as u32);
        assert_eq!((resp.sense_len, resp.resid), (18, 2048));
        assert_eq!(
            (resp.sense[0], resp.sense[2], resp.sense[12]),
            (0x70, 5, 0x21)
        );
        // Then REQUEST SENSE tells it again.
        let (_, resp) = r.command(&[0x03, 0, 0, 0, 18, 0], 18);
        assert_eq!(resp.status, GOOD);
        assert_eq!(r.data(18)[12], 0x21);
        // WRITE(10): not a command of this drive.
        let (_, resp) = r.command(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], 0);
        assert_eq!(
            (resp.status, resp.sense[2], resp.sense[12]),
            (CHECK_CONDITION, 5, 0x20)
        );
    }

    #[test]
    fn other_targets_and_luns_are_bad_targets() {
        let mut r = rig("luns");
        for lun in [
            [1, 1, 0x40, 0, 0, 0, 0, 0],
            [1, 0, 0x40, 1, 0, 0, 0, 0],
            [1, 0, 0x41, 0, 0, 0, 0, 0],
            [0, 0, 0x40, 0, 0, 0, 0, 0],
            [2, 0, 0x40, 0, 0, 0, 0, 0],
            [1, 0, 0x40, 0, 0, 0, 0, 1],
            [1, 255, 0x40, 0, 0, 0, 0, 0],
        ] {
            r.header(lun, &[0x12, 0, 0, 0, 36, 0]);
            let len = r.run(
                REQUEST_QUEUE,
                &[
                    desc(REQ, REQ_LEN as u32, 0),
                    desc(RESP, RESP_LEN as u32, W),
                    desc(DATA, 36, W),
                ],
            );
            let resp = r.resp();
            assert_eq!(len, RESP_LEN as u32, "{lun:?}");
            assert_eq!(resp.response, VIRTIO_SCSI_S_BAD_TARGET as u8, "{lun:?}");
            assert_eq!(resp.resid, 36);
        }
        // Peripheral addressing of LUN 0 is LUN 0 too.
        r.header([1, 0, 0, 0, 0, 0, 0, 0], &[0; 6]);
        r.run(
            REQUEST_QUEUE,
            &[desc(REQ, REQ_LEN as u32, 0), desc(RESP, RESP_LEN as u32, W)],
        );
        assert_eq!(r.resp().response, OK);
    }

    #[test]
    fn malformed_chains_fail_cleanly() {
        let mut r = rig("evil");
        // A short header: FAILURE.
        r.header(LUN0, &[0; 6]);
        r.run(
            REQUEST_QUEUE,
            &[desc(REQ, 20, 0), desc(RESP, RESP_LEN as u32, W)],
        );
        assert_eq!(r.resp().response, VIRTIO_SCSI_S_FAILURE as u8);
        // A header outside memory.
        r.run(
            REQUEST_QUEUE,
            &[
                desc(MEM - 8, REQ_LEN as u32, 0),
                desc(RESP, RESP_LEN as u32, W),
            ],
        );
        assert_eq!(r.resp().response, VIRTIO_SCSI_S_FAILURE as u8);
        // No room for a whole response: nothing written, nothing used.
        r.header(LUN0, &[0; 6]);
        assert_eq!(
            r.run(
                REQUEST_QUEUE,
                &[desc(REQ, REQ_LEN as u32, 0), desc(RESP, 107, W)]
            ),
            0
        );
        assert_eq!(r.resp().response, 0xaa);
        assert_eq!(r.run(REQUEST_QUEUE, &[desc(REQ, REQ_LEN as u32, 0)]), 0);
        // A response outside memory.
        assert_eq!(
            r.run(
                REQUEST_QUEUE,
                &[
                    desc(REQ, REQ_LEN as u32, 0),
                    desc(MEM - 50, RESP_LEN as u32, W)
                ]
            ),
            0
        );
        // Readable after writable.
        assert_eq!(
            r.run(
                REQUEST_QUEUE,
                &[
                    desc(REQ, REQ_LEN as u32, 0),
                    desc(RESP, RESP_LEN as u32, W),
                    desc(DATA, 4, 0)
                ]
            ),
            0
        );
        // A read larger than the room given: OVERRUN, nothing read.
        r.mem
            .write_slice(&[0xee; 4096], GuestAddress(DATA))
            .unwrap();
        let (_, resp) = r.command(&read10(1, 2), 4095);
        assert_eq!(resp.response, VIRTIO_SCSI_S_OVERRUN as u8);
        assert!(r.data(4096).iter().all(|b| *b == 0xee));
        // Data-in outside memory, or across its end.
        for addr in [MEM, MEM - 1024, u64::MAX - 100] {
            r.header(LUN0, &read10(1, 1));
            r.run(
                REQUEST_QUEUE,
                &[
                    desc(REQ, REQ_LEN as u32, 0),
                    desc(RESP, RESP_LEN as u32, W),
                    desc(addr, 2048, W),
                ],
            );
            assert_eq!(r.resp().response, VIRTIO_SCSI_S_FAILURE as u8, "{addr:#x}");
        }
        // A 4 GiB data-in area for a small INQUIRY: no allocation sized
        // by it, and a read of 4 GiB is out of range before any I/O.
        let huge: Vec<_> = (0..4).map(|_| desc(DATA, u32::MAX / 4, W)).collect();
        let mut chain = vec![desc(REQ, REQ_LEN as u32, 0), desc(RESP, RESP_LEN as u32, W)];
        chain.extend(huge);
        r.header(LUN0, &[0x12, 0, 0, 0xff, 0xff, 0]);
        r.run(REQUEST_QUEUE, &chain);
        assert_eq!(r.resp().status, GOOD);
        let mut c12 = vec![0xa8, 0, 0, 0, 0, 0];
        c12.extend_from_slice(&0x0020_0000u32.to_be_bytes());
        c12.extend_from_slice(&[0, 0]);
        r.header(LUN0, &c12);
        r.run(REQUEST_QUEUE, &chain);
        assert_eq!(
            (r.resp().status, r.resp().sense[12]),
            (CHECK_CONDITION, 0x21)
        );
        // The event queue serves nothing.
        assert_eq!(r.run(EVENT_QUEUE, &[desc(DATA, 16, W)]), 0);
    }

    #[test]
    fn descriptor_loops_end() {
        // A chain whose last descriptor points back at the first: the
        // walk stops after the queue size, and a readable descriptor
        // after writable ones makes it no request at all.
        let mut r = rig("loop");
        r.header(LUN0, &read10(0, 1));
        let q = MockSplitQueue::new(&r.mem, 4);
        let next = VRING_DESC_F_NEXT as u16;
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(REQ, REQ_LEN as u32, next, 1)),
            RawDescriptor::from(SplitDescriptor::new(RESP, RESP_LEN as u32, W | next, 2)),
            RawDescriptor::from(SplitDescriptor::new(DATA, 2048, W | next, 0)),
        ];
        let chain = q.build_multiple_desc_chains(&descs).unwrap();
        assert_eq!(r.dev.handle(REQUEST_QUEUE, chain, &r.mem), 0);
        assert_eq!(r.resp().response, 0xaa, "nothing written");
    }

    /// A control request of `req` bytes; returns the used length and the
    /// answer's first `n` bytes.
    fn control(r: &mut Rig, req: &[u8], n: u32) -> (u32, Vec<u8>) {
        r.mem.write_slice(req, GuestAddress(REQ)).unwrap();
        r.mem.write_slice(&[0xaa; 8], GuestAddress(RESP)).unwrap();
        let len = r.run(
            CONTROL_QUEUE,
            &[desc(REQ, req.len() as u32, 0), desc(RESP, n, W)],
        );
        let mut out = vec![0u8; n as usize];
        r.mem.read_slice(&mut out, GuestAddress(RESP)).unwrap();
        (len, out)
    }

    fn tmf(subtype: u32, lun: [u8; 8]) -> Vec<u8> {
        let mut t = VIRTIO_SCSI_T_TMF.to_le_bytes().to_vec();
        t.extend_from_slice(&subtype.to_le_bytes());
        t.extend_from_slice(&lun);
        t.extend_from_slice(&7u64.to_le_bytes());
        t
    }

    #[test]
    fn task_management_and_notifications_are_answered() {
        let mut r = rig("ctrl");
        let complete = VIRTIO_SCSI_S_FUNCTION_COMPLETE as u8;
        assert_eq!(
            control(&mut r, &tmf(VIRTIO_SCSI_T_TMF_ABORT_TASK, LUN0), 1),
            (1, vec![complete])
        );
        // A reset unlocks the tray.
        r.command(&[0x1e, 0, 0, 0, 1, 0], 0);
        let (_, resp) = r.command(&[0x1b, 0, 0, 0, 2, 0], 0);
        assert_eq!(resp.status, CHECK_CONDITION);
        assert_eq!(
            control(&mut r, &tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, LUN0), 1).1,
            [complete]
        );
        let (_, resp) = r.command(&[0x1b, 0, 0, 0, 2, 0], 0);
        assert_eq!(resp.status, GOOD);
        assert_eq!(
            control(&mut r, &tmf(VIRTIO_SCSI_T_TMF_CLEAR_ACA, LUN0), 1).1,
            [VIRTIO_SCSI_S_FUNCTION_REJECTED as u8]
        );
        assert_eq!(
            control(&mut r, &tmf(99, LUN0), 1).1,
            [VIRTIO_SCSI_S_FUNCTION_REJECTED as u8]
        );
        assert_eq!(
            control(
                &mut r,
                &tmf(VIRTIO_SCSI_T_TMF_ABORT_TASK, [1, 3, 0x40, 0, 0, 0, 0, 0]),
                1
            )
            .1,
            [VIRTIO_SCSI_S_BAD_TARGET as u8]
        );
        // Notifications: none supported.
        let mut an = VIRTIO_SCSI_T_AN_QUERY.to_le_bytes().to_vec();
        an.extend_from_slice(&LUN0);
        an.extend_from_slice(&0x10u32.to_le_bytes());
        assert_eq!(control(&mut r, &an, 5), (5, vec![0, 0, 0, 0, OK]));
        // Too short, or of no known type: returned unused.
        assert_eq!(control(&mut r, &tmf(0, LUN0)[..20], 1).0, 0);
        assert_eq!(control(&mut r, &an, 4).0, 0);
        assert_eq!(control(&mut r, &[9, 0, 0, 0], 8), (0, vec![0xaa; 8]));
        assert_eq!(control(&mut r, &[0, 0], 8).0, 0);
    }

    #[test]
    fn the_event_queue_keeps_its_buffers() {
        let mut r = rig("events");
        let mock = MockSplitQueue::new(&r.mem, 16);
        mock.add_desc_chains(&[desc(DATA, 16, W)], 0).unwrap();
        let queue: Queue = mock.create_queue().unwrap();
        let kick = Arc::new(EventFd::new(0).unwrap());
        let mut qs = [ActiveQueue::new(EVENT_QUEUE, queue, kick, 0)];
        assert_eq!(
            r.dev.serve(Some(EVENT_QUEUE), &mut qs, &r.mem).ok(),
            Some(0)
        );
        assert_eq!(qs[0].queue.next_avail(), 0, "no buffer taken");
    }

    #[test]
    fn an_iso_opens_read_only_and_shared_and_tiny_files_are_refused() {
        let dir = tmpdir("open");
        let iso = dir.join("a.iso");
        std::fs::write(&iso, vec![0u8; 4096]).unwrap();
        let a = Scsi::open(&iso).unwrap();
        let _b = Scsi::open(&iso).unwrap();
        assert_eq!(a.cd.sectors(), 2);
        // A disk that wants to write it must wait.
        let rw = DiskSpec {
            path: iso.clone(),
            format: None,
            read_only: false,
            serial: None,
            queues: None,
        };
        assert!(matches!(disk::open(&rw), Err(Error::Locked(_))));
        let tiny = dir.join("tiny.iso");
        std::fs::write(&tiny, vec![0u8; 2047]).unwrap();
        match Scsi::open(&tiny) {
            Err(e @ Error::Format(..)) => assert_eq!(e.exit_status(), 65),
            other => panic!("{:?}", other.err()),
        }
        assert!(matches!(
            Scsi::open(&dir.join("none.iso")),
            Err(Error::Open(..))
        ));
        // A qcow2 header is just bytes on a CD.
        std::fs::write(&iso, b"QFI\xfb\0\0\0\x03".repeat(512)).unwrap();
        drop((a, _b));
        assert_eq!(Scsi::open(&iso).unwrap().cd.sectors(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn state_round_trips() {
        let mut r = rig("state");
        r.command(&[0x1e, 0, 0, 0, 1, 0], 0);
        r.command(&[0x99; 6], 0);
        let mut e = Enc::default();
        r.dev.save(&mut e);
        let mut other = rig("state2");
        let mut d = Dec::new(crate::snapshot::stream::Tag::Devices, &e.0);
        other.dev.restore(&mut d).unwrap();
        d.end().unwrap();
        assert_eq!(other.dev.cd, r.dev.cd);
        let (_, resp) = other.command(&[0x03, 0, 0, 0, 18, 0], 18);
        assert_eq!(resp.status, GOOD);
        assert_eq!(other.data(18)[12], 0x20, "the pending sense came along");
    }
}
