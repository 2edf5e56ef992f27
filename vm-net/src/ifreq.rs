//! struct ifreq and the socket ioctls on network interfaces, spelled out
//! once so that glibc and musl builds agree (their ifreq types differ).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const IFNAMSIZ: usize = 16;

pub const SIOCGIFFLAGS: u64 = 0x8913;
pub const SIOCSIFFLAGS: u64 = 0x8914;
pub const SIOCSIFADDR: u64 = 0x8916;
pub const SIOCSIFNETMASK: u64 = 0x891c;
pub const SIOCSIFHWADDR: u64 = 0x8924;
pub const SIOCGIFINDEX: u64 = 0x8933;
pub const SIOCBRADDBR: u64 = 0x89a0;
pub const SIOCBRADDIF: u64 = 0x89a2;

/// struct ifreq: a name and a 24-byte union (flags, index, an address).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IfReq {
    pub name: [u8; IFNAMSIZ],
    pub data: [u8; 24],
}

impl IfReq {
    pub fn new(name: &str) -> io::Result<IfReq> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= IFNAMSIZ || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an interface name (1 to 15 bytes)",
            ));
        }
        let mut r = IfReq {
            name: [0; IFNAMSIZ],
            data: [0; 24],
        };
        r.name[..bytes.len()].copy_from_slice(bytes);
        Ok(r)
    }

    pub fn name(&self) -> String {
        let end = self.name.iter().position(|b| *b == 0).unwrap_or(IFNAMSIZ);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }

    pub fn short(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    pub fn set_short(&mut self, v: i16) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }

    pub fn int(&self) -> i32 {
        i32::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    /// A struct sockaddr with an Ethernet address (ARPHRD_ETHER).
    pub fn set_ether(&mut self, mac: [u8; 6]) {
        self.data = [0; 24];
        self.data[..2].copy_from_slice(&libc::ARPHRD_ETHER.to_ne_bytes());
        self.data[2..8].copy_from_slice(&mac);
    }

    /// A struct sockaddr_in with `addr` and port 0.
    pub fn set_inet(&mut self, addr: std::net::Ipv4Addr) {
        self.data = [0; 24];
        self.data[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        self.data[4..8].copy_from_slice(&addr.octets());
    }
}

/// An ioctl whose argument is a pointer to `arg`.
pub fn ioctl<T>(fd: &impl AsRawFd, request: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a live, writable object of the type the request
    // reads and writes (callers pair requests with their structs).
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, arg as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A datagram socket to hang interface ioctls on.
pub fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned by the OwnedFd from here.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets IFF_UP on `name`.
pub fn bring_up(sock: &OwnedFd, name: &str) -> io::Result<()> {
    let mut r = IfReq::new(name)?;
    ioctl(sock, SIOCGIFFLAGS, &mut r)?;
    r.set_short(r.short() | libc::IFF_UP as i16);
    ioctl(sock, SIOCSIFFLAGS, &mut r)
}

pub fn index(sock: &OwnedFd, name: &str) -> io::Result<u32> {
    let mut r = IfReq::new(name)?;
    ioctl(sock, SIOCGIFINDEX, &mut r)?;
    Ok(r.int() as u32)
}
