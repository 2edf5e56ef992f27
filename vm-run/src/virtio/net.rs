//! virtio-net over a tap: one receive and one transmit queue, the 12-byte
//! vnet header passed through to the tap (which speaks the same header),
//! checksum and TSO offloads in both directions, mergeable receive
//! buffers.
//!
//! Frames move between the tap and guest pages with readv/writev on the
//! descriptors themselves: no copy but the kernel's. A frame for the guest
//! is read into as many receive chains as it may need (a 64 KiB TSO frame
//! needs many small mergeable buffers); the chains it did not fill are
//! handed back to the ring as if never taken. When the guest has no
//! buffers left the tap is not read (it keeps or drops frames itself)
//! until the guest kicks the receive queue.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _};

use super::buffers::{iovec, Dir};
use super::{ActiveQueue, Chain, VirtioDevice};
use crate::disk::IoVec;
use crate::memory::GuestMemory;
use crate::nic::dhcp::{self, Lease};
use crate::nic::tap::{self, Tap};

pub const QUEUE_SIZE: u16 = 256;
pub const RX: usize = 0;
pub const TX: usize = 1;
/// struct virtio_net_hdr_v1: what a VERSION_1 driver always uses.
pub const HDR_LEN: usize = 12;
/// Where num_buffers sits in it.
const NUM_BUFFERS: usize = 10;
/// The largest frame with TSO: 64 KiB of IP packet and an Ethernet
/// header with a VLAN tag.
const MAX_FRAME: usize = 65535 + 14 + 4;
/// The largest frame without: 1500 bytes of payload, tagged.
const SMALL_FRAME: usize = 1500 + 14 + 4;
/// Frames taken from the tap in one go before the kicks are looked at,
/// so that a flood in one direction does not stall the other.
const RX_BATCH: usize = 256;
/// DHCP replies waiting for receive buffers; the client retries anyway.
const MAX_REPLIES: usize = 4;
const CONFIG_LEN: usize = 8;

/// What the device offers besides the transport's features.
const FEATURES: u64 = 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_ECN
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_HOST_ECN
    | 1 << VIRTIO_NET_F_MRG_RXBUF
    | 1 << VIRTIO_NET_F_STATUS
    // Linux then puts a TSO frame (its header and up to 17 page
    // fragments) in one slot of the transmit ring instead of one slot a
    // buffer, so the ring holds 256 frames in flight, not about 14, and
    // the driver stops its queue to wait for completions far less often.
    // QEMU offers it too. virtio-queue walks the tables, checked.
    | 1 << VIRTIO_RING_F_INDIRECT_DESC;

/// Where the frames of the guest go and come from: the tap, or in unit
/// tests and fuzzing, anything that reads and writes frames.
pub trait Backend: Send + AsRawFd {
    fn readv(&mut self, iov: &[IoVec]) -> io::Result<usize>;
    fn writev(&mut self, iov: &[IoVec]) -> io::Result<usize>;
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
}

impl Backend for Tap {
    fn readv(&mut self, iov: &[IoVec]) -> io::Result<usize> {
        Tap::readv(self, iov)
    }
    fn writev(&mut self, iov: &[IoVec]) -> io::Result<usize> {
        Tap::writev(self, iov)
    }
    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        Tap::set_offload(self, flags)
    }
}

pub struct Net {
    backend: Box<dyn Backend>,
    name: String,
    mac: [u8; 6],
    config: [u8; CONFIG_LEN],
    features: u64,
    dhcp: Option<Lease>,
    replies: VecDeque<Vec<u8>>,
    /// The guest gave no room for the next frame: the tap waits for its
    /// kick on the receive queue.
    starved: bool,
    /// The last host error, so a broken tap does not flood stderr.
    last_error: Option<io::ErrorKind>,
    /// The MAC the NIC takes once replugged (a received clone's).
    next_mac: Option<[u8; 6]>,
}

impl Net {
    pub fn new(backend: Box<dyn Backend>, name: String, mac: [u8; 6], dhcp: Option<Lease>) -> Self {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        Net {
            backend,
            name,
            mac,
            config,
            features: 0,
            dhcp,
            replies: VecDeque::new(),
            starved: false,
            last_error: None,
            next_mac: None,
        }
    }

    /// The MAC to take when the guest has unplugged the NIC and it is
    /// plugged back (pci/hotplug.rs).
    pub fn renew_mac(mut self, mac: Option<[u8; 6]>) -> Self {
        self.next_mac = mac;
        self
    }

    fn has(&self, feature: u32) -> bool {
        self.features & 1 << feature != 0
    }

    fn report(&mut self, what: &str, e: &io::Error) {
        if self.last_error != Some(e.kind()) {
            crate::ratelimit::warn(format_args!("{}: {what}: {e}", self.name));
            self.last_error = Some(e.kind());
        }
    }

