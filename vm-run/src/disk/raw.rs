//! Raw images: regular files and block devices, read and written in
//! place. Holes are punched for discard, so sparse files stay sparse.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use vm_img::iov::Dir;

use super::{Disk, IoVec};
use crate::error::{Error, Result};

pub struct Raw {
    file: File,
    path: PathBuf,
    size: u64,
    /// The format was read from the header (no `raw:`): the guest must not
    /// write a qcow2 header, which would make the next vm-run open the
    /// image as qcow2, with a base file of the guest's choosing. QEMU
    /// refuses such writes to probed raw images too.
    probed: bool,
    /// Held from the check of a write into the header's bytes to its
    /// end: two queues each writing half a magic would otherwise each
    /// pass the check against the bytes before the other's half.
    header: Mutex<()>,
}

impl Raw {
    pub fn new(mut file: File, path: PathBuf, probed: bool) -> Result<Self> {
        // Works for block devices too, where metadata says 0.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::Open(path.clone(), e))?;
        Ok(Raw {
            file,
            path,
            size,
            probed,
            header: Mutex::new(()),
        })
    }

    /// Would this write, at `offset`, give the image a qcow2 header?
    fn makes_qcow2_header(&self, offset: u64, bufs: &[IoVec]) -> io::Result<bool> {
        let mut head = [0u8; 4];
        let n = head.len() as u64;
        if !self.probed || offset >= n {
            return Ok(false);
        }
        transfer(self.file.as_raw_fd(), 0, &[iovec_of(&mut head)], Dir::Read).or_else(|e| {
            // A file shorter than a header reads short: zeroes.
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        let mut at = offset;
        for b in bufs {
            if at >= n {
                break;
            }
            let take = (n - at).min(b.iov_len as u64) as usize;
            // SAFETY: the buffer is iov_len bytes of guest memory (or ours).
            let src = unsafe { std::slice::from_raw_parts(b.iov_base as *const u8, take) };
            head[at as usize..at as usize + take].copy_from_slice(src);
            at += take as u64;
        }
        Ok(vm_img::qcow2::header::is_qcow2(&head))
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on our own fd with integer arguments.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset as i64, len as i64) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn write_zero_bytes(&self, mut offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; 64 << 10];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(zeroes.len() as u64) as usize;
            let iov = IoVec {
                iov_base: zeroes.as_ptr() as *mut libc::c_void,
                iov_len: n,
            };
            self.write_at(offset, &[iov])?;
            offset += n as u64;
        }
        Ok(())
    }
}

fn iovec_of(b: &mut [u8]) -> IoVec {
    IoVec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: b.len(),
    }
}

/// Runs preadv or pwritev until every buffer is done, however the kernel
/// splits the transfer (vm-img's loop, which qcow2 images use too).
fn transfer(fd: i32, offset: u64, bufs: &[IoVec], dir: Dir) -> io::Result<()> {
    let mut iov: Vec<IoVec> = bufs.iter().filter(|b| b.iov_len > 0).copied().collect();
    // SAFETY: every iovec points into guest memory (or our own buffer)
    // that stays mapped for the whole call.
    let rest = unsafe { vm_img::iov::transfer(fd, &mut iov, offset, dir) }?;
    if rest.is_empty() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "image shrank under the guest",
        ))
    }
}

impl Disk for Raw {
    fn path(&self) -> &Path {
        &self.path
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, bufs: &[IoVec]) -> io::Result<()> {
        transfer(self.file.as_raw_fd(), offset, bufs, Dir::Read)
    }

    fn write_at(&self, offset: u64, bufs: &[IoVec]) -> io::Result<()> {
        let _header = (self.probed && offset < 4)
            .then(|| self.header.lock().unwrap_or_else(|e| e.into_inner()));
        if self.makes_qcow2_header(offset, bufs)? {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the guest wrote a qcow2 header into a raw image (raw: allows it)",
            ));
        }
        transfer(self.file.as_raw_fd(), offset, bufs, Dir::Write)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            // Discard is a hint: a file system without holes loses nothing.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            r => r,
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(mode, offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.write_zero_bytes(offset, len)
            }
            r => r,
        }
    }
}
