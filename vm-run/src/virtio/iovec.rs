//! Guest buffers as iovecs, for the system calls that move a device's
//! data without a copy (preadv/pwritev on a disk, readv/writev on a tap).
//! Such a call goes behind vm-memory's back, so a buffer the host writes
//! into is marked dirty here: a live migration sends it again.

use vm_memory::bitmap::Bitmap as _;
use vm_memory::{GuestAddress, GuestMemoryBackend as _};

use crate::disk::IoVec;
use crate::memory::GuestMemory;

/// Which way the data goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dir {
    /// The host reads the buffer (a disk write, a frame sent).
    FromGuest,
    /// The host writes the buffer (a disk read, a frame received).
    IntoGuest,
}

/// `len` bytes of guest memory at `addr` as an iovec; None if they are
/// not all RAM of one region.
pub fn iovec(mem: &GuestMemory, addr: GuestAddress, len: usize, dir: Dir) -> Option<IoVec> {
    let slice = mem.get_slice(addr, len).ok()?;
    if dir == Dir::IntoGuest {
        slice.bitmap().mark_dirty(0, len);
    }
    Some(IoVec {
        iov_base: slice.ptr_guard_mut().as_ptr().cast(),
        iov_len: len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_written_into_are_marked_and_others_not() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let dirty = |mem: &GuestMemory, page: usize| {
            let r = mem.iter().next().unwrap();
            (**r).bitmap().dirty_at(page * 4096)
        };
        let v = iovec(&mem, GuestAddress(0x3000), 100, Dir::FromGuest).unwrap();
        assert_eq!(v.iov_len, 100);
        assert!(!dirty(&mem, 3));
        iovec(&mem, GuestAddress(0x5000), 4097, Dir::IntoGuest).unwrap();
        assert!(dirty(&mem, 5) && dirty(&mem, 6));
        assert!(iovec(&mem, GuestAddress((1 << 20) - 10), 20, Dir::IntoGuest).is_none());
    }
}
