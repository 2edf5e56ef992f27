//! Linux bridges: attach a tap, create the bridge first when asked.

use std::io;
use std::os::fd::OwnedFd;

use crate::ifreq::{self, ioctl, IfReq, SIOCBRADDBR, SIOCBRADDIF, SIOCSIFHWADDR};

/// Creates bridge `name` (and brings it up) unless it exists.
///
/// The new bridge gets an Ethernet address of its own. Without one, Linux
/// gives a bridge the lowest address among its ports, so when the tap of
/// its only guest is replaced (a guest received from a snapshot, or just
/// restarted), the host's address changes under the guest, whose ARP
/// cache then points at the old one for up to 45 s.
pub fn create(sock: &OwnedFd, name: &str) -> io::Result<()> {
    if std::path::Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    let mut n = IfReq::new(name)?.name;
    // SIOCBRADDBR takes the name itself, not an ifreq.
    ioctl(sock, SIOCBRADDBR, &mut n)?;
    let mut r = IfReq::new(name)?;
    r.set_ether(address(name));
    ioctl(sock, SIOCSIFHWADDR, &mut r)?;
    ifreq::bring_up(sock, name)
}

/// A locally administered unicast address from the bridge's name, the
/// same on every run (FNV-1a, as vm-run's default MACs).
pub fn address(name: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let h = h.to_le_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
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
