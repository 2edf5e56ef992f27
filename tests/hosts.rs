//! Guests moving between hosts, as docs/OPERATIONS.md shows it: `vm-send
//! -l name | ssh host2 vm-receive -N name`, here with two network
//! namespaces the test makes as the hosts (each with a run directory of
//! its own, joined by a veth pair) and socat's TCP as the ssh. And the
//! progress vm-send and vm-receive show on a terminal (a pty from
//! script(1)), and do not show anywhere else.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vm_tests::named::{Console, Tiny};
use vm_tests::testhost::{self, await_in, await_more, guest, Scenario};
use vm_tests::{bin, target_dir, tiny_guest, wait_output, Output};

fn rundir(name: &str) -> PathBuf {
    let d = target_dir().join("tmp").join(format!("hosts-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn path_with_bins() -> String {
    let bins = bin("vm-run");
    let bins = bins.parent().expect("bin dir").display().to_string();
    format!("{bins}:{}", std::env::var("PATH").unwrap_or_default())
}

fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_output(child, Duration::from_secs(30))
}

/// `script` by sh, in the network namespace `ns` (None: this one), with
/// the host's run directory `dir` and the tools on PATH, in a process
/// group of its own (so that the pipeline can be killed whole).
fn sh_cmd(ns: Option<&str>, dir: &Path, script: &str) -> Command {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "sh", "-c", script]);
            c
        }
        None => {
            let mut c = Command::new("sh");
            c.args(["-c", script]);
            c
        }
    };
    cmd.env("VM_RUNDIR", dir)
        .env("PATH", path_with_bins())
        .stdin(Stdio::null())
        .process_group(0);
    cmd
}

/// Kills a process group when the test ends, however it ends: a failed
/// assertion must not leave a pipeline with a guest in it behind.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of a child we started.
        unsafe { libc::kill(-(self.0 as i32), libc::SIGKILL) };
    }
}

/// Two hosts: network namespaces joined by a veth pair, 10.201.0.1/30 on
/// the first, .2 on the second, nothing else (no route out). Deleted when
/// the test ends.
struct Hosts {
    a: String,
    b: String,
}

