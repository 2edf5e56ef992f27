//! virtio-net: what a stock Linux guest (Debian's virtio_net, busybox)
//! does over a tap that vm-net opened, in one boot of the emulated test
//! host: DHCP from vm-run's responder on vm-net's local /31 and a ping of
//! the host, 100 MB each way checked by SHA-256 on both ends, and two
//! guests on one bridge pinging each other. The bad-fd errors and a real
//! tap accepted by vm-run run on this machine, with the tiny guest.

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use vm_tests::testhost::{self, guest, Case, Report, Scenario};
use vm_tests::{bin, tiny_guest, vm_run, wait_output};

/// udhcpc's script in the guest, echoed line by line into /tmp/s (the
/// kernel command line allows no quotes: every special character is
/// escaped for the eval in the guest's /init).
const DHCP_SCRIPT: &str = "echo \\#!/bin/sh > /tmp/s; \
    echo [ \\$1 = bound ] \\|\\| exit 0 >> /tmp/s; \
    echo ip addr add \\$ip/\\$mask dev \\$interface >> /tmp/s; \
    echo ip route add default via \\$router >> /tmp/s; \
    echo echo DHCP-BOUND ip=\\$ip mask=\\$mask router=\\$router >> /tmp/s; \
    echo echo \\$router \\> /tmp/router >> /tmp/s; chmod +x /tmp/s";

/// 100 MiB.
const TRANSFER: u64 = 100 << 20;

/// Rounds of BOTH_WAYS bytes each way at once, and each round's limit.
/// Eight, not more: the test host's emulated CPU makes a guest
/// triple-fault now and then while taking an interrupt (tests/README.md),
/// about one such run of 20 rounds in two; so that three of them in a row
/// do not fail CI for the environment's sake (issue 19.11a's race is
/// caught every time by a unit test, here only now and then).
const ROUNDS: u32 = 8;
const BOTH_WAYS: u64 = 8 << 20;
const ROUND_SECS: u32 = 60;

/// The "both-ways" scenario: a guest with two vCPUs on a tap of vm-net's
/// (10.11.0.1/24 on the host, 10.11.0.2 in the guest) sends BOTH_WAYS
/// bytes to the host's nc while the host's other nc sends it as many,
/// ROUNDS times. The host's servers persist (nc -ll -e): the sink prints
/// what it got. The guest's script comes in a cpio appended to the
/// fixture's initramfs (the kernel command line allows no quotes).
const BOTH_WAYS_SCENARIO: &str = r#"mkdir -p /tmp/g
cat > /tmp/g/rounds.sh <<'EOF'
rounds=$1 size=$2 secs=$3 H=10.11.0.1
ip link set eth0 up; ip addr add 10.11.0.2/24 dev eth0
for i in $(seq 30); do ping -c 1 -W 1 $H > /dev/null && break; done
head -c $size /dev/urandom > /tmp/f
mkfifo /tmp/p; exec 3<>/tmp/p
for i in $(seq $rounds); do
	t0=$(date +%s)
	timeout -s KILL $secs nc $H 5004 <&3 > /tmp/b & r=$!
	timeout -s KILL $secs nc $H 5003 < /tmp/f; tx=$?
	wait $r; rx=$?
	n=$(wc -c < /tmp/b)
	echo "ROUND $i tx=$tx rx=$rx got=$n secs=$(($(date +%s) - t0))"
	if [ $tx != 0 ] || [ $rx != 0 ] || [ $n != $size ]; then
		s=/sys/class/net/eth0/statistics
		echo "STALLED in round $i: rx_packets=$(cat $s/rx_packets) tx_packets=$(cat $s/tx_packets)"
		grep virtio0 /proc/interrupts
		break
	fi
