//! A request's guest buffers: a chain's descriptors as runs of guest
//! memory, split by direction and at byte counts, copied in and out, or
//! handed to the system calls that move a device's data without a copy
//! (preadv/pwritev on a disk, readv/writev on a tap) as iovecs. Such a
//! call goes behind vm-memory's back, so a buffer the host writes into is
//! marked dirty here: a live migration sends it again.

use vm_memory::bitmap::Bitmap as _;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend as _};

use super::Chain;
use crate::disk::IoVec;
use crate::memory::GuestMemory;

/// A run of guest memory, from one descriptor or part of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    pub addr: u64,
    pub len: u64,
}

/// Splits a chain into its readable and writable buffers; None if a
/// readable one follows a writable one, which the spec forbids.
pub fn split(chain: Chain<'_>) -> Option<(Vec<Buf>, Vec<Buf>)> {
    let (mut readable, mut writable) = (Vec::new(), Vec::new());
    for d in chain {
        let b = Buf {
            addr: d.addr().0,
            len: d.len().into(),
        };
        if d.is_write_only() {
            writable.push(b);
        } else if writable.is_empty() {
            readable.push(b);
        } else {
            return None;
        }
    }
    Some((readable, writable))
}

pub fn total(bufs: &[Buf]) -> u64 {
    bufs.iter().map(|b| b.len).sum()
}

/// The first `n` bytes of `bufs`, and the rest; None if they are shorter.
pub fn split_at(bufs: &[Buf], n: u64) -> Option<(Vec<Buf>, Vec<Buf>)> {
    let (mut head, mut tail, mut left) = (Vec::new(), Vec::new(), n);
    for b in bufs {
        if left >= b.len {
            head.push(*b);
            left -= b.len;
        } else if left > 0 {
            head.push(Buf {
                addr: b.addr,
                len: left,
            });
            tail.push(Buf {
                addr: b.addr.checked_add(left)?,
                len: b.len - left,
            });
            left = 0;
        } else {
            tail.push(*b);
        }
    }
    (left == 0).then_some((head, tail))
}

/// Copies guest buffers into `out`, which must be exactly as long.
pub fn gather(mem: &GuestMemory, bufs: &[Buf], out: &mut [u8]) -> Option<()> {
    let mut at = 0usize;
    for b in bufs {
        let n = usize::try_from(b.len).ok()?;
        mem.read_slice(out.get_mut(at..at.checked_add(n)?)?, GuestAddress(b.addr))
            .ok()?;
        at += n;
    }
    (at == out.len()).then_some(())
}

/// Copies `data` into the front of the guest buffers; returns how much
/// fit (all of it unless the buffers are shorter), None if a buffer is
/// not guest RAM.
pub fn scatter(mem: &GuestMemory, bufs: &[Buf], data: &[u8]) -> Option<usize> {
    let mut at = 0usize;
    for b in bufs {
        if at == data.len() {
            break;
        }
        let n = usize::try_from(b.len)
            .unwrap_or(usize::MAX)
            .min(data.len() - at);
        mem.write_slice(&data[at..at + n], GuestAddress(b.addr))
            .ok()?;
        at += n;
    }
    Some(at)
}

/// Copies all of `data` into the guest buffers; None if they are shorter
/// or not guest RAM.
pub fn scatter_all(mem: &GuestMemory, bufs: &[Buf], data: &[u8]) -> Option<()> {
    (scatter(mem, bufs, data)? == data.len()).then_some(())
}

/// The host addresses of guest buffers, for preadv and pwritev; None if
/// any lies outside guest RAM (or straddles the end of a region).
pub fn iovecs(mem: &GuestMemory, bufs: &[Buf], dir: Dir) -> Option<Vec<IoVec>> {
    bufs.iter()
        .filter(|b| b.len > 0)
        .map(|b| iovec(mem, GuestAddress(b.addr), usize::try_from(b.len).ok()?, dir))
        .collect()
}

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
