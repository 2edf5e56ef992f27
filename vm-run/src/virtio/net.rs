//! virtio-net over a tap: what the guest sends is written to the tap
//! straight from its buffers (writev), what the tap has is read straight
//! into the guest's receive buffers (readv), with virtio 1's 12-byte
//! header on both sides (the tap is set to the same size). Receive
//! buffers are taken only when a frame is there: the receive queue is
//! served on demand, the tap polled only while the guest has buffers.
//! On a local interface (vm-net -L) the guest's DHCP requests are
//! answered here (net/dhcp.rs) and never reach the tap.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{ActiveQueue, Chain, HostWork, VirtioDevice};
use crate::memory::GuestMemory;
use crate::net::dhcp::{self, Lease};
use crate::net::tap::{Tap, VNET_HDR_LEN};

pub const RX: usize = 0;
pub const TX: usize = 1;
const QUEUE_SIZE: u16 = 256;
/// Frames the device itself makes for the guest (DHCP), at most queued.
const MAX_PENDING: usize = 8;
/// A DHCP request fits in this; larger frames are not looked at.
const DHCP_MAX: usize = 1024;

pub struct Net {
    tap: Tap,
    name: String,
    config: [u8; 8],
    lease: Option<Lease>,
    pending: VecDeque<Vec<u8>>,
    /// Errors already reported, so a broken tap is said once.
    told: bool,
}

impl Net {
    pub fn new(tap: Tap, mac: [u8; 6], lease: Option<Lease>) -> Self {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        Net {
            name: format!("virtio-net {}", tap.name),
            tap,
            config,
            lease,
            pending: VecDeque::new(),
            told: false,
        }
    }

    fn tell(&mut self, what: &str, e: io::Error) {
        if !self.told {
            eprintln!("vm-run: {}: {what}: {e}", self.tap.name);
            self.told = true;
        }
    }
}

/// A chain's buffers in one direction, as host iovecs; None when one lies
/// outside guest memory.
fn iovecs(mem: &GuestMemory, bufs: &[(u64, u32)]) -> Option<Vec<libc::iovec>> {
    bufs.iter()
        .filter(|b| b.1 > 0)
        .map(|&(addr, len)| {
            let slice = mem.get_slice(GuestAddress(addr), len as usize).ok()?;
            Some(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: len as usize,
            })
        })
        .collect()
}