    /// How much room a frame from the tap may need.
    fn rx_room(&self) -> usize {
        let tso = self.has(VIRTIO_NET_F_GUEST_TSO4) || self.has(VIRTIO_NET_F_GUEST_TSO6);
        HDR_LEN + if tso { MAX_FRAME } else { SMALL_FRAME }
    }

    /// Fills receive buffers from the DHCP replies, then the tap, until
    /// either runs dry or the guest has no room; true if any was used.
    fn receive(&mut self, q: &mut Queue, mem: &GuestMemory) -> Result<bool, virtio_queue::Error> {
        let mut used = false;
        let mut frames = 0;
        while frames < RX_BATCH {
            frames += 1;
            let reply = self.replies.pop_front();
            let need = reply.as_ref().map_or(self.rx_room(), |r| HDR_LEN + r.len());
            q.disable_notification(mem)?;
            let bufs = match self.take_buffers(q, mem, need)? {
                Take::Got(bufs) => bufs,
                Take::Short { seen } => {
                    if let Some(r) = reply {
                        self.replies.push_front(r);
                    }
                    if self.await_buffers(q, mem, seen)? {
                        continue;
                    }
                    self.starved = true;
                    return Ok(used);
                }
            };
            let iov = bufs.iovecs(mem);
            let got = match reply {
                Some(r) => write_frame(mem, &bufs.iov, &r),
                None => match self.backend.readv(&iov) {
                    Ok(n) => n,
                    Err(e) => {
                        q.set_next_avail(bufs.start);
                        if e.kind() != io::ErrorKind::WouldBlock
                            && e.kind() != io::ErrorKind::Interrupted
                        {
                            self.report("read", &e);
                        }
                        return Ok(used);
                    }
                },
            };
            let got = got.min(bufs.room());
            if got < HDR_LEN {
                // Not a frame: nothing for the guest.
                q.set_next_avail(bufs.start);
                continue;
            }
            bufs.complete(q, mem, got)?;
            used = true;
        }
        Ok(used)
    }

    /// Takes chains off the receive ring until they hold `need` bytes
    /// (one chain without mergeable buffers); when there are not enough,
    /// leaves the ring as it was and says how far it looked.
    fn take_buffers(
        &self,
        q: &mut Queue,
        mem: &GuestMemory,
        need: usize,
    ) -> Result<Take, virtio_queue::Error> {
        let merge = self.has(VIRTIO_NET_F_MRG_RXBUF);
        let start = q.next_avail();
        let mut bufs = RxBuffers {
            start,
            chains: Vec::new(),
            iov: Vec::new(),
        };
        let mut room = 0usize;
        loop {
            let next = q.iter(mem)?.next();
            let Some(chain) = next else {
                // The iterator stops at the available index it read, so
                // every chain before it was looked at.
                let seen = q.next_avail();
                q.set_next_avail(bufs.start);
                return Ok(Take::Short { seen });
            };
            let head = chain.head_index();
            let first = bufs.iov.len();
            let mut chain_room = 0usize;
            let mut bad = false;
            for d in chain {
                if !d.is_write_only() || bufs.iov.len() == tap::IOV_MAX {
                    bad |= !d.is_write_only();
                    break;
                }
                let len = d.len() as usize;
                if len == 0 {
                    continue;
                }
                if mem.get_slice(d.addr(), len).is_err() {
                    bad = true;
                    break;
                }
                bufs.iov.push((d.addr().0, len));
                chain_room += len;
            }
            // The header must fit in a chain's first buffers, and a chain
            // the device cannot write is given back empty: a broken
            // driver's problem, never the device's.
            if bad || chain_room < HDR_LEN {
                bufs.iov.truncate(first);
                if bufs.chains.is_empty() {
                    q.add_used(mem, head, 0)?;
                    bufs.start = q.next_avail();
                    continue;
                }
                break;
            }
            bufs.chains.push((head, first, chain_room));
            room += chain_room;
            if !merge || room >= need {
                return Ok(Take::Got(bufs));
            }
        }
        // A bad chain cut the gathering short: the frame waits for the
        // driver to post more (it only harms its own traffic).
        q.set_next_avail(bufs.start);
        let seen = q.avail_idx(mem, Ordering::Acquire)?.0;
        Ok(Take::Short { seen })
    }

