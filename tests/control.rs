//! vm-ctl and the control socket. Tiny guests on this machine's /dev/kvm
//! for the socket's behaviour (each test in a run directory of its own);
//! a Linux guest in the emulated test host for what needs a real kernel:
//! the ACPI power button, pause with kvmclock, a shell on the console.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use vm_tests::named::{Console, Tiny};
use vm_tests::testhost::{self, await_in, guest, Case, Report, Scenario};
use vm_tests::{bin, target_dir, tiny_guest, wait_output, Output};

fn rundir(test: &str) -> PathBuf {
    let d = target_dir().join("tmp").join(format!("ctl-{test}"));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn ctl_as(dir: &Path, user: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={u}"),
                &format!("--regid={u}"),
                "--clear-groups",
            ])
            .arg(bin("vm-ctl"));
            c
        }
        None => Command::new(bin("vm-ctl")),
    };
    let child = cmd
        .env("VM_RUNDIR", dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vm-ctl");
    wait_output(child, Duration::from_secs(20))
}

fn ctl(dir: &Path, args: &[&str]) -> Output {
    ctl_as(dir, None, args)
}

/// A guest that ended: vm-ctl no longer knows it. Its socket may still be
/// there, as the sandboxed vm-run cannot remove it; it refuses connections.
fn assert_gone(dir: &Path, name: &str) {
    let o = ctl(dir, &["status", name]);
    assert_eq!(
        (o.status, o.stderr.as_str()),
        (
            69,
            format!("vm-ctl: {name}: no such guest running\n").as_str()
        )
    );
    let listed = rows(&ctl(dir, &["status"]));
    assert!(!listed.iter().any(|r| r[8] == name), "{listed:?}");
}

fn ok(o: &Output) -> &str {
    assert_eq!(o.status, 0, "{o:?}");
    assert_eq!(o.stderr, "", "not quiet: {o:?}");
    &o.stdout
}

/// The status table as awk sees it: whitespace-separated fields.
fn rows(o: &Output) -> Vec<Vec<String>> {
    let mut lines = ok(o).lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "PID", "VCPUS", "MAXMEM", "CURMEM", "TTY", "OWNER", "STATE", "NAME"]
    );
    lines
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

#[test]
fn status_shows_every_guest_in_vmctl_columns() {
    let dir = rundir("status");
    let a = Tiny::start(&dir, "alpha", &["-c", "2", "-m", "32M"]);
    let b = Tiny::start(&dir, "beta", &[]);
    let all = rows(&ctl(&dir, &["status"]));
    assert_eq!(all.len(), 2, "{all:?}");
    let pid_a = a.pid().to_string();
    assert_eq!(
        all[0][1..],
        [&pid_a, "2", "32M", &all[0][4], "-", "root", "running", "alpha"]
    );
    assert!(all[0][4].ends_with(['K', 'M']), "CURMEM {}", all[0][4]);
    assert_eq!(all[1][8], "beta");
    assert_eq!(all[1][1], b.pid().to_string());
    let one = rows(&ctl(&dir, &["status", "beta"]));
    assert_eq!(one.len(), 1);
    assert_eq!(one[0][3], "16M");

    let gone = ctl(&dir, &["status", "gamma"]);
    assert_eq!(gone.status, 69, "{gone:?}");
    assert_eq!(gone.stderr, "vm-ctl: gamma: no such guest running\n");
    let bad = ctl(&dir, &["status", "../x"]);
    assert_eq!(bad.status, 64, "{bad:?}");

    ok(&ctl(&dir, &["stop", "-a", "-f", "-w"]));
    for g in [a, b] {
        assert_eq!(g.end().status, 0);
    }
    assert_gone(&dir, "alpha");
    assert_eq!(rows(&ctl(&dir, &["status"])).len(), 0);
}

