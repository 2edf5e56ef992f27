//! A DHCP responder for one guest on vm-net's local /31 (vmd's "local
//! interface"): it answers the guest's DISCOVER and REQUEST with the one
//! address vm-net chose, the host's end of the /31 as router, and a DNS
//! server when the host has one. No leases to remember: there is one
//! client and one address. The frames never reach the tap.

use std::net::Ipv4Addr;

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const PROTO_UDP: u8 = 17;
const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;
/// op .. chaddr .. file, then the magic cookie and the options.
const BOOTP_LEN: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const OPT_PAD: u8 = 0;
const OPT_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_REQUESTED: u8 = 50;
const OPT_LEASE: u8 = 51;
const OPT_TYPE: u8 = 53;
const OPT_SERVER: u8 = 54;
const OPT_END: u8 = 255;
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;
/// A day; the guest renews by unicast to the host, which we answer too.
const LEASE_SECS: u32 = 86400;
/// The bytes of a frame the responder needs to decide it is DHCP.
pub const PEEK_LEN: usize = ETH_HLEN + IP_HLEN + UDP_HLEN;
/// A DHCP message larger than this is not one a client sends.
pub const MAX_FRAME: usize = 1514;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The host's end of the /31: router and server identifier.
    pub host: Ipv4Addr,
    /// The guest's address.
    pub guest: Ipv4Addr,
    pub dns: Option<Ipv4Addr>,
}

/// Whether the first bytes of a guest's frame are a DHCP client's
/// datagram (IPv4, UDP, 68 to 67): then the whole frame goes to `reply`.
pub fn is_dhcp(head: &[u8]) -> bool {
    head.len() >= PEEK_LEN
        && be16(head, 12) == ETHERTYPE_IPV4
        && head[ETH_HLEN] >> 4 == 4
        && head[ETH_HLEN + 9] == PROTO_UDP
        && udp_ports(head) == Some((CLIENT_PORT, SERVER_PORT))
}

fn udp_ports(frame: &[u8]) -> Option<(u16, u16)> {
    let ihl = usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    let udp = ETH_HLEN.checked_add(ihl)?;
    if ihl < IP_HLEN || frame.len() < udp + UDP_HLEN {
        return None;
    }
    Some((be16(frame, udp), be16(frame, udp + 2)))
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The answer to a client's frame, as an Ethernet frame from `server_mac`
/// to the client; None when the frame asks nothing we answer.
pub fn reply(lease: &Lease, frame: &[u8], server_mac: [u8; 6]) -> Option<Vec<u8>> {
    if !is_dhcp(frame) {
        return None;
    }
    let ihl = usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    let bootp = frame.get(ETH_HLEN + ihl + UDP_HLEN..)?;
    if bootp.len() < BOOTP_LEN + MAGIC.len() || bootp[0] != 1 || bootp[236..240] != MAGIC {
        return None;
    }
    let (mut kind, mut requested) = (None, None);
    let mut opts = &bootp[240..];
    while let Some((&code, rest)) = opts.split_first() {
        match code {
            OPT_PAD => {
                opts = rest;
                continue;
            }
            OPT_END => break,
            _ => {}
        }
        let (&len, rest) = rest.split_first()?;
        let body = rest.get(..usize::from(len))?;
        match (code, body) {
            (OPT_TYPE, [t]) => kind = Some(*t),
            (OPT_REQUESTED, [a, b, c, d]) => requested = Some(Ipv4Addr::new(*a, *b, *c, *d)),
            _ => {}
        }
        opts = &rest[usize::from(len)..];
    }
    let answer = match kind? {
        DISCOVER => OFFER,
        // A REQUEST names our address (SELECTING, INIT-REBOOT) or carries
        // it in ciaddr (RENEWING): anything else is a NAK.
        REQUEST => {
            let ciaddr = Ipv4Addr::new(bootp[12], bootp[13], bootp[14], bootp[15]);
            let asked = requested.unwrap_or(ciaddr);
            if asked == lease.guest {
                ACK
            } else {
                NAK
            }
        }
        _ => return None,
    };

    let mut msg = vec![0u8; BOOTP_LEN];
    msg[0] = 2; // BOOTREPLY
    msg[1..3].copy_from_slice(&bootp[1..3]); // htype, hlen
    msg[4..8].copy_from_slice(&bootp[4..8]); // xid
    msg[10..12].copy_from_slice(&bootp[10..12]); // flags
    if answer != NAK {
        msg[16..20].copy_from_slice(&lease.guest.octets()); // yiaddr
    }
    msg[28..44].copy_from_slice(&bootp[28..44]); // chaddr
    msg.extend_from_slice(&MAGIC);
    let mut opt = |code: u8, body: &[u8]| {
        msg.push(code);
        msg.push(body.len() as u8);
        msg.extend_from_slice(body);
    };
    opt(OPT_TYPE, &[answer]);
    opt(OPT_SERVER, &lease.host.octets());
    if answer != NAK {
        opt(OPT_LEASE, &LEASE_SECS.to_be_bytes());
        opt(OPT_MASK, &[255, 255, 255, 254]);
        opt(OPT_ROUTER, &lease.host.octets());
        if let Some(dns) = lease.dns {
            opt(OPT_DNS, &dns.octets());
        }
    }
    msg.push(OPT_END);

    // To the broadcast address: the client has no address yet, and its
    // raw socket takes broadcast whatever the BROADCAST flag says.
    let udp_len = UDP_HLEN + msg.len();
    let ip_len = IP_HLEN + udp_len;
    let mut out = Vec::with_capacity(ETH_HLEN + ip_len);
    out.extend_from_slice(&[0xff; 6]);
    out.extend_from_slice(&server_mac);
    out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip = out.len();
    out.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, PROTO_UDP, 0, 0]);
    out[ip + 2..ip + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    out.extend_from_slice(&lease.host.octets());
    out.extend_from_slice(&Ipv4Addr::BROADCAST.octets());
    let sum = checksum(&out[ip..ip + IP_HLEN]);
    out[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
    out.extend_from_slice(&SERVER_PORT.to_be_bytes());
    out.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    out.extend_from_slice(&(udp_len as u16).to_be_bytes());
    // No UDP checksum: optional over IPv4, and nothing here corrupts it.
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&msg);
    Some(out)
}

