//! Vectored I/O on caller buffers described by iovecs, for the image's
//! direct paths (qcow2/data.rs): a request's buffers cut at the boundaries
//! of the runs imago maps, preadv/pwritev that finish what they start, and
//! the same buffers as imago's vectors where imago moves the bytes.

use std::io;
use std::os::fd::RawFd;

use imago::io_buffers::{IoVector, IoVectorMut};
use libc::iovec;

/// preadv and pwritev take at most this many buffers.
const IOV_MAX: usize = 1024;

/// Walks a request's buffers front to back, handing out the next `n`
/// bytes of them as iovecs.
pub struct Cursor<'a> {
    bufs: &'a [iovec],
    i: usize,
    at: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bufs: &'a [iovec]) -> Self {
        Cursor { bufs, i: 0, at: 0 }
    }

    /// Appends the next `n` bytes of the buffers to `out` (fewer if the
    /// buffers end first: callers take what they summed).
    pub fn take(&mut self, mut n: u64, out: &mut Vec<iovec>) {
        while n > 0 && self.i < self.bufs.len() {
            let b = &self.bufs[self.i];
            let t = (b.iov_len - self.at).min(usize::try_from(n).unwrap_or(usize::MAX));
            if t > 0 {
                out.push(iovec {
                    // SAFETY: `at + t` stays within the buffer (t is at most
                    // what is left of it); only the address is computed.
                    iov_base: unsafe { b.iov_base.cast::<u8>().add(self.at) }.cast(),
                    iov_len: t,
                });
            }
            self.at += t;
            n -= t as u64;
            if self.at == b.iov_len {
                self.i += 1;
                self.at = 0;
            }
        }
    }
}

pub fn total(bufs: &[iovec]) -> u64 {
    bufs.iter().map(|b| b.iov_len as u64).sum()
}

/// Drops the first `n` bytes of `iov`.
fn advance(iov: &mut [iovec], mut n: usize) -> &mut [iovec] {
    let mut first = 0;
    while first < iov.len() && n >= iov[first].iov_len {
        n -= iov[first].iov_len;
        first += 1;
    }
    let rest = &mut iov[first..];
    if n > 0 {
        // SAFETY: n is less than this buffer's length (the loop stopped).
        rest[0].iov_base = unsafe { rest[0].iov_base.cast::<u8>().add(n) }.cast();
        rest[0].iov_len -= n;
    }
    rest
}

/// Fills the buffers with zeroes.
///
/// # Safety
/// Each iovec must describe memory that is writable and not otherwise
/// borrowed for the duration of the call.
pub unsafe fn zero(iov: &[iovec]) {
    for b in iov {
        // SAFETY: the caller's promise.
        unsafe { std::ptr::write_bytes(b.iov_base.cast::<u8>(), 0, b.iov_len) };
    }
}

fn offset_of(off: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(off).map_err(|_| io::Error::other("offset overflow"))
}

/// Which of preadv and pwritev `transfer` calls.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dir {
    Read,
    Write,
}

/// preadv or pwritev until every buffer is done; returns the iovecs left
/// when the file ended first (reads only: a write of 0 bytes is an error).
///
/// # Safety
/// As for [`preadv_all`] (reads) and [`pwritev_all`] (writes).
pub unsafe fn transfer(
    fd: RawFd,
    mut iov: &mut [iovec],
    mut off: u64,
    dir: Dir,
) -> io::Result<&mut [iovec]> {
    while !iov.is_empty() {
        let n = iov.len().min(IOV_MAX) as libc::c_int;
        let at = offset_of(off)?;
        // SAFETY: the caller vouches for the buffers; n entries exist.
        let r = unsafe {
            match dir {
                Dir::Read => libc::preadv(fd, iov.as_ptr(), n, at),
                Dir::Write => libc::pwritev(fd, iov.as_ptr(), n, at),
            }
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return match dir {
                Dir::Read => Ok(iov),
                Dir::Write => Err(io::ErrorKind::WriteZero.into()),
            };
        }
        off += r as u64;
        iov = advance(iov, r as usize);
    }
    Ok(iov)
}