    /// The guest gave too little room: asks for a kick when the driver
    /// adds buffers beyond `seen`, the available index take_buffers
    /// looked up to; true if it has added some already, and the ring
    /// should be looked at again.
    ///
    /// The index must be the one looked at, not one read now: buffers the
    /// driver adds in between would then lie below the event index, and
    /// the driver, which kicks only when its index passes the event index
    /// (EVENT_IDX), would not kick for them. It adds more only once it
    /// has received something, so neither side would move again (issue
    /// 19.11a: seen in the test host as a starved device with the whole
    /// ring refilled below its event index). Nor may it be the chains
    /// given back (next_avail): the driver has passed that index already
    /// and would never kick.
    fn await_buffers(
        &self,
        q: &mut Queue,
        mem: &GuestMemory,
        seen: u16,
    ) -> Result<bool, virtio_queue::Error> {
        let back = q.next_avail();
        q.set_next_avail(seen);
        // Writes the event index (or clears NO_NOTIFY), fences, and
        // compares the available index with `seen`.
        let more = q.enable_notification(mem);
        q.set_next_avail(back);
        more
    }

    /// One frame from the guest, to the tap (or the DHCP responder).
    fn transmit(&mut self, chain: Chain<'_>, mem: &GuestMemory) {
        let mut iov = Vec::new();
        let mut total = 0usize;
        for d in chain {
            if d.is_write_only() {
                continue;
            }
            let len = d.len() as usize;
            total = total.saturating_add(len);
            if total > HDR_LEN + MAX_FRAME || iov.len() == tap::IOV_MAX {
                return; // Dropped, as a NIC drops a frame it cannot send.
            }
            if len == 0 {
                continue;
            }
            let Some(v) = iovec(mem, d.addr(), len, Dir::FromGuest) else {
                return;
            };
            iov.push(v);
        }
        if total < HDR_LEN {
            return;
        }
        if let Some(lease) = self.dhcp.clone() {
            let mut head = [0u8; dhcp::PEEK_LEN];
            if read_iov(&iov, HDR_LEN, &mut head) == head.len() && dhcp::is_dhcp(&head) {
                let mut frame = vec![0u8; (total - HDR_LEN).min(dhcp::MAX_FRAME)];
                let n = read_iov(&iov, HDR_LEN, &mut frame);
                if let Some(r) = dhcp::reply(&lease, &frame[..n], self.server_mac()) {
                    if self.replies.len() < MAX_REPLIES {
                        self.replies.push_back(r);
                    }
                }
                return;
            }
        }
        if let Err(e) = self.backend.writev(&iov) {
            self.report("write", &e);
        }
    }

    /// The address DHCP replies come from: the guest's own with the
    /// locally administered bit flipped, so it never equals a guest's.
    fn server_mac(&self) -> [u8; 6] {
        let mut m = self.mac;
        m[5] ^= 0xff;
        m
    }
}

/// What take_buffers found.
enum Take {
    Got(RxBuffers),
    /// Not enough room in the chains up to available index `seen`.
    Short {
        seen: u16,
    },
}

/// Receive chains taken for one frame: (head, first iovec, room) each,
/// and their buffers as guest (address, length).
struct RxBuffers {
    start: u16,
    chains: Vec<(u16, usize, usize)>,
    iov: Vec<(u64, usize)>,
}

impl RxBuffers {
    fn room(&self) -> usize {
        self.chains.iter().map(|c| c.2).sum()
    }

    fn iovecs(&self, mem: &GuestMemory) -> Vec<IoVec> {
        self.iov
            .iter()
            .filter_map(|&(addr, len)| iovec(mem, GuestAddress(addr), len, Dir::IntoGuest))
            .collect()
    }

    /// Hands the driver the chains `got` bytes filled, all at once and
    /// with num_buffers already in the header (virtio 1.x 5.1.6.4: the
    /// driver reads it as soon as it sees the first chain), and puts the
    /// rest back on the ring.
    fn complete(
        &self,
        q: &mut Queue,
        mem: &GuestMemory,
        got: usize,
    ) -> Result<(), virtio_queue::Error> {
        let mut left = got;
        let mut used = Vec::with_capacity(self.chains.len());
        for &(head, _, room) in &self.chains {
            if left == 0 {
                break;
            }
            let n = left.min(room);
            used.push((head, n as u32));
            left -= n;
        }
        // 1 without merging, as the spec wants of VERSION_1 devices.
        let n = (used.len() as u16).to_le_bytes();
        write_frame_at(mem, &self.iov, NUM_BUFFERS, &n);
        super::publish_used(q, mem, &used)?;
        q.set_next_avail(self.start.wrapping_add(used.len() as u16));
        Ok(())
    }
}

/// Copies `frame` behind a zeroed vnet header into guest buffers.
fn write_frame(mem: &GuestMemory, iov: &[(u64, usize)], frame: &[u8]) -> usize {
    let hdr = [0u8; HDR_LEN];
    write_frame_at(mem, iov, 0, &hdr) + write_frame_at(mem, iov, HDR_LEN, frame)
}