/// The Internet checksum (RFC 1071).
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: [u8; 6] = [0xfe, 0xe1, 0xba, 0xd0, 0, 1];
    const SERVER: [u8; 6] = [0xfe, 0xe1, 0xba, 0xd0, 0xff, 0xff];

    fn lease() -> Lease {
        Lease {
            host: Ipv4Addr::new(100, 64, 0, 2),
            guest: Ipv4Addr::new(100, 64, 0, 3),
            dns: Some(Ipv4Addr::new(192, 0, 2, 53)),
        }
    }

    /// A client's message as busybox udhcpc sends it.
    fn client(kind: u8, requested: Option<Ipv4Addr>) -> Vec<u8> {
        let mut bootp = vec![0u8; BOOTP_LEN];
        bootp[0] = 1;
        bootp[1] = 1;
        bootp[2] = 6;
        bootp[4..8].copy_from_slice(&[1, 2, 3, 4]);
        bootp[28..34].copy_from_slice(&CLIENT);
        bootp.extend_from_slice(&MAGIC);
        bootp.extend_from_slice(&[OPT_TYPE, 1, kind, OPT_PAD]);
        if let Some(a) = requested {
            bootp.extend_from_slice(&[OPT_REQUESTED, 4]);
            bootp.extend_from_slice(&a.octets());
        }
        bootp.push(OPT_END);
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&CLIENT);
        f.extend_from_slice(&[8, 0, 0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[0, 0, 0, 0, 255, 255, 255, 255, 0, 68, 0, 67, 0, 0, 0, 0]);
        f.extend_from_slice(&bootp);
        f
    }

    fn options(reply: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut o = &reply[PEEK_LEN + 240..];
        let mut v = Vec::new();
        while o[0] != OPT_END {
            v.push((o[0], o[2..2 + usize::from(o[1])].to_vec()));
            o = &o[2 + usize::from(o[1])..];
        }
        v
    }

    #[test]
    fn discover_gets_an_offer_request_an_ack() {
        let offer = reply(&lease(), &client(DISCOVER, None), SERVER).unwrap();
        assert_eq!(&offer[..6], &[0xff; 6]);
        assert_eq!(&offer[6..12], &SERVER);
        assert_eq!(checksum(&offer[14..34]), 0, "IP header checksum");
        let bootp = &offer[PEEK_LEN..];
        assert_eq!(bootp[0], 2);
        assert_eq!(&bootp[4..8], &[1, 2, 3, 4]);
        assert_eq!(&bootp[16..20], &[100, 64, 0, 3]);
        assert_eq!(&bootp[28..34], &CLIENT);
        let o = options(&offer);
        assert!(o.contains(&(OPT_TYPE, vec![OFFER])));
        assert!(o.contains(&(OPT_MASK, vec![255, 255, 255, 254])));
        assert!(o.contains(&(OPT_ROUTER, vec![100, 64, 0, 2])));
        assert!(o.contains(&(OPT_DNS, vec![192, 0, 2, 53])));
        let ack = reply(&lease(), &client(REQUEST, Some(lease().guest)), SERVER).unwrap();
        assert!(options(&ack).contains(&(OPT_TYPE, vec![ACK])));
        let nak = reply(
            &lease(),
            &client(REQUEST, Some(Ipv4Addr::new(10, 0, 0, 9))),
            SERVER,
        )
        .unwrap();
        assert!(options(&nak).contains(&(OPT_TYPE, vec![NAK])));
        assert_eq!(&nak[PEEK_LEN + 16..PEEK_LEN + 20], &[0; 4]);
    }

    #[test]
    fn other_frames_and_garbage_get_nothing() {
        let l = lease();
        assert!(reply(&l, &[], SERVER).is_none());
        assert!(reply(&l, &[0xff; 60], SERVER).is_none());
        let mut f = client(DISCOVER, None);
        f[PEEK_LEN + 237] = 0; // bad cookie
        assert!(reply(&l, &f, SERVER).is_none());
        // Options that run off the end, at every truncation.
        let f = client(REQUEST, Some(l.guest));
        for n in 0..f.len() {
            let _ = reply(&l, &f[..n], SERVER);
        }
        let mut f = client(DISCOVER, None);
        f[ETH_HLEN] = 0x4f; // IHL past the frame
        assert!(reply(&l, &f, SERVER).is_none());
        let mut f = client(DISCOVER, None);
        f[ETH_HLEN] = 0x41; // IHL below 20
        assert!(!is_dhcp(&f));
    }
}