/// Reads until the buffers are full; past the end of the file they read as
/// zeroes, as imago's own file does.
///
/// # Safety
/// As for [`zero`]; `iov` itself is consumed (its entries are moved on).
pub unsafe fn preadv_all(fd: RawFd, iov: &mut [iovec], off: u64) -> io::Result<()> {
    // SAFETY: the caller's promise, passed on.
    let rest = unsafe { transfer(fd, iov, off, Dir::Read) }?;
    // SAFETY: what is left of the caller's buffers.
    unsafe { zero(rest) };
    Ok(())
}

/// Writes all of the buffers.
///
/// # Safety
/// Each iovec must describe readable memory; `iov` itself is consumed.
pub unsafe fn pwritev_all(fd: RawFd, iov: &mut [iovec], off: u64) -> io::Result<()> {
    // SAFETY: the caller's promise, passed on.
    unsafe { transfer(fd, iov, off, Dir::Write) }.map(|_| ())
}

/// A slice of IoSlice or IoSliceMut as the iovecs they are.
pub fn as_iovecs<T>(bufs: &[T]) -> &[iovec] {
    const { assert!(std::mem::size_of::<T>() == std::mem::size_of::<iovec>()) };
    // SAFETY: only called on IoSlice and IoSliceMut, which std guarantees
    // to be ABI compatible with iovec on Unix; same length, same lifetime.
    unsafe { std::slice::from_raw_parts(bufs.as_ptr().cast(), bufs.len()) }
}

/// The buffers as an imago vector to read into.
///
/// # Safety
/// As for [`zero`], for as long as the vector lives.
pub unsafe fn imago_mut<'a>(iov: &[iovec]) -> IoVectorMut<'a> {
    let mut v = IoVectorMut::with_capacity(iov.len());
    for b in iov {
        // SAFETY: the caller's promise.
        v.push(unsafe { std::slice::from_raw_parts_mut(b.iov_base.cast::<u8>(), b.iov_len) });
    }
    v
}

/// The buffers as an imago vector to write from.
///
/// # Safety
/// Each iovec must describe readable memory that nothing writes for as
/// long as the vector lives.
pub unsafe fn imago<'a>(iov: &[iovec]) -> IoVector<'a> {
    let mut v = IoVector::with_capacity(iov.len());
    for b in iov {
        // SAFETY: the caller's promise.
        v.push(unsafe { std::slice::from_raw_parts(b.iov_base.cast::<u8>(), b.iov_len) });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(b: &mut [u8]) -> iovec {
        iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        }
    }

    #[test]
    fn the_cursor_cuts_buffers_at_run_boundaries() {
        let (mut a, mut b, mut c) = ([0u8; 5], [0u8; 0], [0u8; 7]);
        let bufs = [iov(&mut a), iov(&mut b), iov(&mut c)];
        let mut cur = Cursor::new(&bufs);
        let mut out = Vec::new();
        cur.take(3, &mut out);
        assert_eq!(out.iter().map(|v| v.iov_len).collect::<Vec<_>>(), [3]);
        out.clear();
        cur.take(6, &mut out);
        assert_eq!(out.iter().map(|v| v.iov_len).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(out[1].iov_base, bufs[2].iov_base);
        out.clear();
        cur.take(10, &mut out);
        assert_eq!(out.iter().map(|v| v.iov_len).collect::<Vec<_>>(), [3]);
        out.clear();
        cur.take(1, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn advance_moves_into_and_past_buffers() {
        let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
        let mut v = [iov(&mut a), iov(&mut b)];
        let rest = advance(&mut v, 6);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].iov_len, 2);
        let mut v = [iov(&mut a), iov(&mut b)];
        assert!(advance(&mut v, 8).is_empty());
    }
}