done
EOF
(cd /tmp/g && echo rounds.sh | cpio -o -H newc 2> /dev/null) | gzip > /tmp/g.cpio.gz
cat /guest/initrd.gz /tmp/g.cpio.gz > /tmp/initrd-both.gz
head -c @SIZE@ /dev/urandom > /tmp/out.bin
nc -ll -p 5003 -e sh -c 'echo SINK=$(wc -c) >&2' 2> /tmp/sink.log & sink=$!
nc -ll -p 5004 -e cat /tmp/out.bin & source=$!
vm-net -i bt1 sh -c 'ip addr add 10.11.0.1/24 dev bt1 || exit 1
	exec vm-run -v -c 2 -m 384M -b /guest/bzImage -i /tmp/initrd-both.gz 		-a "console=ttyS0 quiet run=\"sh /rounds.sh @ROUNDS@ @SIZE@ @SECS@\""' > /tmp/console 2>&1 & vm=$!
# -v: should the guest end early, its exit table says how (a triple
# fault counts as "shutdown"; the i8042 and 0xcf9 as their ports).
# A guest whose console says nothing for longer than a round may take
# has frozen whole (its own timeouts did not fire either): where each of
# vm-run's threads waits tells whether the vCPUs were in the guest or
# blocked in vm-run. Then it is stopped, so the test fails with that.
( n=-1 q=0
while sleep 5; do
	m=$(wc -c < /tmp/console)
	if [ "$m" != "$n" ]; then n=$m q=0; continue; fi
	q=$((q + 5)); [ $q -ge $((@SECS@ + 30)) ] || continue
	p=$(pidof vm-run) || exit 0
	echo "FROZEN: no console output for $q s; vm-run $p's threads:"
	for t in /proc/$p/task/*; do
		echo "  $(cat $t/comm) state=$(cut -d' ' -f3 $t/stat) wchan=$(cat $t/wchan)"
		sed 's/^/      /' $t/stack 2>/dev/null
	done
	kill -KILL $p
	exit 0
done ) & watch=$!
wait $vm; rc=$?
kill $watch $sink $source
cat /tmp/console /tmp/sink.log
exit $rc"#;

fn scenarios() -> Vec<Scenario> {
    // The guest sends 100 MiB of random bytes to the host, which sends
    // them back. busybox nc ends on EOF from either side, so each
    // receiving nc reads its stdin from a FIFO that never ends.
    let local = guest(
        "-m 384M",
        "bzImage",
        &format!(
            "run=\"{DHCP_SCRIPT}; ip link set eth0 up; udhcpc -i eth0 -n -q -f -s /tmp/s; \
             R=$(cat /tmp/router); ping -c 3 $R; \
             echo GUEST-MAC=$(cat /sys/class/net/eth0/address); \
             head -c {TRANSFER} /dev/urandom > /tmp/f; echo GUEST-SUM=$(sha256sum < /tmp/f); \
             nc $R 5001 < /tmp/f; echo SENT=$?; rm /tmp/f; \
             mkfifo /tmp/p; exec 3<>/tmp/p; \
             for i in $(seq 30); do nc $R 5002 <&3 > /tmp/b && [ -s /tmp/b ] && break; sleep 1; done; \
             echo RX-LENGTH-ERRORS=$(cat /sys/class/net/eth0/statistics/rx_length_errors); \
             echo BACK-SUM=$(sha256sum < /tmp/b) BACK-SIZE=$(wc -c < /tmp/b)\""
        ),
    );
    let peer = |name: &str, me: u8, other: u8| {
        guest(
            &format!("-m 256M -N {name}"),
            "bzImage",
            &format!(
                "run=\"ip addr add 10.9.0.{me}/24 dev eth0; ip link set eth0 up; \
                 for i in $(seq 60); do ping -c 1 -W 1 10.9.0.{other} > /dev/null && break; done; \
                 ping -c 3 10.9.0.{other}; echo MAC=$(cat /sys/class/net/eth0/address); sleep 5\""
            ),
        )
    };
    vec![
        Scenario {
            name: "local",
            script: format!(
                "mkfifo /tmp/p; exec 8<>/tmp/p\n\
                 (nc -l -p 5001 <&8 > /tmp/in.bin; echo HOST-SUM=$(sha256sum < /tmp/in.bin); \
                  nc -l -p 5002 < /tmp/in.bin) &\n\
                 vm-net -L -a fe:e1:ba:d0:00:0a {local}\nrc=$?\n\
                 echo HOST-SIZE=$(wc -c < /tmp/in.bin)\nrm -f /tmp/in.bin\nexit $rc"
            ),
        },
        Scenario {
            name: "both-ways",
            script: BOTH_WAYS_SCENARIO
                .replace("@ROUNDS@", &ROUNDS.to_string())
                .replace("@SIZE@", &BOTH_WAYS.to_string())
                .replace("@SECS@", &ROUND_SECS.to_string()),
        },
        Scenario {
            name: "bridge",
            script: format!(
                "ip link add br0 type bridge && ip link set br0 up\n\
                 vm-net -b br0 {a} > /tmp/a.log 2>&1 &\n\
                 vm-net -b br0 {b} > /tmp/b.log 2>&1\nrc=$?\nwait $!; rc=$((rc + $?))\n\
                 sed 's/^/A: /' /tmp/a.log; sed 's/^/B: /' /tmp/b.log\nexit $rc",
                a = peer("alpha", 1, 2),
                b = peer("beta", 2, 1),
            ),
        },
    ]
}

fn case(name: &str) -> &'static Case {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT
        .get_or_init(|| testhost::run("virtio-net", &scenarios(), false))
        .case(name)
}

fn value<'a>(c: &'a Case, key: &str) -> &'a str {
    c.output
        .lines()
        .find_map(|l| l.trim_end().split_once(key).map(|(_, v)| v))
        .unwrap_or_else(|| panic!("no {key} in:\n{}", c.output))
}

#[test]
fn a_guest_on_a_local_interface_gets_its_address_by_dhcp_and_pings_the_host() {
    let c = case("local");
    assert_eq!(c.status, 0, "{}", c.output);
    let bound = value(c, "DHCP-BOUND ");
    assert!(bound.starts_with("ip=100.64."), "{bound}");
    assert!(bound.contains(" mask=31 router=100.64."), "{bound}");
    assert!(
        c.output
            .contains("3 packets transmitted, 3 packets received, 0% packet loss"),
        "{}",
        c.output
    );
    // The MAC vm-net -a asked for.
    assert_eq!(value(c, "GUEST-MAC="), "fe:e1:ba:d0:00:0a");
}

#[test]
fn a_hundred_megabytes_go_to_the_host_and_back_intact() {
    let c = case("local");
    let sent = value(c, "GUEST-SUM=");
    assert_eq!(value(c, "SENT="), "0");
    assert_eq!(value(c, "HOST-SIZE="), TRANSFER.to_string());
    assert_eq!(value(c, "HOST-SUM="), sent, "guest to host");
    let back = value(c, "BACK-SUM=");
    assert_eq!(
        back,
        format!("{sent} BACK-SIZE={TRANSFER}"),
        "host to guest"
    );
    // virtio_net counts a frame whose buffers it did not all see at once,
    // and drops it (TCP sends it again, so the sums alone miss it).
    assert_eq!(value(c, "RX-LENGTH-ERRORS="), "0");
}

/// Issue 19.11a: under load the receive path could stop for good (the
/// device asked for a kick past buffers the driver had just posted
/// without one). Each round must end in time with every byte across,
/// both ways.
#[test]
fn transfers_both_ways_at_once_never_stall() {
    let c = case("both-ways");
    assert_eq!(c.status, 0, "{}", c.output);
    assert!(!c.output.contains("STALLED"), "{}", c.output);
    assert!(!c.output.contains("FROZEN"), "{}", c.output);
    for i in 1..=ROUNDS {
        let want = format!("ROUND {i} tx=0 rx=0 got={BOTH_WAYS} ");
        assert!(c.output.contains(&want), "no {want:?} in:\n{}", c.output);
    }
    let sunk = c
        .output
        .lines()
        .filter(|l| l.trim_end() == format!("SINK={BOTH_WAYS}"))
        .count();
    assert_eq!(sunk, ROUNDS as usize, "{}", c.output);
}

#[test]
fn two_guests_on_one_bridge_ping_each_other() {
    let c = case("bridge");
    assert_eq!(c.status, 0, "{}", c.output);
    for who in ["A", "B"] {
        assert!(
            c.output.contains(&format!(
                "{who}: 3 packets transmitted, 3 packets received, 0% packet loss"
            )),
            "{}",
            c.output
        );
    }
    // Stable, locally administered, one per guest name.
    let (a, b) = (value(c, "A: MAC="), value(c, "B: MAC="));
    assert!(
        a.starts_with("fe:e1:ba:") && b.starts_with("fe:e1:ba:"),
        "{a} {b}"
    );
    assert_ne!(a, b);
}

/// vm-run with a NIC on this machine: the tiny guest has no driver, so
/// this checks what vm-run makes of the fd, not the data path.
fn tiny(args: &[&str]) -> vm_tests::Output {
    let mut all = vec!["-m", "16M", "-b", tiny_guest().to_str().unwrap()];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-a", "poweroff"]);
    vm_run(&all)
}

#[test]
fn a_closed_fd_or_a_file_is_a_clear_error() {
    let o = tiny(&["-n", "9"]);
    assert_eq!(
        (o.status, o.stderr.as_str()),
        (66, "vm-run: fd 9: Bad file descriptor\n"),
        "{o:?}"
    );
    // stdin is /dev/null in vm_run: open, but no tap.
    let o = tiny(&["-n", "0"]);
    assert_eq!(
        (o.status, o.stderr.as_str()),
        (65, "vm-run: fd 0: not a tap device\n"),
        "{o:?}"
    );
    let o = tiny(&["-n", "x"]);
    assert_eq!(o.status, 64, "{o:?}");
    assert!(
        o.stderr
            .starts_with("vm-run: -n x: not a file descriptor number\n"),
        "{o:?}"
    );
}

/// Runs `script` in fresh network and mount namespaces with the release
/// binaries on PATH, so the machine's interfaces are never touched.
fn netns(script: &str) -> vm_tests::Output {
    let dir = bin("vm-run");
    let dir = dir.parent().expect("bin dir").display().to_string();
    let child = Command::new("unshare")
        .args(["-n", "-m", "sh", "-c"])
        .arg(format!(
            "mount -t sysfs sysfs /sys && PATH={dir}:$PATH && {script}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    wait_output(child, Duration::from_secs(30))
}

#[test]
fn vm_run_takes_the_taps_vm_net_passes_and_rejects_bad_environments() {
    let tiny = tiny_guest().display().to_string();
    let o = netns(&format!(
        "vm-net vm-net -a fe:e1:ba:d0:00:05 vm-run -m 16M -b {tiny} -a poweroff"
    ));
    assert_eq!((o.status, o.stderr.as_str()), (0, ""), "{o:?}");
    assert_eq!(o.stdout, "tiny: poweroff\n");
    // A tap without the vnet header is refused; so is garbage.
    let o = netns(&format!("VM_NET_FDS=7 vm-run -m 16M -b {tiny} 7</dev/null"));
    assert_eq!(
        (o.status, o.stderr.as_str()),
        (65, "vm-run: fd 7: not a tap device\n"),
        "{o:?}"
    );
    let o = netns(&format!("VM_NET_FDS='3 x' vm-run -m 16M -b {tiny}"));
    assert_eq!(o.status, 64, "{o:?}");
    assert!(
        o.stderr
            .starts_with("vm-run: VM_NET_FDS: x: not a file descriptor number\n"),
        "{o:?}"
    );
    let o = netns(&format!(
        "VM_NET_FDS=3 VM_NET_3=lladdr=1 vm-run -m 16M -b {tiny}"
    ));
    assert_eq!(o.status, 64, "{o:?}");
    assert!(
        o.stderr.starts_with("vm-run: VM_NET_3: 1: not a MAC"),
        "{o:?}"
    );
}

#[test]
fn a_guest_with_a_nic_is_received_onto_a_tap_of_its_own() {
    // The tiny guest writes and checks memory for ever: a stream of a
    // running guest with a NIC, and a receive that must find the same
    // pages. vm-ctl stop -f ends the received guest. Received with another
    // MAC, its NIC waits to be replugged, which this guest (no ACPI) never
    // does: no stream may be sent until then, as CONF would lie. A guest
    // of a version 3 stream has no hotplug slots: another MAC is refused.
    let tiny = tiny_guest().display().to_string();
    let o = netns(&format!(
        "export VM_RUNDIR=$(mktemp -d); cd $VM_RUNDIR\n\
         vm-net -a fe:e1:ba:d0:00:07 vm-run -N src -m 64M -b {tiny} -a dirty > src.out 2>&1 &\n\
         while [ ! -S src.sock ]; do sleep 0.1; done; sleep 0.3\n\
         vm-send src > snap; echo SEND=$?\n\
         vm-receive -N dst < snap; echo NO-TAP=$?\n\
         vm-net -a fe:e1:ba:d0:00:08 vm-receive -N dst < snap > other.out 2>&1 &\n\
         while [ ! -S dst.sock ]; do sleep 0.1; done; sleep 0.3\n\
         vm-send -k dst > /dev/null; echo OTHER-MAC-SEND=$?; vm-ctl stop -f -w dst; wait\n\
         vm-net vm-net vm-receive -N dst < snap; echo TWO-TAPS=$?\n\
         cp snap snap3; printf '\\003' | dd of=snap3 bs=1 seek=8 conv=notrunc 2>/dev/null\n\
         vm-net -a fe:e1:ba:d0:00:08 vm-receive -N dst < snap3; echo V3-OTHER-MAC=$?\n\
         vm-net -a fe:e1:ba:d0:00:07 vm-receive -N dst < snap > dst.out 2>&1 &\n\
         until vm-ctl status dst >/dev/null 2>&1; do sleep 0.1; done; sleep 1\n\
         vm-ctl stop -f -w dst; wait
         echo BAD=$(cat src.out dst.out | grep -c BAD) DST-ROUNDS=$(tr -cd . < dst.out | wc -c)"
    ));
    assert_eq!(o.status, 0, "{o:?}");
    let (head, rounds) = o.stdout.split_once("DST-ROUNDS=").expect("rounds");
    assert_eq!(
        head, "SEND=0\nNO-TAP=64\nOTHER-MAC-SEND=69\nTWO-TAPS=64\nV3-OTHER-MAC=64\nBAD=0 ",
        "{o:?}"
    );
    // The received guest went on writing and checking its pages.
    assert!(rounds.trim().parse::<u32>().unwrap_or(0) > 0, "{o:?}");
    assert_eq!(
        o.stderr,
        "vm-receive: the guest had 1 NICs, VM_NET_FDS and -n give 0\n\
         usage: vm-receive [-Dpv] [-d [raw:|qcow2:]disk[,ro]] ... [-n fd] ... \
         [-N name [-o user[:group]]] [-r iso] < stream\n\
         vm-send: dst: send failed, guest resumed: a NIC is being plugged back with a new MAC: try again\n\
         vm-receive: the guest had 1 NICs, VM_NET_FDS and -n give 2\n\
         usage: vm-receive [-Dpv] [-d [raw:|qcow2:]disk[,ro]] ... [-n fd] ... \
         [-N name [-o user[:group]]] [-r iso] < stream\n\
         vm-receive: fd 3: the guest keeps its MAC fe:e1:ba:d0:00:07 (a version 3 stream)\n\
         usage: vm-receive [-Dpv] [-d [raw:|qcow2:]disk[,ro]] ... [-n fd] ... \
         [-N name [-o user[:group]]] [-r iso] < stream\n",
        "{o:?}"
    );
}