/// What the fuzz target `dhcp` runs: the first byte says whether the
/// host has a DNS server; the rest is a frame from the guest, as the NIC
/// hands it to `reply`. A reply must be a well-formed IPv4 datagram.
#[cfg(any(test, fuzzing))]
pub mod fuzz {
    use super::*;

    const SERVER: [u8; 6] = [0xfe, 0xe1, 0xba, 0xd0, 0, 0xfe];

    pub fn frame(data: &[u8]) {
        let Some((&dns, frame)) = data.split_first() else {
            return;
        };
        let lease = Lease {
            host: Ipv4Addr::new(100, 64, 0, 2),
            guest: Ipv4Addr::new(100, 64, 0, 3),
            dns: (dns & 1 != 0).then_some(Ipv4Addr::new(192, 0, 2, 53)),
        };
        if let Some(out) = reply(&lease, frame, SERVER) {
            assert_eq!(checksum(&out[ETH_HLEN..ETH_HLEN + IP_HLEN]), 0);
            assert_eq!(usize::from(be16(&out, ETH_HLEN + 2)), out.len() - ETH_HLEN);
            assert!(out.len() <= MAX_FRAME);
        }
    }

    /// The seeds of vm-run/fuzz/corpus/dhcp: what busybox udhcpc sends.
    pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        let client = |kind: u8, requested: Option<[u8; 4]>, ihl: u8| {
            let mut bootp = vec![0u8; BOOTP_LEN];
            bootp[..3].copy_from_slice(&[1, 1, 6]);
            bootp[4..8].copy_from_slice(&[1, 2, 3, 4]);
            bootp[28..34].copy_from_slice(&[0xfe, 0xe1, 0xba, 0xd0, 0, 1]);
            bootp.extend_from_slice(&MAGIC);
            bootp.extend_from_slice(&[OPT_TYPE, 1, kind, OPT_PAD]);
            if let Some(a) = requested {
                bootp.extend_from_slice(&[OPT_REQUESTED, 4]);
                bootp.extend_from_slice(&a);
            }
            bootp.extend_from_slice(&[55, 3, 1, 3, 6, OPT_END]);
            let mut f = vec![1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
            f.extend_from_slice(&[0xfe, 0xe1, 0xba, 0xd0, 0, 1, 8, 0]);
            f.extend_from_slice(&[0x40 | ihl, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0]);
            f.extend_from_slice(&[0, 0, 0, 0, 255, 255, 255, 255]);
            f.resize(1 + ETH_HLEN + usize::from(ihl) * 4, 0);
            f.extend_from_slice(&[0, 68, 0, 67, 0, 0, 0, 0]);
            f.extend_from_slice(&bootp);
            f
        };
        let mut renew = client(REQUEST, None, 5);
        renew[1 + PEEK_LEN + 12..1 + PEEK_LEN + 16].copy_from_slice(&[100, 64, 0, 3]);
        vec![
            ("discover", client(DISCOVER, None, 5)),
            ("request", client(REQUEST, Some([100, 64, 0, 3]), 5)),
            ("request_other", client(REQUEST, Some([10, 0, 0, 9]), 5)),
            ("renew", renew),
            ("ip_options", client(DISCOVER, None, 6)),
            ("release", client(7, None, 5)),
        ]
    }

    #[cfg(test)]
    mod tests {
        use crate::virtio::fuzz::support;

        #[test]
        fn seeds_get_their_answers() {
            let seeds = super::seeds();
            let lease = super::Lease {
                host: super::Ipv4Addr::new(100, 64, 0, 2),
                guest: super::Ipv4Addr::new(100, 64, 0, 3),
                dns: None,
            };
            let kinds: Vec<Option<u8>> = seeds
                .iter()
                .map(|(_, d)| {
                    let r = super::reply(&lease, &d[1..], super::SERVER)?;
                    Some(r[super::PEEK_LEN + 242])
                })
                .collect();
            assert_eq!(kinds, [Some(2), Some(5), Some(6), Some(5), Some(2), None]);
        }

        #[test]
        fn random_frames_do_not_crash_the_dhcp_responder() {
            for data in support::inputs(0x9e37_79b9_7f4a_7c15, 500, 600, &super::seeds()) {
                super::frame(&data);
            }
        }

        #[test]
        fn dhcp_corpus_is_current() {
            support::corpus_is_current("dhcp", &super::seeds());
        }

        #[test]
        #[ignore]
        fn write_seeds() {
            support::write_corpus("dhcp", &super::seeds());
        }
    }
}