#[test]
fn console_pause_and_unpause() {
    let dir = rundir("pause");
    let mut g = Tiny::start(&dir, "echoer", &[]);
    let mut con = Console::attach(&dir, "echoer");
    con.type_in("one");
    assert!(con.wait_for("one", Duration::from_secs(5)), "no echo");

    ok(&ctl(&dir, &["pause", "echoer"]));
    assert_eq!(rows(&ctl(&dir, &["status", "echoer"]))[0][7], "paused");
    let again = ctl(&dir, &["pause", "echoer"]);
    assert_eq!(
        (again.status, again.stderr.as_str()),
        (69, "vm-ctl: echoer: already paused\n")
    );
    con.type_in("two");
    // A paused guest echoes nothing...
    assert!(
        !con.wait_for("two", Duration::from_secs(1)),
        "echo while paused"
    );
    assert!(g.running());
    ok(&ctl(&dir, &["unpause", "echoer"]));
    // ...and goes on where it stopped.
    assert!(
        con.wait_for("onetwo", Duration::from_secs(5)),
        "{}",
        con.seen()
    );
    assert_eq!(rows(&ctl(&dir, &["status", "echoer"]))[0][7], "running");

    // A second console is refused while one is attached.
    let busy = ctl(&dir, &["console", "echoer"]);
    assert_eq!(
        (busy.status, busy.stderr.as_str()),
        (69, "vm-ctl: echoer: console in use\n")
    );

    // '.' ends the tiny guest (a reset), which ends the console too.
    con.type_in(".");
    let out = g.end();
    assert_eq!(out.status, 75, "{out:?}");
    // The console's copy and vm-run's own output agree.
    assert!(out.stdout.contains("onetwo."), "{out:?}");
    let status = con.child.wait().expect("console");
    assert!(status.success());
}

#[test]
fn stop_presses_a_button_that_the_tiny_guest_ignores() {
    let dir = rundir("stop");
    let mut g = Tiny::start(&dir, "stubborn", &[]);
    ok(&ctl(&dir, &["stop", "stubborn"]));
    thread::sleep(Duration::from_secs(1));
    assert!(
        g.running(),
        "the tiny guest has no ACPI: it should not stop"
    );
    // wait returns when the guest ends, here by stop -f from elsewhere.
    let waiter = Command::new(bin("vm-ctl"))
        .env("VM_RUNDIR", &dir)
        .args(["wait", "stubborn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vm-ctl wait");
    thread::sleep(Duration::from_millis(300));
    ok(&ctl(&dir, &["stop", "-f", "stubborn"]));
    let w = wait_output(waiter, Duration::from_secs(10));
    ok(&w);
    assert_eq!(g.end().status, 0);
    assert_gone(&dir, "stubborn");
}

#[test]
fn other_users_are_kept_out_unless_named_owner() {
    let dir = rundir("owner");
    let g = Tiny::start(&dir, "private", &[]);
    let o = ctl_as(&dir, Some("65534"), &["status", "private"]);
    assert_eq!(
        (o.status, o.stderr.as_str()),
        (77, "vm-ctl: private: permission denied\n")
    );
    let o = ctl_as(&dir, Some("65534"), &["stop", "-f", "private"]);
    assert_eq!(o.status, 77, "{o:?}");
    // Listing skips guests one may not see.
    assert_eq!(rows(&ctl_as(&dir, Some("65534"), &["status"])).len(), 0);

    let shared = Tiny::start(&dir, "shared", &["-o", "65534"]);
    let mode = std::fs::metadata(shared.socket()).map(|m| {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        (m.permissions().mode() & 0o777, m.uid())
    });
    assert_eq!(mode.ok(), Some((0o660, 65534)));
    let mine = rows(&ctl_as(&dir, Some("65534"), &["status"]));
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(
        (mine[0][6].as_str(), mine[0][8].as_str()),
        ("nobody", "shared")
    );
    // Another user still may not.
    let o = ctl_as(&dir, Some("1"), &["status", "shared"]);
    assert_eq!(o.status, 77, "{o:?}");
    ok(&ctl_as(
        &dir,
        Some("65534"),
        &["stop", "-f", "-w", "shared"],
    ));
    assert_eq!(shared.end().status, 0);
    ok(&ctl(&dir, &["stop", "-f", "private"]));
    assert_eq!(g.end().status, 0);
}

fn raw_exchange(sock: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).expect("write");
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    String::from_utf8_lossy(reply.get(8..).unwrap_or_default()).into_owned()
}

