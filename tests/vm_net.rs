//! vm-net on this machine's real /dev/net/tun, each case in a network
//! (and mount, for its sysfs) namespace of its own, so that the
//! machine's own interfaces are never touched. What the exec'd program
//! sees is the test's evidence: its fds, its environment, sysfs.

use std::process::{Command, Stdio};
use std::time::Duration;

use vm_tests::{bin, wait_output, Output};

/// Runs `script` with vm-net on PATH in fresh net and mount namespaces.
fn netns(script: &str) -> Output {
    let bins = bin("vm-net");
    let bins = bins.parent().expect("bin dir").display().to_string();
    let child = Command::new("unshare")
        .args(["-n", "-m", "sh", "-c"])
        .arg(format!(
            "mount -t sysfs sysfs /sys && ip link set lo up && PATH={bins}:$PATH && {script}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    wait_output(child, Duration::from_secs(30))
}

fn ok(o: &Output) -> &str {
    assert_eq!((o.status, o.stderr.as_str()), (0, ""), "{o:?}");
    &o.stdout
}

fn value<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
}

/// What the program vm-net runs reports about the tap on `$fd`.
const REPORT: &str = "sh -c 'echo FDS=$VM_NET_FDS; for fd in $VM_NET_FDS; do \
    echo TARGET$fd=$(readlink /proc/self/fd/$fd); \
    n=$(sed -n \"s/^iff:[[:space:]]*//p\" /proc/self/fdinfo/$fd); echo NAME$fd=$n; \
    echo FLAGS$fd=$(cat /sys/class/net/$n/flags) TUN$fd=$(cat /sys/class/net/$n/tun_flags); \
    echo MASTER$fd=$(basename $(readlink /sys/class/net/$n/master) 2>/dev/null); \
    eval echo ENV$fd=\\$VM_NET_$fd; done; \
    printf OPEN=; ls /proc/$$/fd | tr \"\\n\" \" \"; echo'";

#[test]
fn a_tap_with_vnet_header_is_open_up_and_announced() {
    let out = netns(&format!("vm-net {REPORT}"));
    let out = ok(&out);
    let fd = value(out, "FDS=");
    assert_eq!(fd.split_whitespace().count(), 1, "{out}");
    assert_eq!(value(out, &format!("TARGET{fd}=")), "/dev/net/tun");
    assert!(
        value(out, &format!("NAME{fd}=")).starts_with("tap"),
        "{out}"
    );
    let flags = u32::from_str_radix(
        value(out, &format!("FLAGS{fd}="))
            .split(' ')
            .next()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    assert_eq!(flags & 1, 1, "not up: {out}");
    // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
    assert!(out.contains(&format!("TUN{fd}=0x5002")), "{out}");
    assert_eq!(value(out, &format!("ENV{fd}=")), "");
}

#[test]
fn two_in_a_row_give_two_taps_and_nothing_else_leaks() {
    // fd 7 is open in the caller: it must not reach the program.
    let out = netns(&format!(
        "exec 7</dev/null; vm-net -i first vm-net -i second {REPORT}"
    ));
    let out = ok(&out);
    let fds: Vec<&str> = value(out, "FDS=").split_whitespace().collect();
    assert_eq!(fds.len(), 2, "{out}");
    assert_eq!(value(out, &format!("NAME{}=", fds[0])), "first");
    assert_eq!(value(out, &format!("NAME{}=", fds[1])), "second");
    let mut open: Vec<&str> = value(out, "OPEN=").split_whitespace().collect();
    open.sort();
    let mut want = vec!["0", "1", "2", fds[0], fds[1]];
    want.sort();
    assert_eq!(open, want, "{out}");
}

#[test]
fn bridges_are_joined_and_made_when_asked() {
    let out = netns(&format!(
        "vm-net -B br7 -a FE:E1:BA:D0:00:07 {REPORT} && echo; \
         vm-net -b br7 -i second {REPORT}"
    ));
    let out = ok(&out);
    assert_eq!(out.matches("=br7").count(), 2, "{out}");
    assert!(out.contains("=lladdr=fe:e1:ba:d0:00:07"), "{out}");
    // The bridge vm-net made keeps an address of its own while taps come
    // and go; Linux's default would take the address of its lowest port.
    let out = netns(
        "a() { cat /sys/class/net/$1/address; }; vm-net -B br7 true; echo EMPTY=$(a br7); \
         vm-net -b br7 -i second sh -c 'cd /sys/class/net; echo WITH=$(cat br7/address) TAP=$(cat second/address)'; \
         echo AFTER=$(a br7) TYPE=$(cat /sys/class/net/br7/addr_assign_type)",
    );
    let out = ok(&out);
    let addr = value(out, "EMPTY=");
    assert!(addr.starts_with("02:"), "{out}");
    let with = value(out, "WITH=");
    assert!(with.starts_with(&format!("{addr} TAP=")), "{out}");
    assert!(!with.ends_with(&format!("TAP={addr}")), "{out}");
    // NET_ADDR_SET: given, not random or stolen from a port.
    assert_eq!(value(out, "AFTER="), format!("{addr} TYPE=3"), "{out}");
    let o = netns("vm-net -b br8 true");
    assert_eq!(
        (o.status, o.stderr.as_str()),
        (69, "vm-net: br8: no such bridge\n")
    );
}

#[test]
fn local_interfaces_get_a_31_and_tell_vm_run() {
    let out = netns(&format!("vm-net -L {REPORT}; ip -4 -o addr show"));
    let out = ok(&out);
    let fd = value(out, "FDS=");
    let env = value(out, &format!("ENV{fd}="));
    let get = |k: &str| {
        env.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {env}"))
    };
    let host: std::net::Ipv4Addr = get("host=").parse().unwrap();
    let guest: std::net::Ipv4Addr = get("guest=").parse().unwrap();
    assert_eq!(u32::from(guest), u32::from(host) + 1);
    assert_eq!(u32::from(host) & 1, 0);
    assert_eq!(
        u32::from(host) >> 22,
        u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0)) >> 22
    );
    // The tap is gone with the program, but the address was set on it.
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let dns = resolv
        .lines()
        .find_map(|l| l.strip_prefix("nameserver "))
        .filter(|d| d.parse::<std::net::Ipv4Addr>().is_ok());
    match dns {
        Some(d) => assert_eq!(get("dns="), d.trim()),
        None => assert!(!env.contains("dns="), "{env}"),
    }
    // In a fresh namespace the tap has the same index, so the same /31.
    let o = netns("vm-net -L ip -4 -o addr show");
    assert!(ok(&o).contains(&format!("inet {host}/31")), "{o:?}");
}