/// Writes `data` at byte `offset` of the buffers `iov`; returns how much
/// fitted.
fn write_frame_at(
    mem: &GuestMemory,
    iov: &[(u64, usize)],
    mut offset: usize,
    data: &[u8],
) -> usize {
    let mut done = 0;
    for &(addr, len) in iov {
        if done == data.len() {
            break;
        }
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = (len - offset).min(data.len() - done);
        if mem
            .write_slice(&data[done..done + n], GuestAddress(addr + offset as u64))
            .is_err()
        {
            break;
        }
        done += n;
        offset = 0;
    }
    done
}

/// Copies from byte `offset` of host buffers into `out`; returns how much.
fn read_iov(iov: &[IoVec], mut offset: usize, out: &mut [u8]) -> usize {
    let mut done = 0;
    for v in iov {
        if done == out.len() {
            break;
        }
        if offset >= v.iov_len {
            offset -= v.iov_len;
            continue;
        }
        let n = (v.iov_len - offset).min(out.len() - done);
        // SAFETY: the iovec points into guest memory, mapped for the life
        // of the process, and offset + n stays within it; out is ours.
        // The guest may change the bytes meanwhile: they are only parsed.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (v.iov_base as *const u8).add(offset),
                out[done..].as_mut_ptr(),
                n,
            );
        }
        done += n;
        offset = 0;
    }
    done
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    fn handle(&mut self, queue: usize, chain: Chain<'_>, mem: &GuestMemory) -> u32 {
        if queue == TX {
            self.transmit(chain, mem);
        }
        0
    }

    fn activate(&mut self, features: u64) {
        self.features = features;
        self.starved = false;
        // What the tap may hand us is what the guest takes.
        let mut flags = 0;
        if self.has(VIRTIO_NET_F_GUEST_CSUM) {
            flags |= tap::TUN_F_CSUM;
            if self.has(VIRTIO_NET_F_GUEST_TSO4) {
                flags |= tap::TUN_F_TSO4;
            }
            if self.has(VIRTIO_NET_F_GUEST_TSO6) {
                flags |= tap::TUN_F_TSO6;
            }
            if self.has(VIRTIO_NET_F_GUEST_ECN) {
                flags |= tap::TUN_F_TSO_ECN;
            }
        }
        if let Err(e) = self.backend.set_offload(flags) {
            self.report("TUNSETOFFLOAD", &e);
        }
    }

    fn poll_fd(&self) -> Option<RawFd> {
        (!self.starved).then(|| self.backend.as_raw_fd())
    }

    fn replugged(&mut self) {
        if let Some(mac) = self.next_mac.take() {
            self.mac = mac;
            self.config[..6].copy_from_slice(&mac);
        }
        self.replies.clear();
        self.starved = false;
    }

    fn serve(
        &mut self,
        kicked: Option<usize>,
        queues: &mut [ActiveQueue],
        mem: &GuestMemory,
    ) -> Result<u64, (usize, virtio_queue::Error)> {
        let mut used = 0u64;
        if kicked == Some(TX) {
            if let Some(q) = queues.iter_mut().find(|q| q.index == TX) {
                if super::drain_queue(self, q, mem).map_err(|e| (TX, e))? {
                    used |= 1 << TX;
                }
            }
            if self.replies.is_empty() {
                return Ok(used);
            }
        }
        let Some(q) = queues.iter_mut().find(|q| q.index == RX) else {
            // No receive queue: nothing to read into.
            self.starved = true;
            return Ok(used);
        };
        self.starved = false;
        if self.receive(&mut q.queue, mem).map_err(|e| (RX, e))? {
            used |= 1 << RX;
        }
        Ok(used)
    }
}

