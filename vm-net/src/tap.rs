//! The tap device: /dev/net/tun opened as IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR, named or the next free tapN, left open across exec.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{IntoRawFd, RawFd};

use crate::ifreq::{ioctl, IfReq};

const TUNSETIFF: u64 = 0x4004_54ca;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

pub struct Tap {
    /// Without O_CLOEXEC: it is for the program we exec.
    pub fd: RawFd,
    pub name: String,
}

#[derive(Debug)]
pub enum TapError {
    /// /dev/net/tun could not be opened.
    Open(io::Error),
    /// TUNSETIFF refused: busy name, no permission, ...
    Create(String, io::Error),
}

/// Opens the tap `name`, or the next free tapN when None.
pub fn open(name: Option<&str>) -> Result<Tap, TapError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(TapError::Open)?;
    let pattern = name.unwrap_or("tap%d");
    let mut r = IfReq::new(pattern).map_err(|e| TapError::Create(pattern.into(), e))?;
    r.set_short(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
    ioctl(&file, TUNSETIFF, &mut r).map_err(|e| TapError::Create(pattern.into(), e))?;
    let fd = file.into_raw_fd();
    // std opened it with O_CLOEXEC; the next program must inherit it.
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
        return Err(TapError::Create(pattern.into(), io::Error::last_os_error()));
    }
    Ok(Tap { fd, name: r.name() })
}
