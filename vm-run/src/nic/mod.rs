//! The host side of a NIC: the tap vm-net left open for us, and the DHCP
//! responder that gives a guest on vm-net's local /31 its address.

pub mod dhcp;
pub mod tap;

use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use dhcp::Lease;

/// NICs a guest may have.
pub const MAX_NICS: usize = 8;

/// One NIC: the tap's fd and what vm-net (or -n) says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    pub fd: RawFd,
    pub lladdr: Option<[u8; 6]>,
    /// vm-net -L: the guest is offered this by DHCP.
    pub lease: Option<Lease>,
    /// vm-receive: the MAC the NIC gets once the guest has let go of its
    /// old one (lladdr), by a replug.
    pub renew: Option<[u8; 6]>,
}

/// What a guest's NICs must be together: few enough, one tap each.
pub fn check(nics: &[NicSpec]) -> Result<(), String> {
    if nics.len() > MAX_NICS {
        return Err(format!("at most {MAX_NICS} NICs"));
    }
    for (i, n) in nics.iter().enumerate() {
        if nics[..i].iter().any(|m| m.fd == n.fd) {
            return Err(format!("fd {}: given for two NICs", n.fd));
        }
    }
    Ok(())
}

/// `-n FD[,lladdr=MAC]`.
pub fn parse_option(s: &str) -> Result<NicSpec, String> {
    let mut items = s.split(',');
    let fd = parse_fd(items.next().unwrap_or(""))?;
    let mut spec = NicSpec {
        fd,
        lladdr: None,
        lease: None,
        renew: None,
    };
    for item in items {
        match item.split_once('=') {
            Some(("lladdr", v)) => spec.lladdr = Some(parse_mac(v)?),
            _ => return Err(format!("{item}: not lladdr=MAC")),
        }
    }
    Ok(spec)
}

/// The NICs vm-net passed: `VM_NET_FDS` ("3 4") and per fd `VM_NET_<fd>`
/// ("lladdr=... host=... guest=... dns=..."; other keys are ignored).
/// `var` looks an environment variable up. Errors name the variable.
pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Vec<NicSpec>, String> {
    let Some(fds) = var("VM_NET_FDS") else {
        return Ok(Vec::new());
    };
    let mut nics = Vec::new();
    for word in fds.split_ascii_whitespace() {
        let fd = parse_fd(word).map_err(|e| format!("VM_NET_FDS: {e}"))?;
        let key = format!("VM_NET_{fd}");
        let mut spec = NicSpec {
            fd,
            lladdr: None,
            lease: None,
            renew: None,
        };
        let (mut host, mut guest, mut dns) = (None, None, None);
        for item in var(&key).unwrap_or_default().split_ascii_whitespace() {
            let bad = |e: String| format!("{key}: {e}");
            let ip = |v: &str| {
                v.parse::<Ipv4Addr>()
                    .map_err(|_| bad(format!("{item}: not an IPv4 address")))
            };
            match item.split_once('=') {
                Some(("lladdr", v)) => spec.lladdr = Some(parse_mac(v).map_err(bad)?),
                Some(("host", v)) => host = Some(ip(v)?),
                Some(("guest", v)) => guest = Some(ip(v)?),
                Some(("dns", v)) => dns = Some(ip(v)?),
                _ => {}
            }
        }
        if let Some(guest) = guest {
            let host = host.ok_or_else(|| format!("{key}: guest= without host="))?;
            spec.lease = Some(Lease { host, guest, dns });
        }
        nics.push(spec);
    }
    Ok(nics)
}

fn parse_fd(s: &str) -> Result<RawFd, String> {
    match s.parse::<RawFd>() {
        Ok(fd) if fd >= 0 => Ok(fd),
        _ => Err(format!("{s}: not a file descriptor number")),
    }
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{s}: not a MAC address (xx:xx:xx:xx:xx:xx)");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.is_empty() || p.len() > 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!("{s}: a multicast address"));
    }
    Ok(mac)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_and_environment() {
        assert_eq!(
            parse_option("5,lladdr=fe:e1:ba:d0:00:01").unwrap(),
            NicSpec {
                fd: 5,
                lladdr: Some([0xfe, 0xe1, 0xba, 0xd0, 0, 1]),
                lease: None,
                renew: None
            }
        );
        for bad in [
            "",
            "x",
            "-1",
            "3,lladdr=1:2:3",
            "3,ro",
            "3,lladdr=01:00:00:00:00:00",
        ] {
            assert!(parse_option(bad).is_err(), "{bad}");
        }
        let env = |k: &str| match k {
            "VM_NET_FDS" => Some("3  4".to_string()),
            "VM_NET_3" => Some(
                "lladdr=fe:e1:ba:d0:00:07 host=100.64.0.2 guest=100.64.0.3 dns=192.0.2.53 new=1"
                    .into(),
            ),
            _ => None,
        };
        let nics = from_env(env).unwrap();
        assert_eq!(nics.len(), 2);
        assert_eq!(nics[0].lladdr, Some([0xfe, 0xe1, 0xba, 0xd0, 0, 7]));
        let lease = nics[0].lease.as_ref().unwrap();
        assert_eq!(lease.guest, Ipv4Addr::new(100, 64, 0, 3));
        assert_eq!(lease.dns, Some(Ipv4Addr::new(192, 0, 2, 53)));
        assert_eq!(
            nics[1],
            NicSpec {
                fd: 4,
                lladdr: None,
                lease: None,
                renew: None
            }
        );
        assert!(from_env(|_| None).unwrap().is_empty());
        let bad = |fds: &'static str, v3: &'static str| {
            from_env(move |k| match k {
                "VM_NET_FDS" => Some(fds.into()),
                "VM_NET_3" => Some(v3.into()),
                _ => None,
            })
            .unwrap_err()
        };
        assert_eq!(
            bad("3 x", ""),
            "VM_NET_FDS: x: not a file descriptor number"
        );
        assert!(bad("3", "guest=1.2.3.4").starts_with("VM_NET_3: "));
        assert!(bad("3", "host=300.1.1.1").starts_with("VM_NET_3: host=300.1.1.1"));
    }
}
