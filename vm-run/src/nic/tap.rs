//! A tap file descriptor inherited from vm-net (or given with -n): checked
//! to be a tap with a vnet header, made non-blocking, and read and written
//! with readv/writev straight on guest pages.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::disk::IoVec;

/// From <linux/if_tun.h>.
const TUNGETIFF: u64 = 0x8004_54d2;
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;
const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
const IFF_VNET_HDR: u16 = 0x4000;
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// struct ifreq: 16 bytes of name, then the flags (a short).
const IFREQ_LEN: usize = 40;
const IFNAMSIZ: usize = 16;

/// readv and writev take at most this many buffers.
pub const IOV_MAX: usize = 1024;

/// The ioctl numbers the running VM needs, for the sandbox.
pub const RUNTIME_IOCTLS: &[u64] = &[TUNSETOFFLOAD];

#[derive(Debug)]
pub enum TapError {
    /// The number is not an open file descriptor.
    NotOpen(RawFd, io::Error),
    /// Open, but not a tap with IFF_VNET_HDR and IFF_NO_PI.
    NotTap(RawFd, String),
    /// The tap refused a setting.
    Setup(RawFd, &'static str, io::Error),
}

pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Takes `fd` over; it must not be owned by anything else.
    pub fn from_fd(fd: RawFd, hdr_len: usize) -> Result<Self, TapError> {
        // SAFETY: F_GETFD only asks about the descriptor number.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(TapError::NotOpen(
                fd,
                io::Error::from_raw_os_error(libc::EBADF),
            ));
        }
        let mut ifr = [0u8; IFREQ_LEN];
        // SAFETY: TUNGETIFF writes a struct ifreq, which ifr is big enough
        // for; on a file that is not a tap it fails and writes nothing.
        if unsafe { libc::ioctl(fd, TUNGETIFF as _, ifr.as_mut_ptr()) } < 0 {
            return Err(TapError::NotTap(fd, "not a tap device".into()));
        }
        // SAFETY: the fd is open and nothing else in vm-run owns it: it
        // came from the environment or the command line, once each.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let flags = u16::from_ne_bytes([ifr[IFNAMSIZ], ifr[IFNAMSIZ + 1]]);
        let name_len = ifr[..IFNAMSIZ]
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(IFNAMSIZ);
        let name = String::from_utf8_lossy(&ifr[..name_len]).into_owned();
        let need = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if flags & need != need {
            return Err(TapError::NotTap(
                fd,
                format!("{name} is not a tap with IFF_NO_PI and IFF_VNET_HDR"),
            ));
        }
        let size = hdr_len as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
        if unsafe { libc::ioctl(fd, TUNSETVNETHDRSZ as _, &size) } < 0 {
            return Err(TapError::Setup(
                fd,
                "TUNSETVNETHDRSZ",
                io::Error::last_os_error(),
            ));
        }
        // Non-blocking, so that the device thread drains it without ever
        // sleeping in read; close-on-exec, as everything else of ours.
        // SAFETY: fcntl on our own fd with integer arguments.
        let ok = unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            fl >= 0
                && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) >= 0
                && libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) >= 0
        };
        if !ok {
            return Err(TapError::Setup(fd, "fcntl", io::Error::last_os_error()));
        }
        Ok(Tap { fd: owned, name })
    }

    /// The interface's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the tap may hand us (TUN_F_*): what the guest accepts.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Reads one frame (vnet header first) into `iov`.
    pub fn readv(&self, iov: &[IoVec]) -> io::Result<usize> {
        let n = iov.len().min(IOV_MAX) as libc::c_int;
        // SAFETY: every iovec points into guest memory, mapped for the
        // life of the process, or into a live buffer of the caller's.
        let r = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), n) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }

    /// Writes one frame (vnet header first) from `iov`.
    pub fn writev(&self, iov: &[IoVec]) -> io::Result<usize> {
        let n = iov.len().min(IOV_MAX) as libc::c_int;
        // SAFETY: as for readv; the kernel only reads the buffers.
        let r = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), n) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // _IOR('T', 210, unsigned int) and friends, as <linux/if_tun.h>.
        assert_eq!(TUNGETIFF, 0x800454d2);
        assert_eq!(TUNSETOFFLOAD, 0x400454d0);
        assert_eq!(TUNSETVNETHDRSZ, 0x400454d8);
    }

    #[test]
    fn a_closed_fd_or_a_file_is_not_a_tap() {
        assert!(matches!(
            Tap::from_fd(987, 12),
            Err(TapError::NotOpen(987, _))
        ));
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = f.as_raw_fd();
        assert!(matches!(Tap::from_fd(fd, 12), Err(TapError::NotTap(n, _)) if n == fd));
    }
}