#[test]
fn dropping_to_a_user_leaves_no_capabilities() {
    let out = netns("vm-net -u nobody sh -c 'grep -E \"^(Uid|Gid|Groups|Cap)\" /proc/self/status'");
    let out = ok(&out);
    for line in [
        "Uid:\t65534\t65534\t65534\t65534",
        "Gid:\t65534\t65534\t65534\t65534",
    ] {
        assert!(out.contains(line), "{out}");
    }
    assert_eq!(value(out, "Groups:").trim(), "");
    for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(value(out, cap).trim(), "0000000000000000", "{out}");
    }
}

#[test]
fn errors_name_the_problem() {
    let cases: [(&str, i32, &str); 6] = [
        (
            "vm-net -i busy vm-net -i busy true",
            69,
            "vm-net: busy: busy (another program has it open)\n",
        ),
        (
            "vm-net -u no-such-user-here true",
            67,
            "vm-net: -u no-such-user-here: no such user no-such-user-here\n",
        ),
        (
            "vm-net -a 01:00:5e:00:00:01 true",
            64,
            "vm-net: -a 01:00:5e:00:00:01: a multicast address\n",
        ),
        (
            "vm-net no-such-program-here",
            127,
            "vm-net: no-such-program-here: No such file or directory (os error 2)\n",
        ),
        ("vm-net -i much-too-long-name true", 64, ""),
        (
            "setpriv --reuid=65534 --regid=65534 --clear-groups vm-net true",
            77,
            "",
        ),
    ];
    for (script, status, stderr) in cases {
        let o = netns(script);
        assert_eq!(o.status, status, "{script}: {o:?}");
        // One line naming the problem (usage errors add the usage).
        let first = o.stderr.lines().next().unwrap_or("");
        assert!(first.starts_with("vm-net: "), "{script}: {o:?}");
        if !stderr.is_empty() {
            assert_eq!(format!("{first}\n"), stderr, "{script}");
        }
    }
}
