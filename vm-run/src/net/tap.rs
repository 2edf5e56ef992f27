//! A tap fd inherited from vm-net (VM_NET_FDS) or named with -n: checked
//! to be a tap with a vnet header, made non-blocking, its header size set
//! to virtio 1's 12 bytes, and no offloads (the guest is offered none).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const TUNGETIFF: u64 = 0x8004_54d2;
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;
const IFF_TAP: u16 = 0x0002;
const IFF_VNET_HDR: u16 = 0x4000;
/// struct virtio_net_hdr_v1.
pub const VNET_HDR_LEN: usize = 12;

pub struct Tap {
    pub fd: OwnedFd,
    pub name: String,
}

/// Takes ownership of fd `fd`, which must be an open tap with a vnet
/// header; the error says what it is instead.
pub fn adopt(fd: RawFd) -> Result<Tap, String> {
    if (0..3).contains(&fd) {
        return Err(format!(
            "fd {fd}: standard input, output or error, not a tap"
        ));
    }
    // SAFETY: F_GETFD only asks whether the number is an open fd.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!("fd {fd}: not an open file descriptor"));
    }
    let mut ifr = [0u8; 40];
    // SAFETY: TUNGETIFF writes a struct ifreq (40 bytes) into ifr; on
    // another kind of fd it fails without writing.
    if unsafe { libc::ioctl(fd, TUNGETIFF as _, ifr.as_mut_ptr()) } < 0 {
        return Err(format!("fd {fd}: not a tap device (from vm-net)"));
    }
    let flags = u16::from_ne_bytes([ifr[16], ifr[17]]);
    if flags & IFF_TAP == 0 || flags & IFF_VNET_HDR == 0 {
        return Err(format!(
            "fd {fd}: a tun device without IFF_TAP and IFF_VNET_HDR"
        ));
    }
    let end = ifr[..16].iter().position(|b| *b == 0).unwrap_or(16);
    let name = String::from_utf8_lossy(&ifr[..end]).into_owned();
    // SAFETY: the fd is open and from here owned by nobody but us.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let set = |req: u64, v: libc::c_int| {
        // SAFETY: both requests take an int by pointer or by value as
        // the kernel documents: VNETHDRSZ a pointer, OFFLOAD a value.
        let rc = if req == TUNSETVNETHDRSZ {
            unsafe { libc::ioctl(owned.as_raw_fd(), req as _, &v as *const libc::c_int) }
        } else {
            // SAFETY: as above.
            unsafe { libc::ioctl(owned.as_raw_fd(), req as _, v as libc::c_ulong) }
        };
        if rc < 0 {
            Err(format!("{name}: {}", io::Error::last_os_error()))
        } else {
            Ok(())
        }
    };
    set(TUNSETVNETHDRSZ, VNET_HDR_LEN as libc::c_int)?;
    set(TUNSETOFFLOAD, 0)?;
    // SAFETY: fcntl on our fd.
    let fl = unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if fl < 0
        || unsafe {
            libc::fcntl(
                owned.as_raw_fd(),
                libc::F_SETFL,
                fl | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        } < 0
    {
        return Err(format!("{name}: {}", io::Error::last_os_error()));
    }
    // SAFETY: as above; the fd must not leak into anything vm-run runs.
    unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(Tap { fd: owned, name })
}
