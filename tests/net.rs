//! virtio-net on taps from vm-net, with Linux guests in the emulated test
//! host (Debian's virtio_net): a local interface configured by vm-run's
//! DHCP server that pings the host and moves 100 MB each way intact, and
//! two guests on one bridge that ping each other. One host boot.

use std::sync::OnceLock;

use vm_tests::testhost::{self, await_in, guest, Case, Report, Scenario};

/// busybox udhcpc's script: configure the interface it was given.
const DHCP: &str = "echo \\#!/bin/sh > /tmp/u; \
    echo [ \\$1 = bound ] \\|\\| exit 0 >> /tmp/u; \
    echo ifconfig \\$interface \\$ip netmask \\$subnet >> /tmp/u; \
    echo echo LEASE \\$ip \\$subnet \\$router \\$dns \\> /dev/console >> /tmp/u; \
    echo echo \\$router \\> /tmp/gw >> /tmp/u; chmod +x /tmp/u; \
    ifconfig eth0 up; udhcpc -i eth0 -n -q -s /tmp/u; G=$(cat /tmp/gw)";

fn scenarios() -> Vec<Scenario> {
    let local = guest(
        "-N local -m 512M",
        "bzImage",
        &format!(
            "run=\"{DHCP}; cat /sys/class/net/eth0/address; ping -c 3 $G | tail -n 2; \
             dd if=/dev/urandom of=/tmp/data bs=1M count=100 2>/dev/null; \
             echo GUEST-SUM $(sha256sum < /tmp/data); nc $G 9000 < /tmp/data; echo SENT; \
             sleep 2; nc $G 9001 > /tmp/back; echo BACK-SUM $(sha256sum < /tmp/back)\""
        ),
    );
    let a = guest(
        "-N alpha -m 256M",
        "bzImage",
        "run=\"ifconfig eth0 10.9.0.1 netmask 255.255.255.0 up; echo A-UP; sleep 60\"",
    );
    let b = guest(
        "-N beta -m 256M",
        "bzImage",
        "run=\"ifconfig eth0 10.9.0.2 netmask 255.255.255.0 up; sleep 1; ping -c 3 10.9.0.1 | tail -n 2\"",
    );
    vec![
        Scenario {
            name: "local",
            script: format!(
                "ip link set lo up\n\
                 (tail -f /dev/null | nc -l -p 9000 > /tmp/recv) &\n\
                 vm-net -L {local} > /tmp/l.log 2>&1 &\nP=$!\n\
                 {}\ntimeout 120 nc -l -p 9001 < /tmp/recv\n\
                 echo HOST-GOT $(sha256sum < /tmp/recv)\n\
                 wait $P; echo VMRUN-RC=$?\ncat /tmp/l.log",
                await_in("/tmp/l.log", "SENT", 180),
            ),
        },
        Scenario {
            name: "bridge",
            script: format!(
                "vm-net -B br0 {a} > /tmp/a.log 2>&1 &\n{}\n\
                 vm-net -B br0 {b} > /tmp/b.log 2>&1; echo B-RC=$?\n\
                 vm-ctl stop -f -w alpha\ncat /tmp/b.log",
                await_in("/tmp/a.log", "A-UP", 60),
            ),
        },
        Scenario {
            name: "bad-fd",
            script: "VM_NET_FDS=77 vm-run -b /guest/bzImage; echo RC=$?\n\
                     vm-run -n 0 -b /guest/bzImage < /dev/null; echo RC=$?\n\
                     vm-run -n 5 -b /guest/bzImage 5< /dev/null; echo RC=$?"
                .into(),
        },
    ]
}

fn case(name: &str) -> &'static Case {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT
        .get_or_init(|| testhost::run("net", &scenarios(), false))
        .case(name)
}

fn assert_has(c: &Case, want: &str) {
    assert!(c.output.contains(want), "no {want:?} in:\n{}", c.output);
}

fn field<'a>(c: &'a Case, key: &str) -> &'a str {
    c.output
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in:\n{}", c.output))
}

#[test]
fn local_interface_gets_its_address_by_dhcp_and_pings_the_host() {
    let c = case("local");
    let lease: Vec<&str> = field(c, "LEASE ").split_whitespace().collect();
    assert!(lease.len() >= 3, "{}", c.output);
    let (ip, mask, router) = (lease[0], lease[1], lease[2]);
    assert_has(c, "VMRUN-RC=0");
    assert_eq!(mask, "255.255.255.254");
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    let router: std::net::Ipv4Addr = router.parse().unwrap();
    assert_eq!(u32::from(ip), u32::from(router) + 1);
    assert_eq!(ip.octets()[..2], [100, 64]);
    assert_has(c, "3 packets transmitted, 3 packets received");
    // The MAC is vm-run's stable one for a named guest: locally
    // administered, unicast.
    assert!(c.output.contains("\nfe:"), "{}", c.output);
}

#[test]
fn a_hundred_megabytes_each_way_arrive_intact() {
    let c = case("local");
    let sent = field(c, "GUEST-SUM ")
        .split_whitespace()
        .next()
        .unwrap_or("");
    assert_eq!(sent.len(), 64, "{}", c.output);
    assert_eq!(
        field(c, "HOST-GOT ").split_whitespace().next(),
        Some(sent),
        "guest to host"
    );
    assert_eq!(
        field(c, "BACK-SUM ").split_whitespace().next(),
        Some(sent),
        "host to guest"
    );
}

#[test]
fn two_guests_on_a_bridge_ping_each_other() {
    let c = case("bridge");
    assert_has(c, "3 packets transmitted, 3 packets received");
    assert_has(c, "B-RC=0");
}

#[test]
fn a_bad_tap_fd_is_a_clear_error() {
    let c = case("bad-fd");
    assert_has(c, "vm-run: fd 77: not an open file descriptor");
    assert_has(
        c,
        "vm-run: fd 0: standard input, output or error, not a tap",
    );
    assert_has(c, "vm-run: fd 5: not a tap device (from vm-net)");
    assert_eq!(c.output.matches("RC=64").count(), 3, "{}", c.output);
}