/// A stable MAC for NIC `index` of the guest `name`: locally administered
/// (fe:e1:ba, as vmd's), the rest from a hash of both, so a guest keeps
/// its address across runs; random for a guest without a name.
pub fn default_mac(name: Option<&str>, index: usize) -> [u8; 6] {
    let h = match name {
        Some(n) => {
            // FNV-1a: stable across builds and Rust versions, unlike
            // std's hasher.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in n.bytes().chain((index as u32).to_le_bytes()) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            h
        }
        None => {
            let mut b = [0u8; 8];
            // SAFETY: getrandom writes at most 8 bytes into b. The
            // system call, as in rng.rs: musl's wrapper is weak in std.
            unsafe { libc::syscall(libc::SYS_getrandom, b.as_mut_ptr(), b.len(), 0) };
            u64::from_le_bytes(b) ^ index as u64
        }
    };
    let h = h.to_le_bytes();
    [0xfe, 0xe1, 0xba, h[0], h[1], h[2]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::Queue;
    use vm_memory::GuestMemoryMmap;
    use vmm_sys_util::eventfd::EventFd;

    const MEM: usize = 16 << 20;
    const RXQ: u64 = 0x0;
    const TXQ: u64 = 0x10_000;
    const BUFS: u64 = 0x10_0000;
    const SIZE: u16 = 16;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;

    /// A datagram socket pair keeps frame boundaries as a tap does: the
    /// device gets one end, the test plays the host's network on the other.
    struct Wire(OwnedFd);

    impl AsRawFd for Wire {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }

    impl Backend for Wire {
        fn readv(&mut self, iov: &[IoVec]) -> io::Result<usize> {
            // SAFETY: the iovecs point into the test's guest memory.
            let r = unsafe { libc::readv(self.0.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(r as usize)
            }
        }
        fn writev(&mut self, iov: &[IoVec]) -> io::Result<usize> {
            // SAFETY: as above.
            let r = unsafe { libc::writev(self.0.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(r as usize)
            }
        }
        fn set_offload(&mut self, _: u32) -> io::Result<()> {
            Ok(())
        }
    }

    fn wire() -> (Wire, OwnedFd) {
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
        assert_eq!(r, 0);
        // SAFETY: both fds are new and ours.
        unsafe {
            (
                Wire(OwnedFd::from_raw_fd(fds[0])),
                OwnedFd::from_raw_fd(fds[1]),
            )
        }
    }

    fn send(host: &OwnedFd, frame: &[u8]) {
        // SAFETY: frame is a live buffer.
        let r = unsafe { libc::send(host.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(r, frame.len() as isize);
    }

    fn recv(host: &OwnedFd) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70000];
        // SAFETY: buf is a live buffer of that length.
        let r = unsafe { libc::recv(host.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        (r >= 0).then(|| {
            buf.truncate(r as usize);
            buf
        })
    }

    struct Rig {
        mem: &'static crate::memory::GuestMemory,
        net: Net,
        host: OwnedFd,
        queues: Vec<ActiveQueue>,
        /// Next free descriptor per queue.
        next_desc: [u16; 2],
    }

    fn rig(features: u64, lease: Option<Lease>) -> Rig {
        let mem: &'static crate::memory::GuestMemory = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap(),
        ));
        let (w, host) = wire();
        let mac = [0xfe, 0xe1, 0xba, 0xd0, 0, 1];
        let mut net = Net::new(Box::new(w), "virtio-net test".into(), mac, lease);
        net.activate(features);
        let queues = [RXQ, TXQ]
            .iter()
            .enumerate()
            .map(|(index, &base)| {
                let mut q = Queue::new(SIZE).unwrap();
                q.try_set_desc_table_address(GuestAddress(base)).unwrap();
                q.try_set_avail_ring_address(GuestAddress(base + AVAIL))
                    .unwrap();
                q.try_set_used_ring_address(GuestAddress(base + USED))
                    .unwrap();
                q.set_ready(true);
                let kick = std::sync::Arc::new(EventFd::new(0).unwrap());
                ActiveQueue::new(index, q, kick, 0)
            })
            .collect();
        Rig {
            mem,
            net,
            host,
            queues,
            next_desc: [0, 0],
        }
    }

    impl Rig {
        fn base(q: usize) -> u64 {
            [RXQ, TXQ][q]
        }

        /// The driver's side: descriptor `i` of queue `q`.
        fn store_desc(&self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..].copy_from_slice(&next.to_le_bytes());
            let at = Self::base(q) + 16 * u64::from(i % SIZE);
            self.mem.write_slice(&d, GuestAddress(at)).unwrap();
        }

        /// Puts `head` in the available ring and publishes it.
        fn make_available(&self, q: usize, head: u16) {
            let avail = Self::base(q) + AVAIL;
            let idx: u16 = self.mem.read_obj(GuestAddress(avail + 2)).unwrap();
            let slot = avail + 4 + 2 * u64::from(idx % SIZE);
            self.mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.mem
                .write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))
                .unwrap();
        }

        /// Makes one chain of (address, length, device-writable) available.
        fn post(&mut self, q: usize, bufs: &[(u64, u32, bool)]) {
            let first = self.next_desc[q];
            for (i, &(addr, len, w)) in bufs.iter().enumerate() {
                let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < bufs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let i = (first + i as u16) % SIZE;
                self.store_desc(q, i, addr, len, flags, (i + 1) % SIZE);
            }
            self.make_available(q, first);
            self.next_desc[q] = (first + bufs.len() as u16) % SIZE;
        }

        fn serve(&mut self, kicked: Option<usize>) -> u64 {
            let mem: &GuestMemory = self.mem;
            self.net.serve(kicked, &mut self.queues, mem).unwrap()
        }

        /// (head, len) of the used ring's entries.
        fn used(&self, q: usize) -> Vec<(u32, u32)> {
            let used = Self::base(q) + USED;
            let n: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
            (0..u64::from(n))
                .map(|i| {
                    let e = GuestAddress(used + 4 + 8 * (i % u64::from(SIZE)));
                    let id: u32 = self.mem.read_obj(e).unwrap();
                    let len: u32 = self.mem.read_obj(GuestAddress(e.0 + 4)).unwrap();
                    (id, len)
                })
                .collect()
        }

        fn read(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len];
            self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
            v
        }
    }

    const MRG_TSO: u64 =
        1 << VIRTIO_NET_F_MRG_RXBUF | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4;

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        let mut f = vec![0u8; HDR_LEN];
        f.extend((0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed));
        f
    }

    #[test]
    fn transmit_with_and_without_header_split() {
        let mut r = rig(0, None);
        let f = frame(1000, 1);
        r.mem.write_slice(&f, GuestAddress(BUFS)).unwrap();
        // Header apart, then all in one buffer.
        r.post(TX, &[(BUFS, 12, false), (BUFS + 12, 1000, false)]);
        r.post(TX, &[(BUFS, 1012, false)]);
        assert_eq!(r.serve(Some(TX)), 1 << TX);
        assert_eq!(recv(&r.host).unwrap(), f);
        assert_eq!(recv(&r.host).unwrap(), f);
        assert!(recv(&r.host).is_none());
        assert_eq!(r.used(TX), vec![(0, 0), (2, 0)]);
    }

    /// As Linux sends a TSO frame once INDIRECT_DESC is negotiated: one
    /// ring slot, pointing at a table of the header and the fragments.
    #[test]
    fn transmit_from_an_indirect_table() {
        let mut r = rig(1 << VIRTIO_RING_F_INDIRECT_DESC, None);
        assert_ne!(r.net.features() & 1 << VIRTIO_RING_F_INDIRECT_DESC, 0);
        let f = frame(3000, 3);
        r.mem.write_slice(&f, GuestAddress(BUFS)).unwrap();
        let table = BUFS + 0x10_000;
        let pieces = [(BUFS, 12), (BUFS + 12, 1000), (BUFS + 1012, 2000)];
        for (i, &(addr, len)) in pieces.iter().enumerate() {
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&(len as u32).to_le_bytes());
            if i + 1 < pieces.len() {
                d[12..14].copy_from_slice(&(VRING_DESC_F_NEXT as u16).to_le_bytes());
                d[14..].copy_from_slice(&(i as u16 + 1).to_le_bytes());
            }
            r.mem
                .write_slice(&d, GuestAddress(table + 16 * i as u64))
                .unwrap();
        }
        r.store_desc(TX, 0, table, 48, VRING_DESC_F_INDIRECT as u16, 0);
        r.make_available(TX, 0);
        assert_eq!(r.serve(Some(TX)), 1 << TX);
        assert_eq!(recv(&r.host).unwrap(), f);
        assert_eq!(r.used(TX), vec![(0, 0)]);
    }

    #[test]
    fn a_big_frame_spans_mergeable_buffers_and_the_rest_stay_posted() {
        let mut r = rig(MRG_TSO, None);
        for i in 0..12 {
            r.post(RX, &[(BUFS + i * 0x1000, 2048, true)]);
        }
        // 12 x 2 KiB is not room for a 64 KiB TSO frame: nothing is read.
        send(&r.host, &frame(5000, 2));
        assert_eq!(r.serve(None), 0);
        assert_eq!(r.net.poll_fd(), None, "starved: the tap is not polled");
        for i in 12..SIZE as u64 {
            r.post(RX, &[(BUFS + i * 0x4000, 16384, true)]);
        }
        assert_eq!(r.serve(Some(RX)), 1 << RX);
        assert!(r.net.poll_fd().is_some());
        let used = r.used(RX);
        assert_eq!(used, vec![(0, 2048), (1, 2048), (2, 5012 - 4096)]);
        let mut got = r.read(BUFS, 2048);
        got.extend(r.read(BUFS + 0x1000, 2048));
        got.extend(r.read(BUFS + 0x2000, 5012 - 4096));
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
        got[10] = 0;
        assert_eq!(got, frame(5000, 2));
        // The next frame starts at the first chain not used.
        send(&r.host, &frame(100, 3));
        r.serve(None);
        assert_eq!(r.used(RX)[3], (3, 112));
        assert_eq!(r.read(BUFS + 0x3000 + 12, 100), frame(100, 3)[12..]);
    }

    #[test]
    fn the_driver_is_interrupted_when_its_event_index_is_passed() {
        let mut r = rig(1 << VIRTIO_NET_F_MRG_RXBUF, None);
        r.queues[RX].queue.set_event_idx(true);
        let used_event = GuestAddress(RXQ + AVAIL + 4 + 2 * u64::from(SIZE));
        for i in 0..SIZE as u64 {
            r.post(RX, &[(BUFS + i * 0x1000, 512, true)]);
        }
        // A frame over two chains takes the used index from 0 to 2: the
        // driver asked to hear of index 1, in its middle.
        r.mem.write_obj(1u16, used_event).unwrap();
        send(&r.host, &frame(1000, 5));
        assert_eq!(r.serve(None), 1 << RX);
        assert_eq!(r.used(RX).len(), 2);
        assert!(r.queues[RX].needs_interrupt(r.mem));
        // It waits for index 5 now: 2 to 3 does not pass it, 3 to 6 does.
        r.mem.write_obj(5u16, used_event).unwrap();
        send(&r.host, &frame(100, 6));
        r.serve(None);
        assert!(!r.queues[RX].needs_interrupt(r.mem));
        send(&r.host, &frame(1200, 7));
        r.serve(None);
        assert_eq!(r.used(RX).len(), 6);
        assert!(r.queues[RX].needs_interrupt(r.mem));
    }

    /// The driver's rule for kicking after it published avail index
    /// `new` (from `old`), EVENT_IDX: vring_need_event() on the event
    /// index the device wrote behind the used ring.
    fn driver_kicks(r: &Rig, q: usize, old: u16, new: u16) -> bool {
        let at = Rig::base(q) + USED + 4 + 8 * u64::from(SIZE);
        let event: u16 = r.mem.read_obj(GuestAddress(at)).unwrap();
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    #[test]
    fn buffers_posted_while_the_device_looks_are_not_missed() {
        // The device finds too little room; before it asks for a kick,
        // the driver posts enough, looks at the event index and, as it
        // has not moved, does not kick. The device must see them anyway:
        // the driver posts no more until it has received (issue 19.11a).
        let mut r = rig(MRG_TSO, None);
        r.queues[RX].queue.set_event_idx(true);
        r.post(RX, &[(BUFS, 2048, true)]);
        send(&r.host, &frame(3000, 8));
        let mem: &GuestMemory = r.mem;
        let need = r.net.rx_room();
        let q = &mut r.queues[RX].queue;
        let Take::Short { seen } = r.net.take_buffers(q, mem, need).unwrap() else {
            panic!("one 2 KiB buffer is room enough for a TSO frame");
        };
        assert_eq!(seen, 1);
        for i in 1..SIZE as u64 {
            r.post(RX, &[(BUFS + i * 0x4000, 16384, true)]);
        }
        assert!(!driver_kicks(&r, RX, 1, SIZE), "the driver does not kick");
        let q = &mut r.queues[RX].queue;
        assert!(r.net.await_buffers(q, mem, seen).unwrap(), "look again");
        // The whole receive path, from the same state: the frame arrives.
        assert_eq!(r.serve(None), 1 << RX);
        assert_eq!(r.used(RX), vec![(0, 2048), (1, 3012 - 2048)]);
        assert!(r.net.poll_fd().is_some(), "not starved");
    }

    #[test]
    fn a_starved_device_is_kicked_by_the_next_buffers() {
        // Too little room and nothing posted meanwhile: the tap waits, and
        // the event index makes the driver's next post a kick.
        let mut r = rig(MRG_TSO, None);
        r.queues[RX].queue.set_event_idx(true);
        r.post(RX, &[(BUFS, 2048, true)]);
        send(&r.host, &frame(3000, 9));
        assert_eq!(r.serve(None), 0);
        assert_eq!(r.net.poll_fd(), None);
        r.post(RX, &[(BUFS + 0x4000, 16384, true)]);
        assert!(driver_kicks(&r, RX, 1, 2));
        for i in 2..SIZE as u64 {
            r.post(RX, &[(BUFS + i * 0x4000, 16384, true)]);
        }
        assert_eq!(r.serve(Some(RX)), 1 << RX);
        assert_eq!(r.used(RX), vec![(0, 2048), (1, 3012 - 2048)]);
    }

    #[test]
    fn a_replugged_nic_takes_its_next_mac() {
        let mut r = rig(0, None);
        let next = [0xfe, 0xe1, 0xba, 0xd0, 0, 2];
        r.net.replugged();
        assert_eq!(r.net.config()[..6], [0xfe, 0xe1, 0xba, 0xd0, 0, 1]);
        r.net.next_mac = Some(next);
        r.net.replugged();
        assert_eq!(r.net.config()[..6], next);
        assert_eq!(r.net.next_mac, None);
    }

    #[test]
    fn without_merging_one_chain_holds_a_frame() {
        let mut r = rig(0, None);
        r.post(RX, &[(BUFS, 12, true), (BUFS + 0x1000, 1518, true)]);
        send(&r.host, &frame(1500, 4));
        assert_eq!(r.serve(None), 1 << RX);
        assert_eq!(r.used(RX), vec![(0, 1512)]);
        let hdr = r.read(BUFS, 12);
        assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 1);
        assert_eq!(r.read(BUFS + 0x1000, 1500), frame(1500, 4)[12..]);
    }

    #[test]
    fn hostile_chains_neither_crash_nor_hang() {
        let mut r = rig(MRG_TSO, None);
        let outside = MEM as u64 + 0x1000;
        // Receive: a readable buffer, memory that is not there, a buffer
        // too small for the header, a huge length: each given back empty.
        r.post(RX, &[(BUFS, 64, false)]);
        r.post(RX, &[(outside, 4096, true)]);
        r.post(RX, &[(BUFS, 4, true)]);
        r.post(RX, &[(BUFS, u32::MAX, true)]);
        send(&r.host, &frame(60, 5));
        assert_eq!(r.serve(None), 0);
        assert_eq!(r.used(RX), vec![(0, 0), (1, 0), (2, 0), (3, 0)]);
        // Transmit: the same, plus a frame longer than any NIC sends and
        // a chain with no header: nothing reaches the wire.
        r.post(TX, &[(outside, 100, false)]);
        r.post(TX, &[(BUFS, 4, false)]);
        r.post(TX, &[(BUFS, 40000, false), (BUFS, 40000, false)]);
        r.post(TX, &[(BUFS, 64, true)]);
        r.post(TX, &[(BUFS, u32::MAX, false)]);
        assert_eq!(r.serve(Some(TX)), 1 << TX);
        assert!(recv(&r.host).is_none());
        assert_eq!(r.used(TX).len(), 5);
        // A descriptor loop is the ring's error, not a hang.
        r.store_desc(TX, 6, BUFS, 100, VRING_DESC_F_NEXT as u16, 6);
        r.make_available(TX, 6);
        let mem: &GuestMemory = r.mem;
        let _ = r.net.serve(Some(TX), &mut r.queues, mem);
    }

    #[test]
    fn random_rings_do_not_crash_the_device() {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for round in 0..200 {
            let mut r = rig(if round % 2 == 0 { MRG_TSO } else { 0 }, None);
            for q in [RX, TX] {
                for i in 0..SIZE {
                    let v = next();
                    let (addr, len) = (BUFS + (v >> 40) % (MEM as u64), (v >> 8) as u32 % 70000);
                    let next_desc = ((v >> 4) % u64::from(SIZE)) as u16;
                    r.store_desc(q, i, addr, len, (v & 3) as u16, next_desc);
                }
                for _ in 0..next() % 40 {
                    r.make_available(q, (next() % 20) as u16);
                }
            }
            send(&r.host, &frame((next() % 9000) as usize, 6));
            let mem: &GuestMemory = r.mem;
            for k in [Some(TX), None, Some(RX)] {
                let _ = r.net.serve(k, &mut r.queues, mem);
            }
        }
    }

    #[test]
    fn dhcp_is_answered_by_the_device_not_the_wire() {
        use std::net::Ipv4Addr;
        let lease = Lease {
            host: Ipv4Addr::new(100, 64, 0, 2),
            guest: Ipv4Addr::new(100, 64, 0, 3),
            dns: None,
        };
        let mut r = rig(0, Some(lease));
        // A DISCOVER as udhcpc sends it: IPv4, UDP 68 -> 67, BOOTREQUEST.
        let mut f = vec![0u8; HDR_LEN];
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&[0xfe, 0xe1, 0xba, 0xd0, 0, 1, 8, 0]);
        f.extend_from_slice(&[0x45, 0, 1, 0x48, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&[255, 255, 255, 255, 0, 68, 0, 67, 1, 0x34, 0, 0]);
        let mut bootp = vec![0u8; 236];
        bootp[0] = 1;
        bootp[4] = 9;
        bootp.extend_from_slice(&[99, 130, 83, 99, 53, 1, 1, 255]);
        f.extend_from_slice(&bootp);
        r.mem.write_slice(&f, GuestAddress(BUFS)).unwrap();
        r.post(TX, &[(BUFS, f.len() as u32, false)]);
        // No receive buffer yet: the reply waits.
        assert_eq!(r.serve(Some(TX)), 1 << TX);
        assert!(recv(&r.host).is_none(), "DHCP does not reach the tap");
        r.post(RX, &[(BUFS + 0x10000, 2048, true)]);
        assert_eq!(r.serve(Some(RX)), 1 << RX);
        let (_, len) = r.used(RX)[0];
        let reply = r.read(BUFS + 0x10000, len as usize);
        let bootp = &reply[HDR_LEN + dhcp::PEEK_LEN..];
        assert_eq!((bootp[0], bootp[4]), (2, 9));
        assert_eq!(&bootp[16..20], &[100, 64, 0, 3]);
    }

    #[test]
    fn stable_macs() {
        let a = default_mac(Some("web"), 0);
        assert_eq!(a, default_mac(Some("web"), 0));
        assert_ne!(a, default_mac(Some("web"), 1));
        assert_ne!(a, default_mac(Some("db"), 0));
        assert_eq!(&a[..3], &[0xfe, 0xe1, 0xba]);
        assert_eq!(default_mac(None, 0)[0] & 3, 2, "local, unicast");
    }
}
