//! virtio-rng: fills whatever buffers the driver offers with bytes from
//! the host's getrandom(2), as vmd's viornd does from arc4random.

use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use vm_memory::{Bytes, GuestAddress};

use super::{Chain, VirtioDevice};
use crate::memory::GuestMemory;

pub const QUEUE_SIZE: u16 = 64;
/// Bytes given per request at most: the driver asks for little, and a
/// guest asking for gigabytes must not keep the thread busy.
const MAX_REQUEST: usize = 64 << 10;

pub struct Rng {
    buf: Vec<u8>,
}

impl Default for Rng {
    fn default() -> Self {
        Rng {
            buf: vec![0; MAX_REQUEST],
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn name(&self) -> &str {
        "virtio-rng"
    }

    fn features(&self) -> u64 {
        0
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn config(&self) -> &[u8] {
        &[]
    }

    fn handle(&mut self, _queue: usize, chain: Chain<'_>, mem: &GuestMemory) -> u32 {
        let mut given = 0usize;
        for d in chain.writable() {
            let want = (d.len() as usize).min(MAX_REQUEST - given);
            if want == 0 {
                break;
            }
            let buf = &mut self.buf[..want];
            // The system call, not musl's wrapper: Rust's std refers to
            // that weakly, and a static link may then resolve it to null.
            // SAFETY: getrandom writes at most `want` bytes into buf.
            let n = unsafe { libc::syscall(libc::SYS_getrandom, buf.as_mut_ptr(), want, 0) };
            if n <= 0 {
                break;
            }
            let n = n as usize;
            if mem
                .write_slice(&buf[..n], GuestAddress(d.addr().0))
                .is_err()
            {
                break;
            }
            given += n;
        }
        given as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    #[test]
    fn fills_writable_buffers_with_random_bytes_up_to_a_limit() {
        let mem = crate::memory::GuestMemory::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let mut rng = Rng::default();
        let w = VRING_DESC_F_WRITE as u16;
        let q = MockSplitQueue::new(&mem, 16);
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x10_0000, 64, w, 0)),
            RawDescriptor::from(SplitDescriptor::new(0x20_0000, 32, w, 0)),
        ];
        let chain = q.build_desc_chain(&descs).unwrap();
        assert_eq!(rng.handle(0, chain, &mem), 96);
        let mut got = [0u8; 64];
        mem.read_slice(&mut got, GuestAddress(0x10_0000)).unwrap();
        assert!(got.iter().any(|b| *b != 0));
        // Gigabytes asked, 64 KiB given; outside memory, nothing.
        let q = MockSplitQueue::new(&mem, 16);
        let chain = q
            .build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(
                0x10_0000,
                u32::MAX,
                w,
                0,
            ))])
            .unwrap();
        assert_eq!(rng.handle(0, chain, &mem), MAX_REQUEST as u32);
        let q = MockSplitQueue::new(&mem, 16);
        let chain = q
            .build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(8 << 20, 16, w, 0))])
            .unwrap();
        assert_eq!(rng.handle(0, chain, &mem), 0);
    }
}