fn readv(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: every iovec points into guest memory that stays mapped.
    let n = unsafe { libc::readv(fd, iov.as_ptr(), iov.len().min(1024) as libc::c_int) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn writev(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: as readv.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), iov.len().min(1024) as libc::c_int) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS | 1 << VIRTIO_NET_F_MRG_RXBUF
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn config(&self) -> &[u8] {
        &self.config
    }

    /// Transmit: one frame a chain, header first.
    fn handle(&mut self, queue: usize, chain: Chain<'_>, mem: &GuestMemory) -> u32 {
        if queue != TX {
            return 0;
        }
        let bufs: Vec<(u64, u32)> = chain.readable().map(|d| (d.addr().0, d.len())).collect();
        let total: usize = bufs.iter().map(|b| b.1 as usize).sum();
        if let Some(lease) = self.lease {
            if total <= DHCP_MAX + VNET_HDR_LEN && total > VNET_HDR_LEN {
                let mut frame = vec![0u8; total];
                let mut at = 0;
                for &(addr, len) in &bufs {
                    let len = len as usize;
                    if mem
                        .read_slice(&mut frame[at..at + len], GuestAddress(addr))
                        .is_err()
                    {
                        return 0;
                    }
                    at += len;
                }
                if let Some(reply) = dhcp::answer(&lease, &frame[VNET_HDR_LEN..]) {
                    if self.pending.len() < MAX_PENDING {
                        let mut f = vec![0u8; VNET_HDR_LEN];
                        f.extend_from_slice(&reply);
                        self.pending.push_back(f);
                    }
                    return 0;
                }
            }
        }
        let Some(iov) = iovecs(mem, &bufs) else {
            return 0;
        };
        match writev(self.tap.fd.as_raw_fd(), &iov) {
            // A full tap queue drops the frame, as a wire would.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => self.tell("write", e),
        }
        0
    }

    fn host_fd(&self) -> Option<RawFd> {
        Some(self.tap.fd.as_raw_fd())
    }

    fn on_demand(&self, queue: usize) -> bool {
        queue == RX
    }

    /// Receive: a frame into each buffer chain the guest offers, while the
    /// tap (or the DHCP server) has frames.
    fn host_ready(&mut self, queues: &mut [ActiveQueue], mem: &GuestMemory) -> HostWork {
        let mut work = HostWork::default();
        let Some(qi) = queues.iter().position(|q| q.index == RX) else {
            return work;
        };
        let mut used = false;
        // One more look after enable_notification says buffers came; a
        // ring that says so and yields none (a broken or hostile driver)
        // must not keep this thread spinning.
        let mut looked_again = false;
        loop {
            let q = &mut queues[qi].queue;
            let next = match q.iter(mem) {
                Ok(mut i) => i.next(),
                Err(e) => {
                    self.tell("receive queue", io::Error::other(e.to_string()));
                    break;
                }
            };
            let Some(chain) = next else {
                // No buffers: the guest kicks when it adds some. A buffer
                // added meanwhile shows as enable_notification's true.
                match q.enable_notification(mem) {
                    Ok(true) if !looked_again => {
                        looked_again = true;
                        continue;
                    }
                    _ => break,
                }
            };
            looked_again = false;
            let head = chain.head_index();
            let bufs: Vec<(u64, u32)> = chain.writable().map(|d| (d.addr().0, d.len())).collect();
            let n = if let Some(frame) = self.pending.pop_front() {
                let mut at = 0;
                for &(addr, len) in &bufs {
                    let take = (len as usize).min(frame.len() - at);
                    if take == 0
                        || mem
                            .write_slice(&frame[at..at + take], GuestAddress(addr))
                            .is_err()
                    {
                        break;
                    }
                    at += take;
                }
                at
            } else {
                let Some(iov) = iovecs(mem, &bufs) else {
                    let _ = q.add_used(mem, head, 0);
                    used = true;
                    continue;
                };
                match readv(self.tap.fd.as_raw_fd(), &iov) {
                    Ok(n) => n,
                    Err(e) => {
                        q.go_to_previous_position();
                        let again = e.kind() == io::ErrorKind::WouldBlock;
                        if !again {
                            self.tell("read", e);
                        }
                        work.poll_host = again;
                        break;
                    }
                }
            };
            // One buffer a frame: frames are at most MTU-sized (no
            // offloads), and Linux's mergeable buffers hold one.
            if let Some(&(addr, len)) = bufs.first() {
                if len as usize >= VNET_HDR_LEN {
                    let _ = mem.write_obj(1u16.to_le(), GuestAddress(addr + 10));
                }
            }
            let _ = q.add_used(mem, head, n as u32);
            used = true;
        }
        if used {
            work.used.push(qi);
        }
        work
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::sync::Arc;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::GuestMemoryMmap;
    use vmm_sys_util::eventfd::EventFd;

    const W: u16 = VRING_DESC_F_WRITE as u16;
    const MEM: u64 = 4 << 20;
    const BUF: u64 = 0x10_0000;

    /// A datagram socket pair stands in for the tap: one frame a message,
    /// as a tap reads and writes them. Returns the device and the far end.
    fn net(lease: Option<Lease>) -> (Net, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair fills the two fds it is given.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: two new fds, owned here.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let tap = Tap {
            fd: a,
            name: "test0".into(),
        };
        (Net::new(tap, [0xfe, 1, 2, 3, 4, 5], lease), b)
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn recv(fd: &OwnedFd) -> Option<Vec<u8>> {
        let mut b = vec![0u8; 65536];
        // SAFETY: b is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), 0) };
        (n >= 0).then(|| {
            b.truncate(n as usize);
            b
        })
    }

    #[test]
    fn frames_go_out_whole_and_hostile_chains_go_nowhere() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let (mut dev, far) = net(None);
        let frame: Vec<u8> = (0..200u8).collect();
        mem.write_slice(&frame, GuestAddress(BUF)).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        // Header and frame split over two buffers, as Linux may send them.
        let chain = q
            .build_desc_chain(&[desc(BUF, 12, 0), desc(BUF + 12, 188, 0)])
            .unwrap();
        assert_eq!(dev.handle(TX, chain, &mem), 0);
        assert_eq!(recv(&far), Some(frame));
        for bad in [
            vec![desc(MEM - 10, 100, 0)],
            vec![desc(u64::MAX - 8, 64, 0)],
            vec![desc(BUF, u32::MAX, 0)],
            vec![desc(BUF, 0, 0)],
        ] {
            let chain = q.build_desc_chain(&bad).unwrap();
            assert_eq!(dev.handle(TX, chain, &mem), 0);
        }
        // Nothing of the hostile chains reached the wire but empty frames.
        while let Some(f) = recv(&far) {
            assert!(f.is_empty(), "{} bytes sent", f.len());
        }
    }

    fn active(
        mem: &GuestMemoryMmap<()>,
        mock: &MockSplitQueue<GuestMemoryMmap<()>>,
    ) -> ActiveQueue {
        let _ = mem;
        ActiveQueue {
            index: RX,
            queue: mock.create_queue::<Queue>().unwrap(),
            kick: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            vector: 0,
        }
    }

    #[test]
    fn receive_waits_for_buffers_then_fills_them() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let (mut dev, far) = net(None);
        let frame = [7u8; 12 + 60];
        // SAFETY: frame is readable for its length.
        unsafe { libc::send(far.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        let mock = MockSplitQueue::new(&mem, 16);
        let mut queues = vec![active(&mem, &mock)];
        // No buffers: nothing taken, and the tap is not to be polled.
        let w = dev.host_ready(&mut queues, &mem);
        assert!(w.used.is_empty() && !w.poll_host);
        // Two buffers: the frame lands in the first, num_buffers set to
        // 1; the second waits for the next frame, so the tap is polled.
        mock.add_desc_chains(&[desc(BUF, 2048, W), desc(BUF + 4096, 2048, W)], 0)
            .unwrap();
        let w = dev.host_ready(&mut queues, &mem);
        assert_eq!(w.used, [0]);
        assert!(w.poll_host, "a buffer is left: poll the tap");
        let mut got = [0u8; 72];
        mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
        assert_eq!(&got[12..], &frame[12..]);
        assert_eq!(&got[10..12], &1u16.to_le_bytes());
        let used: u32 = mem
            .read_obj(GuestAddress(mock.used_addr().0 + 4 + 4))
            .unwrap();
        assert_eq!(used, 72);
    }

    #[test]
    fn a_hostile_receive_ring_does_not_keep_the_thread_spinning() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let (mut dev, far) = net(None);
        let frame = [7u8; 64];
        // SAFETY: frame is readable for its length.
        unsafe { libc::send(far.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        let mock = MockSplitQueue::new(&mem, 16);
        let mut queues = vec![active(&mem, &mock)];
        // An avail index far past anything the queue can hold.
        mock.avail().idx().store(0x8000);
        let w = dev.host_ready(&mut queues, &mem);
        assert!(w.used.is_empty() && !w.poll_host);
        // Buffers at addresses outside guest memory are returned empty.
        mock.avail().idx().store(0);
        let mut queues = vec![active(&mem, &mock)];
        mock.add_desc_chains(&[desc(MEM + 4096, 2048, W)], 0)
            .unwrap();
        let w = dev.host_ready(&mut queues, &mem);
        assert_eq!(w.used, [0]);
    }

    #[test]
    fn dhcp_is_answered_by_the_device_not_the_wire() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let lease = Lease {
            host: std::net::Ipv4Addr::new(100, 64, 0, 2),
            guest: std::net::Ipv4Addr::new(100, 64, 0, 3),
            dns: None,
        };
        let (mut dev, far) = net(Some(lease));
        // A DHCPDISCOVER: Ethernet, IPv4, UDP 68 -> 67, BOOTP, option 53.
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x08, 0x00]);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[9] = 17;
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0, 68, 0, 67, 0, 0, 0, 0]);
        let mut bootp = vec![0u8; 240];
        (bootp[0], bootp[1], bootp[2]) = (1, 1, 6);
        bootp[28..34].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        bootp[236..240].copy_from_slice(&[99, 130, 83, 99]);
        bootp.extend_from_slice(&[53, 1, 1, 255]);
        f.extend_from_slice(&bootp);
        mem.write_slice(&f, GuestAddress(BUF)).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        let chain = q.build_desc_chain(&[desc(BUF, f.len() as u32, 0)]).unwrap();
        dev.handle(TX, chain, &mem);
        assert_eq!(recv(&far), None, "the request went to the wire");
        let mock = MockSplitQueue::new(&mem, 16);
        let mut queues = vec![active(&mem, &mock)];
        mock.add_desc_chains(&[desc(0x20_0000, 2048, W)], 0)
            .unwrap();
        let w = dev.host_ready(&mut queues, &mem);
        assert_eq!(w.used, [0]);
        let mut reply = [0u8; 12 + 14 + 20 + 8 + 20];
        mem.read_slice(&mut reply, GuestAddress(0x20_0000)).unwrap();
        // To the client's MAC, yiaddr the lease's guest address.
        assert_eq!(&reply[12..18], &[2, 0, 0, 0, 0, 9]);
        let mut yiaddr = [0u8; 4];
        mem.read_slice(&mut yiaddr, GuestAddress(0x20_0000 + 12 + 14 + 20 + 8 + 16))
            .unwrap();
        assert_eq!(yiaddr, [100, 64, 0, 3]);
    }
}