#[test]
fn garbage_on_the_socket_does_not_hurt_the_guest() {
    let dir = rundir("garbage");
    let mut g = Tiny::start(&dir, "target", &[]);
    let sock = g.socket();
    assert_eq!(
        raw_exchange(&sock, b"GET / HTTP/1.0\r\n\r\n"),
        "error not a vm-run control message"
    );
    assert_eq!(
        raw_exchange(&sock, b"vmc\x01\xff\xff\xff\xf0"),
        "error message of 4294967280 bytes (at most 4096)"
    );
    assert_eq!(
        raw_exchange(&sock, b"vmc\x07\0\0\0\x06status"),
        "error control protocol version 7, this side speaks 1"
    );
    assert_eq!(
        raw_exchange(&sock, b"vmc\x01\0\0\0\x06reboot"),
        "error unknown request \"reboot\""
    );
    // Half a message, then gone; and many silent clients at once.
    drop(UnixStream::connect(&sock).map(|mut s| s.write_all(b"vmc\x01\0\0")));
    let idle: Vec<_> = (0..20)
        .filter_map(|_| UnixStream::connect(&sock).ok())
        .collect();
    let busy = ctl(&dir, &["status", "target"]);
    assert!(busy.status == 0 || busy.stderr.contains("busy"), "{busy:?}");
    drop(idle);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(rows(&ctl(&dir, &["status", "target"]))[0][7], "running");
    assert!(g.running());
    let mut con = Console::attach(&dir, "target");
    con.type_in("still-here");
    assert!(con.wait_for("still-here", Duration::from_secs(5)));
    con.type_in(".");
    assert_eq!(g.end().status, 75);
}