impl Hosts {
    fn new(test: &str) -> Hosts {
        let id = std::process::id();
        let h = Hosts {
            a: format!("vmh-{test}-{id}-a"),
            b: format!("vmh-{test}-{id}-b"),
        };
        let script = format!(
            "set -e
             ip netns add {a}; ip netns add {b}
             ip -n {a} link add veth0 type veth peer name veth0 netns {b}
             ip -n {a} addr add 10.201.0.1/30 dev veth0
             ip -n {b} addr add 10.201.0.2/30 dev veth0
             for n in {a} {b}; do ip -n $n link set lo up; ip -n $n link set veth0 up; done",
            a = h.a,
            b = h.b
        );
        let out = run(Command::new("sh").args(["-c", &script]));
        assert_eq!(out.status, 0, "making the hosts: {out:?}");
        h
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[test]
fn a_guest_moved_live_to_another_host_goes_on_echoing() {
    let t0 = Instant::now();
    let hosts = Hosts::new("live");
    let (dir_a, dir_b) = (rundir("live-a"), rundir("live-b"));
    // On host A, the echo guest "web", with something typed already.
    let guest = format!("vm-run -N web -m 16M -b {} -a echo", tiny_guest().display());
    let cmd = sh_cmd(Some(&hosts.a), &dir_a, &format!("exec {guest}"));
    let src = Tiny::spawn(cmd, &dir_a, "web");
    let _src_group = Group(src.pid());
    let mut con = Console::attach(&dir_a, "web");
    con.type_in("on-a-");
    assert!(
        con.wait_for("on-a-", Duration::from_secs(5)),
        "no echo on A"
    );
    drop(con);

    // A sends to B's address, which only B's namespace has; B listens on
    // it and receives. The sender retries until B listens.
    let send = sh_cmd(
        Some(&hosts.a),
        &dir_a,
        "vm-send -l web | socat -u - TCP:10.201.0.2:7001,retry=100,interval=0.1",
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn the sender");
    let _send_group = Group(send.id());
    let recv = sh_cmd(
        Some(&hosts.b),
        &dir_b,
        "socat -u TCP-LISTEN:7001,bind=10.201.0.2,reuseaddr - | vm-receive -N web",
    );
    let mut dst = Tiny::spawn(recv, &dir_b, "web");
    let _dst_group = Group(dst.pid());
    let sent = wait_output(send, Duration::from_secs(30));
    assert_eq!((sent.status, sent.stderr.as_str()), (0, ""), "{sent:?}");
    // The guest left A: its vm-run ended as a sent guest does.
    let out = src.end();
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stdout.contains("on-a-"), "{out:?}");
    assert!(dst.running());

    // On B it goes on from where it was: it echoes, and it did not boot
    // again (no banner); '.' resets it, as it would have on A.
    let mut con = Console::attach(&dir_b, "web");
    con.type_in("on-b.");
    assert!(
        con.wait_for("on-b.", Duration::from_secs(5)),
        "no echo on B: {}",
        con.seen()
    );
    let out = dst.end();
    assert_eq!(out.status, 75, "{out:?}");
    assert!(
        out.stdout.contains("on-b.") && !out.stdout.contains("tiny:"),
        "{out:?}"
    );
    assert_eq!(out.stderr, "");
    // A's run directory has no guest left: vm-ctl lists none.
    let st = run(&mut sh_cmd(None, &dir_a, "vm-ctl status"));
    assert!(!st.stdout.contains("web"), "{st:?}");
    drop(hosts);
    eprintln!("hosts: moved live in {:?}", t0.elapsed());
}

/// What `script` shows of `cmd` run on a pty (stderr and stdout are the
/// pty; cmd redirects stdout itself).
fn on_a_pty(dir: &Path, cmd: &str) -> Command {
    let mut c = Command::new("script");
    c.args(["-qec", cmd, "/dev/null"])
        .env("VM_RUNDIR", dir)
        .env("PATH", path_with_bins())
        .stdin(Stdio::null())
        .process_group(0);
    c
}

/// vm-send's and vm-receive's line for `bytes`, as they print it.
fn total(bytes: u64) -> String {
    assert!((1024..1 << 20).contains(&bytes), "{bytes} B: not in KiB");
    format!("{:.1} KiB in ", bytes as f64 / 1024.0)
}

#[test]
fn progress_is_shown_on_a_terminal_and_nowhere_else() {
    let dir = rundir("progress");
    let g = Tiny::start(&dir, "src", &[]);
    let _g_group = Group(g.pid());
    let (quiet, shown) = (dir.join("quiet.snap"), dir.join("shown.snap"));

    // stderr a pipe: nothing.
    let out = run(&mut sh_cmd(
        None,
        &dir,
        &format!("vm-send -k src > {}", quiet.display()),
    ));
    assert_eq!((out.status, out.stderr.as_str()), (0, ""), "{out:?}");

    // stderr a terminal, stdout a pipe: the count, ending with the whole
    // stream's size.
    let out = run(&mut on_a_pty(
        &dir,
        &format!("vm-send -k src | cat > {}", shown.display()),
    ));
    assert_eq!(out.status, 0, "{out:?}");
    let size = std::fs::metadata(&shown).expect("stream").len();
    let want = format!("vm-send: {}", total(size));
    assert!(out.stdout.contains(&want), "{want:?} not in {out:?}");
    assert!(out.stdout.contains("/s"), "{out:?}");
    // Relayed through vm-send's pipe, the stream is as good as one
    // written straight: it is received below.

    // stdout a regular file, even appended to (>>): vm-run writes it
    // itself (vm-send(1)), so there is nothing to count and nothing is
    // shown; the stream is as good.
    let appended = dir.join("appended.snap");
    let out = run(&mut on_a_pty(
        &dir,
        &format!("vm-send -k src >> {}", appended.display()),
    ));
    assert_eq!(out.status, 0, "{out:?}");
    assert!(!out.stdout.contains("vm-send:"), "{out:?}");
    assert!(std::fs::metadata(&appended).expect("stream").len() > 0);
    let cmd = sh_cmd(
        None,
        &dir,
        &format!("exec vm-receive -N a < {}", appended.display()),
    );
    let a = Tiny::spawn(cmd, &dir, "a");
    let _a_group = Group(a.pid());
    assert_eq!(run(&mut sh_cmd(None, &dir, "vm-ctl stop -f a")).status, 0);
    let out = a.end();
    assert_eq!((out.status, out.stderr.as_str()), (0, ""), "{out:?}");

    // vm-receive with stderr a pipe: nothing but what the guest writes
    // (to stdout) until it is stopped.
    let cmd = sh_cmd(
        None,
        &dir,
        &format!("exec vm-receive -N q < {}", quiet.display()),
    );
    let q = Tiny::spawn(cmd, &dir, "q");
    let _q_group = Group(q.pid());
    assert_eq!(run(&mut sh_cmd(None, &dir, "vm-ctl stop -f q")).status, 0);
    let out = q.end();
    assert_eq!((out.status, out.stderr.as_str()), (0, ""), "{out:?}");

    // On a terminal, from a pipe: the count up to the stream's end,
    // before the guest runs (its socket is there).
    let mut p = on_a_pty(&dir, &format!("cat {} | vm-receive -N p", shown.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    let _p_group = Group(p.id());
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(dir.join("p.sock")).is_err() {
        assert!(p.try_wait().expect("wait").is_none(), "vm-receive ended");
        assert!(t0.elapsed() < Duration::from_secs(10), "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(run(&mut sh_cmd(None, &dir, "vm-ctl stop -f p")).status, 0);
    let out = wait_output(p, Duration::from_secs(10));
    assert_eq!(out.status, 0, "{out:?}");
    let want = format!("vm-receive: {}", total(size));
    assert!(out.stdout.contains(&want), "{want:?} not in {out:?}");
    drop(g);
}

/// Pings the bridge's address, setting the guest's own again whenever its
/// interface comes back without it (as tests/snapshot.rs's guest does).
const PINGER: &str = "run=\"i=0; while :; do i=$((i+1)); ip link set eth0 up 2>/dev/null; \
    ip addr add 10.9.0.2/24 dev eth0 2>/dev/null; \
    if ping -c 1 -W 1 10.9.0.1 > /dev/null; then r=OK; else r=FAILED; fi; \
    echo PING $i $r MAC=$(cat /sys/class/net/eth0/address 2>/dev/null) END; sleep 0.3; done\"";

/// In the emulated test host (a Linux guest needs it, tests/README.md):
/// two network namespaces as the hosts, each with a bridge br0 of its own
/// made by vm-net, 10.9.0.1 on both, and the same MAC, as one gateway on
/// a layer-2 network both hosts' bridges are on would look to the guest;
/// each with a run directory of its own. A Linux guest with a NIC on A's
/// bridge, pinging it, is moved live to B, given a tap on B's bridge by
/// vm-net there, and pings on.
fn nic_scenario() -> Scenario {
    // Each host's network and mount namespace: vm-net looks for bridges in
    // /sys/class/net, which shows the network namespace of the sysfs
    // mount, so each host mounts its own. The namespaces' holders are
    // left to the test host's power-off.
    let ns =
        "for h in A B; do unshare -n -m sh -c 'mount -t sysfs sysfs /sys && exec sleep 900' & \
              eval N$h=$!; done\nsleep 0.5";
    let on = |ns: &str, dir: &str, cmd: &str| {
        format!("VM_RUNDIR=/tmp/{dir} nsenter -t ${ns} -n -m {cmd}")
    };
    Scenario {
        name: "nic",
        script: format!(
            "{ns}\n\
             mkdir -p /tmp/ra /tmp/rb\n\
             for n in $NA $NB; do nsenter -t $n -n -m sh -c 'ip link set lo up; vm-net -B br0 true; \
             ip link set br0 address 02:00:0a:09:00:01; ip addr add 10.9.0.1/24 dev br0'; done\n\
             {} > /tmp/h1.log 2>&1 & SRC=$!\n{}\n\
             {} | {} > /tmp/h2.log 2>&1 &\n\
             wait $SRC; echo SRC-EXIT=$?\n{}\n{}\n\
             echo NEIGH-B $(nsenter -t $NB -n -m ip neigh show dev br0)\n\
             echo LINKS-A $(nsenter -t $NA -n -m ip -o link show | grep -v -e ' lo:' -e ' br0:' | wc -l)\n\
             echo LINKS-B $(nsenter -t $NB -n -m ip -o link show | grep -v -e ' lo:' -e ' br0:' | wc -l)\n\
             {}\n\
             head -n 3 /tmp/h1.log /tmp/h2.log | grep -v '^PING'\n\
             echo SRC-LAST $(grep '^PING.*END' /tmp/h1.log | tail -n1)\n\
             echo DST-FIRST $(grep '^PING.*END' /tmp/h2.log | head -n1)\n\
             echo DST-OK $(grep -c '^PING.* OK MAC' /tmp/h2.log)\n\
             echo DST-FAILED $(grep -c '^PING.* FAILED MAC' /tmp/h2.log)\n\
             echo MACS $(grep -o 'MAC=[^ ]*' /tmp/h1.log /tmp/h2.log | cut -d: -f2- | sort -u)",
            on(
                "NA",
                "ra",
                &format!("vm-net -b br0 {}", guest("-N h -m 128M", "bzImage", PINGER))
            ),
            await_in("/tmp/h1.log", "PING 3 OK", 60),
            on("NA", "ra", "vm-send -l h"),
            on("NB", "rb", "vm-net -b br0 vm-receive -N h"),
            await_in("/tmp/h2.log", "PING", 60),
            await_more("/tmp/h2.log", "^PING.*END", 5, 30),
            on("NB", "rb", "vm-ctl stop -f -w h"),
        ),
    }
}

fn number_after<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
        .trim()
}

fn ping_number(line: &str) -> u64 {
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a PING line: {line:?}"))
}

#[test]
fn linux_guest_with_a_nic_moves_live_to_another_hosts_bridge() {
    let t0 = Instant::now();
    let report = testhost::run("hosts", &[nic_scenario()], false);
    let c = report.case("nic");
    let out = c.output.as_str();
    // It left A (vm-run exits 0 once sent) ...
    assert!(out.contains("SRC-EXIT=0"), "{out}");
    // ... and went on counting on B where it stopped, without a boot.
    let (last, first) = (
        ping_number(number_after(out, "SRC-LAST ")),
        ping_number(number_after(out, "DST-FIRST ")),
    );
    assert!(last >= 3, "{out}");
    assert!(first == last + 1 || first == last + 2, "{out}");
    // Its pings are answered by B's bridge: B has its tap (A has no
    // interface left but lo and br0), and B's neighbour table has learnt
    // it.
    let count = |k: &str| number_after(out, k).parse::<u64>().unwrap_or(0);
    assert!(count("DST-OK ") >= 4 && count("DST-FAILED ") <= 1, "{out}");
    assert_eq!((count("LINKS-A "), count("LINKS-B ")), (0, 1), "{out}");
    assert!(number_after(out, "NEIGH-B ").contains("10.9.0.2"), "{out}");
    // Received under its own name, it keeps its MAC.
    assert_eq!(
        number_after(out, "MACS ").split_whitespace().count(),
        1,
        "{out}"
    );
    eprintln!("hosts: the NIC scenario took {:?}", t0.elapsed());
}
