//! vmd's local interface, guest side: a DHCP server for exactly one
//! client on one NIC. It answers DISCOVER with OFFER and REQUEST with ACK
//! for the guest address vm-net chose, the host as router, a /31 mask and
//! the host's DNS server. Frames are Ethernet; anything that is not a
//! well-formed BOOTREQUEST to port 67 is not ours and goes to the tap.

use std::net::Ipv4Addr;

/// The addresses vm-net announced in VM_NET_<fd>.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub host: Ipv4Addr,
    pub guest: Ipv4Addr,
    pub dns: Option<Ipv4Addr>,
}

const ETH: usize = 14;
const IP: usize = 20;
const UDP: usize = 8;
/// BOOTP's fixed part, up to and including the magic cookie.
const BOOTP: usize = 240;
const COOKIE: [u8; 4] = [99, 130, 83, 99];
const LEASE_SECS: u32 = 86400;
/// The source MAC of our replies; the guest learns the host's real one by
/// ARP when it talks to its router.
const SERVER_MAC: [u8; 6] = [0xfe, 0xe1, 0xba, 0xd0, 0xff, 0xff];

/// If `frame` is a DHCP request this server answers, the reply frame.
pub fn answer(lease: &Lease, frame: &[u8]) -> Option<Vec<u8>> {
    if frame.len() < ETH + IP + UDP + BOOTP || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[ETH..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < IP || ip[9] != 17 || ip.len() < ihl + UDP + BOOTP {
        return None;
    }
    let udp = &ip[ihl..];
    if udp[2..4] != 67u16.to_be_bytes() {
        return None;
    }
    let b = &udp[UDP..];
    if b[0] != 1 || b[1] != 1 || b[2] != 6 || b[236..240] != COOKIE {
        return None;
    }
    let kind = match option(&b[BOOTP..], 53)?.first()? {
        1 => 2, // DISCOVER -> OFFER
        3 => 5, // REQUEST -> ACK
        _ => return None,
    };
    let xid = &b[4..8];
    let flags = &b[10..12];
    let chaddr = &b[28..34];

    let mut bootp = vec![0u8; BOOTP];
    bootp[0] = 2; // BOOTREPLY
    bootp[1] = 1;
    bootp[2] = 6;
    bootp[4..8].copy_from_slice(xid);
    bootp[10..12].copy_from_slice(flags);
    bootp[16..20].copy_from_slice(&lease.guest.octets());
    bootp[20..24].copy_from_slice(&lease.host.octets());
    bootp[28..34].copy_from_slice(chaddr);
    bootp[236..240].copy_from_slice(&COOKIE);
    let mut opt = |code: u8, val: &[u8]| {
        bootp.push(code);
        bootp.push(val.len() as u8);
        bootp.extend_from_slice(val);
    };
    opt(53, &[kind]);
    opt(54, &lease.host.octets());
    opt(51, &LEASE_SECS.to_be_bytes());
    opt(1, &[255, 255, 255, 254]);
    opt(3, &lease.host.octets());
    if let Some(dns) = lease.dns {
        opt(6, &dns.octets());
    }
    bootp.push(255);

    let udp_len = UDP + bootp.len();
    let mut out = Vec::with_capacity(ETH + IP + udp_len);
    out.extend_from_slice(chaddr);
    out.extend_from_slice(&SERVER_MAC);
    out.extend_from_slice(&[0x08, 0x00]);
    let mut iph = [0u8; IP];
    iph[0] = 0x45;
    iph[2..4].copy_from_slice(&((IP + udp_len) as u16).to_be_bytes());
    iph[8] = 64;
    iph[9] = 17;
    iph[12..16].copy_from_slice(&lease.host.octets());
    // Broadcast: the client has no address yet.
    iph[16..20].copy_from_slice(&[255; 4]);
    let sum = checksum(&iph);
    iph[10..12].copy_from_slice(&sum.to_be_bytes());
    out.extend_from_slice(&iph);
    out.extend_from_slice(&67u16.to_be_bytes());
    out.extend_from_slice(&68u16.to_be_bytes());
    out.extend_from_slice(&(udp_len as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]); // no UDP checksum, as IPv4 allows
    out.extend_from_slice(&bootp);
    Some(out)
}

/// The value of DHCP option `code`, walking the options safely.
fn option(mut opts: &[u8], code: u8) -> Option<&[u8]> {
    loop {
        match *opts {
            [255, ..] | [] => return None,
            [0, ref rest @ ..] => opts = rest,
            [c, len, ref rest @ ..] => {
                let len = usize::from(len);
                let val = rest.get(..len)?;
                if c == code {
                    return Some(val);
                }
                opts = &rest[len..];
            }
            [_] => return None,
        }
    }
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: u8, extra_opts: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0x08, 0x00]);
        let mut bootp = vec![0u8; BOOTP];
        bootp[0] = 1;
        bootp[1] = 1;
        bootp[2] = 6;
        bootp[4..8].copy_from_slice(&[1, 2, 3, 4]);
        bootp[28..34].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        bootp[236..240].copy_from_slice(&COOKIE);
        bootp.extend_from_slice(extra_opts);
        bootp.extend_from_slice(&[53, 1, kind, 255]);
        let mut ip = [0u8; IP];
        ip[0] = 0x45;
        ip[9] = 17;
        f.extend_from_slice(&ip);
        f.extend_from_slice(&68u16.to_be_bytes());
        f.extend_from_slice(&67u16.to_be_bytes());
        f.extend_from_slice(&((UDP + bootp.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&bootp);
        f
    }

    const LEASE: Lease = Lease {
        host: Ipv4Addr::new(100, 64, 0, 4),
        guest: Ipv4Addr::new(100, 64, 0, 5),
        dns: Some(Ipv4Addr::new(192, 0, 2, 53)),
    };

    #[test]
    fn discover_gets_an_offer_and_request_an_ack() {
        for (ask, want) in [(1, 2), (3, 5)] {
            let r = answer(&LEASE, &request(ask, &[0, 0, 12, 1, b'x'])).expect("answered");
            assert_eq!(&r[..6], &[2, 0, 0, 0, 0, 1]);
            let ip = &r[ETH..ETH + IP];
            assert_eq!(checksum(ip), 0, "IP header checksum");
            let b = &r[ETH + IP + UDP..];
            assert_eq!(b[0], 2);
            assert_eq!(&b[4..8], &[1, 2, 3, 4], "xid");
            assert_eq!(&b[16..20], &[100, 64, 0, 5], "yiaddr");
            let opts = &b[BOOTP..];
            assert_eq!(option(opts, 53), Some(&[want][..]));
            assert_eq!(option(opts, 1), Some(&[255, 255, 255, 254][..]));
            assert_eq!(option(opts, 3), Some(&[100, 64, 0, 4][..]));
            assert_eq!(option(opts, 6), Some(&[192, 0, 2, 53][..]));
        }
    }

    #[test]
    fn anything_else_is_not_ours() {
        let good = request(1, &[]);
        assert!(answer(&LEASE, &request(7, &[])).is_none(), "RELEASE");
        for cut in [0, 20, 100, good.len() - 10] {
            let _ = answer(&LEASE, &good[..cut]);
        }
        let mut to_other_port = good.clone();
        to_other_port[ETH + IP + 3] = 53;
        assert!(answer(&LEASE, &to_other_port).is_none());
        // Options that run past the end, or loop on padding.
        let mut bad = request(1, &[]);
        let at = ETH + IP + UDP + BOOTP;
        bad.truncate(at);
        bad.extend_from_slice(&[53, 200, 1]);
        assert!(answer(&LEASE, &bad).is_none());
        let mut pads = request(1, &[]);
        pads.truncate(at);
        pads.extend_from_slice(&[0; 100]);
        assert!(answer(&LEASE, &pads).is_none());
    }
}
