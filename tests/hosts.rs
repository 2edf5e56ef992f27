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

    // stderr a terminal: the count, ending with the whole stream's size.
    let out = run(&mut on_a_pty(
        &dir,
        &format!("vm-send -k src > {}", shown.display()),
    ));
    assert_eq!(out.status, 0, "{out:?}");
    let size = std::fs::metadata(&shown).expect("stream").len();
    let want = format!("vm-send: {}", total(size));
    assert!(out.stdout.contains(&want), "{want:?} not in {out:?}");
    assert!(out.stdout.contains("/s"), "{out:?}");
    // Relayed through vm-send's pipe, the stream is as good as one
    // written straight: it is received below.

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

    // On a terminal: the count up to the stream's end, before the guest
    // runs (its socket is there).
    let mut p = on_a_pty(&dir, &format!("vm-receive -N p < {}", shown.display()))
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