#[test]
fn one_guest_a_name_and_stale_sockets_are_replaced() {
    let dir = rundir("names");
    let g = Tiny::start(&dir, "web", &[]);
    let second = Command::new(bin("vm-run"))
        .env("VM_RUNDIR", &dir)
        .args(["-N", "web", "-b"])
        .arg(tiny_guest())
        .args(["-a", "poweroff"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let o = wait_output(second, Duration::from_secs(10));
    assert_eq!(
        (o.status, o.stderr.as_str()),
        (69, "vm-run: web: a guest of this name is running\n")
    );
    ok(&ctl(&dir, &["stop", "-f", "-w", "web"]));
    assert_eq!(g.end().status, 0);

    // A socket whose vm-run ended (no listener: the sandboxed vm-run
    // cannot remove it) is taken over.
    let stale = dir.join("web.sock");
    assert!(stale.exists());
    let g = Tiny::start(&dir, "web", &[]);
    assert_eq!(rows(&ctl(&dir, &["status", "web"])).len(), 1);
    ok(&ctl(&dir, &["stop", "-f", "web"]));
    assert_eq!(g.end().status, 0);
}

#[test]
fn a_guest_that_ends_on_its_own_or_by_signal_is_gone() {
    let dir = rundir("cleanup");
    let out = Command::new(bin("vm-run"))
        .env("VM_RUNDIR", &dir)
        .args(["-N", "brief", "-m", "16M", "-b"])
        .arg(tiny_guest())
        .args(["-a", "poweroff"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert_gone(&dir, "brief");

    let g = Tiny::start(&dir, "termed", &[]);
    // SAFETY: kill(2) on a child of ours.
    unsafe { libc::kill(g.pid() as i32, libc::SIGTERM) };
    assert_eq!(g.end().status, 0);
    assert_gone(&dir, "termed");
}

#[test]
fn a_guest_that_ended_leaves_status_and_its_socket_goes() {
    let dir = rundir("ended");
    let stays = Tiny::start(&dir, "stays", &[]);
    let goes = Tiny::start(&dir, "goes", &[]);
    let sock = goes.socket();
    ok(&ctl(&dir, &["stop", "-f", "-w", "goes"]));
    assert_eq!(goes.end().status, 0);
    // The sandboxed vm-run could not remove it (it may remove nothing).
    assert!(sock.exists(), "removed by the sandboxed vm-run");
    let listed = rows(&ctl(&dir, &["status"]));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0][8], "stays");
    // Once it is clearly stale (older than a bind's window), vm-ctl,
    // which may, removes it on its way.
    thread::sleep(Duration::from_millis(2100));
    assert_eq!(rows(&ctl(&dir, &["status"])).len(), 1);
    assert!(!sock.exists(), "stale socket left");
    // A new guest of that name starts as before.
    let again = Tiny::start(&dir, "goes", &[]);
    assert_eq!(rows(&ctl(&dir, &["status", "goes"])).len(), 1);
    ok(&ctl(&dir, &["stop", "-a", "-f", "-w"]));
    assert_eq!(again.end().status, 0);
    assert_eq!(stays.end().status, 0);
}

/// vm-run's descriptors, as /proc shows them.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

const WAIT: &[u8] = b"vmc\x01\0\0\0\x04wait";
const STATUS: &[u8] = b"vmc\x01\0\0\0\x06status";

#[test]
fn abandoned_waiters_are_let_go() {
    let dir = rundir("waiters");
    // A low descriptor limit, where leaked waiters soon stop accept.
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=48")
        .arg(bin("vm-run"))
        .args(["-N", "waited", "-m", "16M", "-b"])
        .arg(tiny_guest())
        .args(["-a", "echo"])
        .stdin(Stdio::null());
    let g = Tiny::spawn(cmd, &dir, "waited");
    let sock = g.socket();
    ok(&ctl(&dir, &["status", "waited"]));
    let before = fd_count(g.pid());
    for _ in 0..300 {
        // A `vm-ctl wait` that is killed: the request, then gone.
        if let Ok(mut s) = UnixStream::connect(&sock) {
            let _ = s.write_all(WAIT);
        }
    }
    thread::sleep(Duration::from_millis(300));
    // Each connection prunes the waiters that hung up.
    assert_eq!(rows(&ctl(&dir, &["status", "waited"])).len(), 1);
    thread::sleep(Duration::from_millis(100));
    let after = fd_count(g.pid());
    assert!(after <= before + 2, "{before} fds before, {after} after");
    // A waiter that stays is still told how the guest ends.
    let waiter = Command::new(bin("vm-ctl"))
        .env("VM_RUNDIR", &dir)
        .args(["wait", "waited"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vm-ctl wait");
    thread::sleep(Duration::from_millis(300));
    ok(&ctl(&dir, &["stop", "-f", "waited"]));
    ok(&wait_output(waiter, Duration::from_secs(10)));
    assert_eq!(g.end().status, 0);
}

#[test]
fn a_dripping_client_gets_5_s_for_its_whole_request() {
    let dir = rundir("drip");
    let g = Tiny::start(&dir, "dripped", &[]);
    let sock = g.socket();
    let start = std::time::Instant::now();
    // Eight clients, every slot, each sending a byte every 0.5 s: a whole
    // status request would take them 7 s.
    let drippers: Vec<_> = (0..8)
        .map(|_| {
            let mut s = UnixStream::connect(&sock).expect("connect");
            thread::spawn(move || {
                for b in STATUS {
                    if s.write_all(&[*b]).is_err() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(500));
                }
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reply = Vec::new();
                let _ = s.read_to_end(&mut reply);
                (reply, start.elapsed())
            })
        })
        .collect();
    // By 6 s they have been cut off and the slots are free again.
    thread::sleep(Duration::from_secs(6));
    assert_eq!(rows(&ctl(&dir, &["status", "dripped"])).len(), 1);
    for d in drippers {
        let (reply, when) = d.join().expect("dripper");
        assert!(
            !String::from_utf8_lossy(&reply).contains("ok"),
            "a dripping client was served after {when:?}"
        );
    }
    ok(&ctl(&dir, &["stop", "-f", "-w", "dripped"]));
    assert_eq!(g.end().status, 0);
}

#[test]
fn vm_ctl_gives_up_on_a_wedged_socket() {
    let dir = rundir("wedged");
    std::fs::create_dir_all(&dir).expect("mkdir");
    // A listener that never accepts, as a vm-run that hangs would be.
    let _wedged = UnixListener::bind(dir.join("wedged.sock")).expect("bind");
    let start = std::time::Instant::now();
    let o = ctl(&dir, &["status", "wedged"]);
    let took = start.elapsed();
    assert_eq!(
        (o.status, o.stderr.as_str()),
        (69, "vm-ctl: wedged: no answer in 10 s\n")
    );
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(15),
        "{took:?}"
    );
}

#[test]
fn systemd_unit_verifies() {
    // systemd-analyze insists that the commands exist: point the unit at
    // the binaries just built.
    let dir = rundir("unit");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let unit = std::fs::read_to_string(vm_tests::root().join("docs/vm@.service"))
        .expect("docs/vm@.service");
    assert!(unit.contains("RestartForceExitStatus=75"));
    assert!(unit.contains("ExecStop=/usr/local/bin/vm-ctl stop -w %i"));
    let bins = bin("vm-run");
    let bins = bins.parent().expect("bin dir");
    std::fs::write(
        dir.join("vm@.service"),
        unit.replace("/usr/local/bin", &bins.display().to_string()),
    )
    .expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("vm@web.service"))
        .output()
        .expect("systemd-analyze (tests/harness/setup.sh installs it)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.is_empty(), "{err}");
}

// The emulated test host: a Linux guest, its ACPI and its clock.

/// Guest side of the power button: busybox acpid runs /etc/acpi/PWRF/00000080
/// on KEY_POWER from the ACPI button driver, as a distribution's acpid would.
const ACPID: &str = "mkdir -p /etc/acpi/PWRF; F=/etc/acpi/PWRF/00000080; \
    echo \\#!/bin/sh > $F; echo echo GUEST-POWER-BUTTON \\> /dev/console >> $F; \
    echo poweroff -f >> $F; chmod +x $F; mkdir -p /var/log /var/run; acpid; echo ACPID-UP";

/// Waits in the test host for `what` in `file`, at most `secs`.
fn scenarios() -> Vec<Scenario> {
    let acpi = guest(
        "-N acpi -m 256M",
        "bzImage",
        &format!(
            "run=\"{ACPID}; ls /dev/input; grep -i acpi /proc/interrupts; \
             while :; do sleep 1; done\""
        ),
    );
    let ticker = guest(
        "-N ticker -m 256M",
        "bzImage",
        "run=\"while :; do echo TICK $(cut -d. -f1 /proc/uptime) $(date +%s); sleep 0.5; done\"",
    );
    let shell = guest("-N shell -m 256M", "bzImage", "end=shell");
    vec![
        Scenario {
            name: "acpi-stop",
            script: format!(
                "{acpi} > /tmp/acpi.log 2>&1 &\n{}\n\
                 t0=$(date +%s)\ntimeout 30 vm-ctl stop -w acpi; echo STOP-RC=$?\n\
                 vm-ctl stop -f acpi\n\
                 wait $!; echo VMRUN-RC=$? SECS=$(( $(date +%s) - t0 ))\n\
                 vm-ctl status acpi 2>/dev/null || echo SOCKET-GONE\ncat /tmp/acpi.log",
                await_in("/tmp/acpi.log", "ACPID-UP", 60)
            ),
        },
        Scenario {
            name: "pause",
            script: format!(
                "{ticker} > /tmp/tick.log 2>&1 &\n{}\n\
                 vm-ctl pause ticker; echo PAUSE-RC=$?\nvm-ctl status ticker\n\
                 n1=$(grep -c TICK /tmp/tick.log); sleep 4; n2=$(grep -c TICK /tmp/tick.log)\n\
                 echo TICKS-WHILE-PAUSED=$((n2 - n1))\n\
                 vm-ctl unpause ticker; echo UNPAUSE-RC=$?; sleep 3\n\
                 echo TICKS-AFTER=$(( $(grep -c TICK /tmp/tick.log) - n2 ))\n\
                 vm-ctl stop -f -w ticker; cat /tmp/tick.log",
                await_in("/tmp/tick.log", "TICK", 60)
            ),
        },
        Scenario {
            name: "console",
            script: format!(
                "{shell} > /tmp/shell.log 2>&1 < /dev/null &\n{}\n\
                 (sleep 1; echo; sleep 1; echo 'echo CONSOLE-$((6*7))'; sleep 2) \
                 | vm-ctl console shell > /tmp/console.out; echo CONSOLE-RC=$?\n\
                 grep -q CONSOLE-42 /tmp/console.out && echo CLIENT-SAW-42\n\
                 grep -q CONSOLE-42 /tmp/shell.log && echo LOG-SAW-42\n\
                 vm-ctl stop shell; sleep 3; vm-ctl status shell\n\
                 vm-ctl stop -f -w shell; echo FORCED-RC=$?",
                await_in("/tmp/shell.log", "VMTEST-INIT-OK", 60)
            ),
        },
    ]
}

fn case(name: &str) -> &'static Case {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT
        .get_or_init(|| testhost::run("control", &scenarios(), false))
        .case(name)
}

fn assert_has(c: &Case, want: &str) {
    assert!(c.output.contains(want), "no {want:?} in:\n{}", c.output);
}

#[test]
fn linux_guest_powers_off_on_the_acpi_power_button() {
    let c = case("acpi-stop");
    assert_has(c, "ACPID-UP");
    assert_has(c, "GUEST-POWER-BUTTON");
    assert_has(c, "STOP-RC=0");
    assert_has(c, "VMRUN-RC=0");
    assert_has(c, "SOCKET-GONE");
    let secs: u32 = c
        .output
        .split("SECS=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(99);
    assert!(secs <= 10, "took {secs} s:\n{}", c.output);
}

#[test]
fn linux_pause_stops_the_guest_and_its_clock() {
    let c = case("pause");
    assert_has(c, "PAUSE-RC=0");
    assert_has(c, "paused ticker");
    assert_has(c, "TICKS-WHILE-PAUSED=0");
    assert_has(c, "UNPAUSE-RC=0");
    let after: u32 = c
        .output
        .split("TICKS-AFTER=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(after >= 3, "ticks after unpause: {after}\n{}", c.output);
    // Uptime (kvmclock) stood still while paused: no tick-to-tick gap in
    // the guest's uptime exceeds 2 s, though the pause lasted 4 s.
    let uptimes: Vec<u64> = c
        .output
        .lines()
        .filter_map(|l| {
            l.split("TICK ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(uptimes.len() > 5, "{}", c.output);
    let max_gap = uptimes.windows(2).map(|w| w[1].saturating_sub(w[0])).max();
    assert!(
        max_gap <= Some(2),
        "uptime jumped by {max_gap:?} s:\n{}",
        c.output
    );
}

#[test]
fn linux_console_attaches_to_a_shell() {
    let c = case("console");
    assert_has(c, "CONSOLE-RC=0");
    assert_has(c, "CLIENT-SAW-42");
    assert_has(c, "LOG-SAW-42");
    // No acpid in this guest: the button press is ignored, as with vmctl.
    assert_has(c, "running shell");
    assert_has(c, "FORCED-RC=0");
}
