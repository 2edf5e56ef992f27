//! -L, vmd's local interface: the tap gets the first address of a /31
//! from 100.64.0.0/10 and vm-run's DHCP responder offers the guest the
//! other one, with the host as gateway and the host's DNS server.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use crate::ifreq::{ioctl, IfReq, SIOCSIFADDR, SIOCSIFNETMASK};

const BASE: u32 = 0x6440_0000; // 100.64.0.0
/// /31s in a /10.
const PAIRS: u32 = 1 << 21;

/// The pair for the interface with kernel index `ifindex`: unique among
/// the interfaces that exist together, the same for the same index.
pub fn pair(ifindex: u32) -> (Ipv4Addr, Ipv4Addr) {
    let host = BASE + 2 * (ifindex % PAIRS);
    (Ipv4Addr::from(host), Ipv4Addr::from(host + 1))
}

pub fn configure(sock: &OwnedFd, name: &str, host: Ipv4Addr) -> io::Result<()> {
    let mut r = IfReq::new(name)?;
    r.set_inet(host);
    ioctl(sock, SIOCSIFADDR, &mut r)?;
    r.set_inet(Ipv4Addr::new(255, 255, 255, 254));
    ioctl(sock, SIOCSIFNETMASK, &mut r)
}

/// The first IPv4 nameserver of a resolv.conf.
pub fn nameserver(resolv_conf: &str) -> Option<Ipv4Addr> {
    resolv_conf.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next()? == "nameserver").then_some(())?;
        w.next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_31s_in_the_shared_space() {
        assert_eq!(
            pair(0),
            (Ipv4Addr::new(100, 64, 0, 0), Ipv4Addr::new(100, 64, 0, 1))
        );
        assert_eq!(
            pair(5),
            (Ipv4Addr::new(100, 64, 0, 10), Ipv4Addr::new(100, 64, 0, 11))
        );
        let (h, g) = pair(PAIRS - 1);
        assert_eq!(h, Ipv4Addr::new(100, 127, 255, 254));
        assert_eq!(g, Ipv4Addr::new(100, 127, 255, 255));
        assert_eq!(pair(PAIRS), pair(0));
    }

    #[test]
    fn first_ipv4_nameserver() {
        let conf =
            "# x\nsearch lan\nnameserver fe80::1\nnameserver 192.0.2.53\nnameserver 1.1.1.1\n";
        assert_eq!(nameserver(conf), Some(Ipv4Addr::new(192, 0, 2, 53)));
        assert_eq!(nameserver("search lan\n"), None);
    }
}
