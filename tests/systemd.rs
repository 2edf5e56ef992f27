//! docs/vm@.service under a real systemd: a Debian 12 system (debootstrap,
//! cached in target/systemd/rootfs) booted with systemd as PID 1 in
//! systemd-nspawn on this machine, with its own /dev/kvm, the static tools
//! and the tiny guest. Each test drives one instance with systemctl and
//! reads what an operator would: `systemctl show`, `journalctl -u`, the
//! exit status. tests/systemd/container.sh says why it is set up so.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use vm_tests::{bin, bin_dir, root, target_dir, tiny_guest, wait_output, Output};

/// The booted container: the PID of its systemd, and the script that
/// stops it when its stdin closes, which happens however this process
/// ends (a static is never dropped, but its pipe is closed on exit).
struct Container {
    leader: u32,
    _keeper: Child,
}

fn container() -> &'static Container {
    static C: OnceLock<Container> = OnceLock::new();
    C.get_or_init(|| {
        for tool in ["systemd-nspawn", "debootstrap", "nsenter"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(found, "{tool} missing: run tests/harness/setup.sh");
        }
        let script = root().join("tests/systemd/container.sh");
        let rootfs = target_dir().join("systemd/rootfs");
        let t0 = Instant::now();
        let built = Command::new(&script)
            .arg("rootfs")
            .arg(&rootfs)
            .status()
            .is_ok_and(|s| s.success());
        assert!(built, "building {} failed", rootfs.display());
        if t0.elapsed() > Duration::from_secs(5) {
            eprintln!("systemd: built the rootfs in {:?}", t0.elapsed());
        }
        let guest_dir = tiny_guest().parent().expect("tiny guest's directory");
        let mut keeper = Command::new(&script)
            .arg("run")
            .arg(&rootfs)
            .arg(bin_dir())
            .arg(guest_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run container.sh");
        let mut line = String::new();
        let stdout = keeper.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("read the container's PID");
        let leader = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("container.sh printed {line:?}, not the container's PID"));
        let c = Container {
            leader,
            _keeper: keeper,
        };
        let unit =
            std::fs::read_to_string(root().join("docs/vm@.service")).expect("docs/vm@.service");
        let out = c.sh_in(
            "systemctl is-system-running --wait; \
             cat > /etc/systemd/system/vm@.service && systemctl daemon-reload",
            &unit,
        );
        assert!(out.stdout.starts_with("running"), "{out:?}");
        assert_eq!(out.status, 0, "{out:?}");
        c
    })
}

impl Container {
    /// `script` run by sh inside the container, as root, with `input`.
    fn sh_in(&self, script: &str, input: &str) -> Output {
        let mut child = Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nsenter");
        let mut stdin = child.stdin.take().expect("stdin");
        std::io::Write::write_all(&mut stdin, input.as_bytes()).expect("write stdin");
        drop(stdin);
        wait_output(child, Duration::from_secs(60))
    }

    fn sh(&self, script: &str) -> Output {
        self.sh_in(script, "")
    }
}

/// One test at a time: timings (the start limit, TimeoutStopSec) are
/// part of what is tested.
fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// A guest vm@`name` whose tiny guest gets the command line `mode`,
/// configured as docs/OPERATIONS.md says.
fn guest(name: &str, mode: &str) -> &'static Container {
    guest_on(name, "", mode)
}

/// The same, with the vm-net options `net`.
fn guest_on(name: &str, net: &str, mode: &str) -> &'static Container {
    let c = container();
    let conf = format!(
        "VM_NET_OPTS={net}\nVM_RUN_OPTS=-m 16M -b /var/lib/vm/guest/tiny.elf -a \"{mode}\"\n"
    );
    let out = c.sh_in(
        &format!("systemctl reset-failed vm@{name} 2>/dev/null; cat > /etc/vm/{name}.conf"),
        &conf,
    );
    assert_eq!(out.status, 0, "{out:?}");
    c
}

