//! Linux bridges: attach a tap, create the bridge first when asked.

use std::io;
use std::os::fd::OwnedFd;

use crate::ifreq::{self, ioctl, IfReq, SIOCBRADDBR, SIOCBRADDIF};

/// Creates bridge `name` (and brings it up) unless it exists.
pub fn create(sock: &OwnedFd, name: &str) -> io::Result<()> {
    if std::path::Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    let mut n = IfReq::new(name)?.name;
    // SIOCBRADDBR takes the name itself, not an ifreq.
    ioctl(sock, SIOCBRADDBR, &mut n)?;
    ifreq::bring_up(sock, name)
}

/// Adds interface `port` to bridge `bridge`.
pub fn attach(sock: &OwnedFd, bridge: &str, port: &str) -> io::Result<()> {
    let mut r = IfReq::new(bridge)?;
    let idx = ifreq::index(sock, port)?;
    r.data[..4].copy_from_slice(&(idx as i32).to_ne_bytes());
    ioctl(sock, SIOCBRADDIF, &mut r)
}

/// Whether `name` is a bridge (so that "no such bridge" is said plainly).
pub fn is_bridge(name: &str) -> bool {
    std::path::Path::new("/sys/class/net")
        .join(name)
        .join("bridge")
        .is_dir()
}