fn show(c: &Container, name: &str) -> HashMap<String, String> {
    let out = c.sh(&format!(
        "systemctl show vm@{name} -p ActiveState,Result,NRestarts,ExecMainCode,ExecMainStatus,MainPID"
    ));
    assert_eq!(out.status, 0, "{out:?}");
    out.stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn journal(c: &Container, name: &str) -> String {
    c.sh(&format!("journalctl -u vm@{name} -o cat --no-pager"))
        .stdout
}

/// Waits until `ok` holds for the journal of vm@`name`; the journal.
fn await_journal(c: &Container, name: &str, ok: impl Fn(&str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let j = journal(c, name);
        if ok(&j) {
            return j;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "vm@{name}: journal:\n{j}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until vm@`name` is in `state`; its properties then.
fn await_state(c: &Container, name: &str, state: &str) -> HashMap<String, String> {
    let t0 = Instant::now();
    loop {
        let p = show(c, name);
        if p["ActiveState"] == state {
            return p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "vm@{name} is not {state}: {p:?}\n{}",
            journal(c, name)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn start(c: &Container, name: &str) {
    let out = c.sh(&format!("systemctl start vm@{name}"));
    assert_eq!(out.status, 0, "{out:?}");
}

fn banners(journal: &str) -> usize {
    journal.lines().filter(|l| l.starts_with("tiny: ")).count()
}

fn assert_no_failure(journal: &str) {
    assert!(!journal.contains("Failed"), "a failure logged:\n{journal}");
    assert!(
        !journal.contains("vm-ctl:"),
        "vm-ctl complained:\n{journal}"
    );
}

#[test]
fn start_puts_the_console_in_the_journal_and_stop_presses_the_power_button() {
    let _s = serial();
    // Words in quotes stay one argument of -a, as the unit's comment shows.
    let c = guest_on("web", "-B br0", "wait for the button");
    start(c, "web");
    await_journal(c, "web", |j| j.contains("tiny: wait for the button\n"));
    let p = show(c, "web");
    assert_eq!(p["ActiveState"], "active");

    // vm-run: user vm, group kvm and nothing else, no capabilities at all,
    // no_new_privs, its own seccomp filter; its socket where root's vm-ctl
    // looks.
    let out = c.sh(&format!(
        "grep -E '^(Uid|Gid|Groups|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/{}/status",
        p["MainPID"]
    ));
    assert_eq!(out.status, 0, "{out:?}");
    let field = |k: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| panic!("no {k} in {out:?}"))
    };
    let uid = c.sh("id -u vm").stdout.trim().to_string();
    let gid = c
        .sh("getent group kvm | cut -d: -f3")
        .stdout
        .trim()
        .to_string();
    assert!(
        !uid.is_empty() && uid != "0" && !gid.is_empty(),
        "{uid} {gid}"
    );
    assert_eq!(field("Uid"), [uid.as_str(); 4].join(" "), "{out:?}");
    assert_eq!(field("Gid"), [gid.as_str(); 4].join(" "), "{out:?}");
    assert_eq!(field("Groups"), "");
    for cap in ["CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(cap), "0000000000000000", "{cap}");
    }
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2");
    // vm-net made the bridge and put the guest's tap on it, in the sandbox.
    let out = c.sh("ls /sys/class/net/br0/brif");
    assert!(out.stdout.starts_with("tap"), "{out:?}");
    let out = c.sh("vm-ctl status web");
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stdout.ends_with(" running web\n"), "{out:?}");

    let t0 = Instant::now();
    let out = c.sh("systemctl stop vm@web");
    assert_eq!(out.status, 0, "{out:?}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let p = show(c, "web");
    assert_eq!(
        (p["ActiveState"].as_str(), p["Result"].as_str()),
        ("inactive", "success")
    );
    let j = journal(c, "web");
    assert_no_failure(&j);
    // vm-run exited 0 (else systemd would say its status).
    assert!(
        j.contains("vm@web.service: Deactivated successfully."),
        "{j}"
    );
    assert!(j.contains("Stopped vm@web.service"), "{j}");
    // The sandboxed vm-run cannot remove its socket; a stale one refuses
    // connections, and vm-ctl says the guest is gone.
    let out = c.sh("vm-ctl status web");
    assert_eq!(out.status, 69, "{out:?}");
    assert_eq!(
        out.stderr, "vm-ctl: web: no such guest running\n",
        "{out:?}"
    );
}

#[test]
fn a_reboot_restarts_the_guest() {
    let _s = serial();
    let c = guest("boot", "wait");
    start(c, "boot");
    await_journal(c, "boot", |j| banners(j) == 1);
    // Any byte on the console makes the waiting tiny guest reset.
    let out = c.sh("printf x | timeout 10 vm-ctl console boot");
    assert_eq!(out.status, 0, "{out:?}");
    let j = await_journal(c, "boot", |j| banners(j) == 2);
    let p = await_state(c, "boot", "active");
    assert_eq!(p["NRestarts"], "1", "{j}");
    // Restart=no: only RestartForceExitStatus=75 restarts it.
    assert!(j.contains("restart counter is at 1"), "{j}");
    assert_no_failure(&j);
    let out = c.sh("systemctl stop vm@boot");
    assert_eq!(out.status, 0, "{out:?}");
    let p = show(c, "boot");
    assert_eq!(
        (p["ActiveState"].as_str(), p["Result"].as_str()),
        ("inactive", "success")
    );
}

#[test]
fn three_reboots_in_six_seconds_fail_the_unit_as_vmd_does() {
    let _s = serial();
    // This tiny guest resets as soon as it has printed its banner.
    let c = guest("storm", "reboot");
    start(c, "storm");
    let p = await_state(c, "storm", "failed");
    assert_eq!(p["Result"], "start-limit-hit", "{p:?}");
    let j = journal(c, "storm");
    assert_eq!(banners(&j), 3, "{j}");
    assert!(j.contains("Start request repeated too quickly"), "{j}");
    // The operator's way out, once the guest is fixed.
    let out = c.sh("systemctl reset-failed vm@storm && systemctl is-failed vm@storm");
    assert_eq!(out.stdout.trim(), "inactive", "{out:?}");
}

#[test]
fn a_guest_that_ignores_the_power_button_is_ended_after_timeout_stop_sec() {
    let _s = serial();
    let c = guest("deaf", "hang");
    let out = c.sh(
        "mkdir -p /etc/systemd/system/vm@deaf.service.d && \
         printf '[Service]\\nTimeoutStopSec=2\\n' > /etc/systemd/system/vm@deaf.service.d/t.conf && \
         systemctl daemon-reload",
    );
    assert_eq!(out.status, 0, "{out:?}");
    start(c, "deaf");
    await_journal(c, "deaf", |j| j.contains("tiny: hang\n"));
    let t0 = Instant::now();
    let out = c.sh("systemctl stop vm@deaf");
    let took = t0.elapsed();
    // systemctl stop succeeds: the guest is gone. The unit says why.
    assert_eq!(out.status, 0, "{out:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let p = show(c, "deaf");
    assert_eq!(
        (p["ActiveState"].as_str(), p["Result"].as_str()),
        ("failed", "timeout"),
        "{p:?}"
    );
    // SIGTERM: vm-run ended the guest and exited 0.
    assert_eq!(
        (p["ExecMainCode"].as_str(), p["ExecMainStatus"].as_str()),
        ("1", "0")
    );
    let j = journal(c, "deaf");
    assert!(j.contains("Stopping timed out"), "{j}");
    c.sh("rm -r /etc/systemd/system/vm@deaf.service.d; systemctl daemon-reload; systemctl reset-failed vm@deaf");
}

#[test]
fn systemctl_kill_ends_the_guest_and_a_killed_one_starts_again() {
    let _s = serial();
    let c = guest("killed", "wait");
    start(c, "killed");
    await_journal(c, "killed", |j| banners(j) == 1);
    // SIGTERM to every process of the unit: vm-run exits 0, and that is
    // no failure.
    let out = c.sh("systemctl kill vm@killed");
    assert_eq!(out.status, 0, "{out:?}");
    let p = await_state(c, "killed", "inactive");
    assert_eq!(p["Result"], "success", "{p:?}");
    assert_eq!(p["ExecMainStatus"], "0");
    assert_no_failure(&journal(c, "killed"));

    // SIGKILL leaves its socket behind, and the unit failed; the next
    // start takes the stale socket over.
    start(c, "killed");
    await_journal(c, "killed", |j| banners(j) == 2);
    let out = c.sh("systemctl kill -s KILL vm@killed");
    assert_eq!(out.status, 0, "{out:?}");
    let p = await_state(c, "killed", "failed");
    assert_eq!(p["Result"], "signal", "{p:?}");
    assert_eq!(c.sh("test -S /run/vm/killed.sock").status, 0);
    start(c, "killed");
    await_journal(c, "killed", |j| banners(j) == 3);
    assert_eq!(await_state(c, "killed", "active")["NRestarts"], "0");
    let out = c.sh("systemctl stop vm@killed");
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(show(c, "killed")["Result"], "success");
}

/// systemd runs ExecStop (vm-ctl stop -w) after the guest ended by itself
/// too: a guest gone must be a stop that worked, not a failed unit.
#[test]
fn a_guest_that_powers_off_leaves_the_unit_inactive_not_failed() {
    let _s = serial();
    let c = guest("off", "poweroff");
    start(c, "off");
    let j = await_journal(c, "off", |j| j.contains("Deactivated successfully"));
    let p = await_state(c, "off", "inactive");
    assert_eq!(p["Result"], "success", "{p:?}\n{j}");
    assert!(j.contains("tiny: poweroff\n"), "{j}");
    assert_no_failure(&j);
}

#[test]
fn the_sandbox_is_rated_ok_and_holds() {
    let _s = serial();
    // vmd's local interface: vm-net sets the host side's address too.
    let c = guest_on("box", "-L", "wait");
    let out = c.sh("systemd-analyze security vm@box.service --no-pager");
    let verdict = out
        .stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{out:?}"));
    let level = verdict.split(": ").nth(1).unwrap_or("");
    let score: f64 = level
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{verdict}"));
    assert!(
        level.contains(" OK") || level.contains(" SAFE"),
        "{verdict}"
    );
    assert!(score <= 2.5, "{verdict}");

    start(c, "box");
    await_journal(c, "box", |j| banners(j) == 1);
    let pid = show(c, "box")["MainPID"].clone();
    let out = c.sh("grep -c '100\\.64\\.' /proc/net/fib_trie");
    assert_ne!(out.stdout.trim(), "0", "no 100.64/10 address: {out:?}");
    // What vm-run's mount namespace holds: a /dev of pseudo devices, KVM
    // and the tun device; a read-only system; no homes; a private /tmp.
    let out = c.sh(&format!(
        "touch /root/secret; nsenter -t {pid} -m sh -c 'ls /dev; ls /dev/net; ls /root; touch /etc/x /var/lib/x'"
    ));
    let seen: Vec<&str> = out.stdout.lines().collect();
    assert!(seen.contains(&"kvm") && seen.contains(&"tun"), "{out:?}");
    assert!(
        !seen.contains(&"console") && !seen.contains(&"secret"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("'/etc/x': Read-only file system"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("'/var/lib/x': Read-only file system"),
        "{out:?}"
    );
    // The device list that cgroup BPF enforces for everything in the unit
    // (ProtectClock= adds the RTC, read-only).
    let out = c.sh("systemctl show vm@box -p DevicePolicy -p DeviceAllow");
    let mut props: Vec<&str> = out.stdout.lines().collect();
    props.sort();
    assert_eq!(
        props,
        [
            "DeviceAllow=/dev/kvm rw",
            "DeviceAllow=/dev/net/tun rw",
            "DeviceAllow=char-rtc r",
            "DevicePolicy=closed"
        ],
        "{out:?}"
    );
    let out = c.sh("systemctl stop vm@box");
    assert_eq!(out.status, 0, "{out:?}");
}

/// A mistake in /etc/vm/NAME.conf: the unit fails at once, not in a loop,
/// with the tool's one line and its exit status where the operator looks.
#[test]
fn a_bad_configuration_fails_the_unit_with_the_tools_message() {
    let _s = serial();
    for (name, net, mode, status, says) in [
        (
            "nokernel",
            "",
            "",
            "66",
            "vm-run: /var/lib/vm/guest/missing.elf: No such file or directory",
        ),
        (
            "nobridge",
            "-b nosuchbr",
            "wait",
            "69",
            "vm-net: nosuchbr: no such bridge",
        ),
    ] {
        let c = guest_on(name, net, mode);
        if name == "nokernel" {
            let conf = "VM_RUN_OPTS=-m 16M -b /var/lib/vm/guest/missing.elf\n";
            let out = c.sh_in(&format!("cat > /etc/vm/{name}.conf"), conf);
            assert_eq!(out.status, 0, "{out:?}");
        }
        start(c, name);
        let p = await_state(c, name, "failed");
        assert_eq!(
            (p["Result"].as_str(), p["ExecMainStatus"].as_str()),
            ("exit-code", status),
            "{name}: {p:?}"
        );
        assert_eq!(p["NRestarts"], "0", "{name}: {p:?}");
        let j = journal(c, name);
        assert!(j.contains(says), "{name}: {j}");
        c.sh(&format!("systemctl reset-failed vm@{name}"));
    }
}

/// A guest without a NIC, through the drop-in docs/OPERATIONS.md gives:
/// no vm-net, no root at all.
#[test]
fn a_guest_without_a_nic_runs_as_vm_from_the_start() {
    let _s = serial();
    let c = guest("nonet", "wait");
    let dropin =
        std::fs::read_to_string(root().join("docs/OPERATIONS.md")).expect("docs/OPERATIONS.md");
    let dropin = dropin
        .split("```ini\n# /etc/systemd/system/vm@NAME.service.d/no-nic.conf\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("the no-nic drop-in in docs/OPERATIONS.md");
    let out = c.sh_in(
        "mkdir -p /etc/systemd/system/vm@nonet.service.d && \
         cat > /etc/systemd/system/vm@nonet.service.d/no-nic.conf && systemctl daemon-reload",
        dropin,
    );
    assert_eq!(out.status, 0, "{out:?}");
    start(c, "nonet");
    await_journal(c, "nonet", |j| banners(j) == 1);
    let pid = show(c, "nonet")["MainPID"].clone();
    let out = c.sh(&format!(
        "grep -E '^(Uid|CapBnd):' /proc/{pid}/status; nsenter -t {pid} -n ls /sys/class/net; \
         ls /sys/class/net"
    ));
    assert!(out.stdout.contains("CapBnd:\t0000000000000000"), "{out:?}");
    assert!(!out.stdout.contains("Uid:\t0"), "{out:?}");
    assert!(!out.stdout.contains("tap"), "{out:?}");
    let out = c.sh("systemctl stop vm@nonet");
    assert_eq!(out.status, 0, "{out:?}");
    let p = show(c, "nonet");
    assert_eq!(
        (p["ActiveState"].as_str(), p["Result"].as_str()),
        ("inactive", "success")
    );
    assert_no_failure(&journal(c, "nonet"));
    c.sh("rm -r /etc/systemd/system/vm@nonet.service.d; systemctl daemon-reload");
}

/// On this machine, no container: what vm-ctl stop -w says of a guest
/// that is not running.
#[test]
fn stop_wait_of_a_guest_not_running_is_quiet_success() {
    let dir = target_dir().join("tmp/systemd-stop");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    // A socket its vm-run left behind (killed), and no socket at all.
    drop(std::os::unix::net::UnixListener::bind(dir.join("stale.sock")).expect("bind"));
    for name in ["stale", "never"] {
        let ctl = |args: &[&str]| {
            let child = Command::new(bin("vm-ctl"))
                .env("VM_RUNDIR", &dir)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("vm-ctl");
            wait_output(child, Duration::from_secs(10))
        };
        let o = ctl(&["stop", "-w", name]);
        assert_eq!((o.status, o.stderr.as_str()), (0, ""), "{name}: {o:?}");
        // Without -w, the name is still checked.
        let o = ctl(&["stop", name]);
        assert_eq!(o.status, 69, "{name}: {o:?}");
        assert_eq!(o.stderr, format!("vm-ctl: {name}: no such guest running\n"));
    }
}
