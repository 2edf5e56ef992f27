//! vm-run on this machine's own /dev/kvm with the tiny PVH guest (no
//! Linux): console output and input, the command line, how the guest's
//! end maps to the exit status, signals, the pty console, and each kind of
//! bad input. This is the fast path, tested without the emulated host.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::termios::{self, LocalFlags};
use nix::unistd::Pid;
use vm_tests::{bin, target_dir, tiny_guest, vm_run, wait_output};

fn tiny(args: &[&str]) -> vm_tests::Output {
    let mut all = vec!["-m", "16M", "-b", tiny_guest().to_str().unwrap()];
    all.extend_from_slice(args);
    vm_run(&all)
}

#[test]
fn console_shows_the_guest_and_its_command_line() {
    let out = tiny(&["-a", "hello from the host"]);
    assert_eq!(out.stdout, "tiny: hello from the host\n");
    assert_eq!(out.stderr, "", "quiet on success");
}

#[test]
fn i8042_reset_exits_75() {
    let out = tiny(&["-a", "reset"]);
    assert_eq!(out.status, 75, "{out:?}");
    assert_eq!(out.stderr, "", "the guest asked for it: {out:?}");
}

#[test]
fn acpi_poweroff_exits_0() {
    let out = tiny(&["-a", "poweroff"]);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout, "tiny: poweroff\n");
}

#[test]
fn several_vcpus_start() {
    for n in ["1", "2", "4", "16"] {
        let out = tiny(&["-c", n, "-a", "poweroff"]);
        assert_eq!(out.status, 0, "-c {n}: {out:?}");
    }
}

#[test]
fn memory_sizes() {
    for m in ["2M", "512M", "4G"] {
        let out = vm_run(&[
            "-m",
            m,
            "-b",
            tiny_guest().to_str().unwrap(),
            "-a",
            "poweroff",
        ]);
        assert_eq!(out.status, 0, "-m {m}: {out:?}");
    }
}

/// The tiny guest in "echo" mode, with extra vm-run options and the given
/// stdin: it polls its UART and echoes what comes, until a '.'.
fn echo_guest(opts: &[&str], stdin: Stdio) -> std::process::Child {
    Command::new(bin("vm-run"))
        .args(opts)
        .args([
            "-m",
            "16M",
            "-b",
            tiny_guest().to_str().unwrap(),
            "-a",
            "echo",
        ])
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn waiting_guest() -> std::process::Child {
    echo_guest(&[], Stdio::piped())
}

#[test]
fn stdin_reaches_the_guest() {
    let mut child = waiting_guest();
    // More than the UART's 64-byte FIFO, so the input must wait for room.
    let typed = "x".repeat(300) + "\nend.";
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(typed.as_bytes()).unwrap();
    let out = wait_output(child, Duration::from_secs(30));
    assert_eq!(out.stdout, format!("tiny: echo\n{typed}"));
    assert_eq!(out.status, 75);
}

fn wait_for_banner(child: &mut std::process::Child) -> std::process::ChildStdout {
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut b = [0u8; 64];
    while !String::from_utf8_lossy(&seen).contains('\n') {
        let n = stdout.read(&mut b).unwrap();
        assert!(n > 0, "guest ended before its banner");
        seen.extend_from_slice(&b[..n]);
    }
    stdout
}

#[test]
fn sigterm_stops_the_guest_with_0_and_sigint_with_130() {
    for (sig, status) in [(Signal::SIGTERM, 0), (Signal::SIGINT, 130)] {
        let mut child = waiting_guest();
        let _stdout = wait_for_banner(&mut child);
        kill(Pid::from_raw(child.id() as i32), sig).unwrap();
        let out = wait_output(child, Duration::from_secs(10));
        assert_eq!(out.status, status, "{sig:?}: {out:?}");
    }
}

#[test]
fn terminal_is_restored_after_a_signal() {
    let pty = nix::pty::openpty(None, None).unwrap();
    let before = termios::tcgetattr(&pty.slave).unwrap();
    assert!(before
        .local_flags
        .contains(LocalFlags::ICANON | LocalFlags::ECHO));
    let slave = std::fs::File::from(pty.slave);
    let mut child = echo_guest(&[], Stdio::from(slave.try_clone().unwrap()));
    let _stdout = wait_for_banner(&mut child);
    let during = termios::tcgetattr(slave.as_fd()).unwrap();
    assert!(
        !during.local_flags.contains(LocalFlags::ICANON),
        "raw while running"
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = wait_output(child, Duration::from_secs(10));
    assert_eq!(out.status, 0);
    let after = termios::tcgetattr(slave.as_fd()).unwrap();
    assert_eq!(after.local_flags, before.local_flags);
    assert_eq!(after.input_flags, before.input_flags);
    assert_eq!(after.output_flags, before.output_flags);
}

#[test]
fn pty_console() {
    let mut child = echo_guest(&["-p"], Stdio::null());
    let mut stdout = child.stdout.take().unwrap();
    let mut name = Vec::new();
    let mut b = [0u8];
    while b[0] != b'\n' {
        assert_eq!(stdout.read(&mut b).unwrap(), 1, "no pty name printed");
        name.push(b[0]);
    }
    let name = String::from_utf8(name).unwrap();
    assert!(name.starts_with("/dev/pts/"), "{name}");
    let mut tty = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.trim())
        .unwrap();
    tty.write_all(b"via pty.").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 64];
    while !String::from_utf8_lossy(&seen).contains("via pty.") {
        let n = tty.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("tiny: echo\n"));
    drop(stdout);
    let out = wait_output(child, Duration::from_secs(10));
    assert_eq!(out.status, 75);
}

fn assert_fails(out: &vm_tests::Output, status: i32, message: &str) {
    assert_eq!(out.status, status, "{out:?}");
    let first = out.stderr.lines().next().unwrap_or("");
    assert!(
        first.starts_with("vm-run: ") && first.contains(message),
        "stderr {:?} should name {message:?}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn bad_options_exit_64() {
    let k = tiny_guest().to_str().unwrap();
    assert_fails(&vm_run(&["-b", k, "-c", "0"]), 64, "-c 0");
    assert_fails(&vm_run(&["-b", k, "-m", "lots"]), 64, "-m lots");
    assert_fails(&vm_run(&["-b", k, "-x"]), 64, "-x");
    let long = "a".repeat(70000);
    assert_fails(&vm_run(&["-b", k, "-a", &long]), 64, "-a");
    assert_fails(&vm_run(&["-b", k, "-a", "bad\u{1}byte"]), 64, "-a");
}

#[test]
fn help_prints_usage_and_exits_0() {
    let out = vm_run(&["-h"]);
    assert_eq!(out.status, 0);
    assert!(out.stdout.starts_with("usage: vm-run"));
}

#[test]
fn missing_files_exit_66() {
    let k = tiny_guest().to_str().unwrap();
    assert_fails(
        &vm_run(&["-b", "/nonexistent/bzImage"]),
        66,
        "/nonexistent/bzImage: No such file",
    );
    assert_fails(
        &vm_run(&["-b", k, "-i", "/nonexistent/initrd"]),
        66,
        "/nonexistent/initrd: No such file",
    );
}

#[test]
fn not_a_kernel_exits_65() {
    let dir = target_dir().join("tiny-guest");
    let junk = dir.join("junk.bin");
    fs::create_dir_all(&dir).unwrap();
    fs::write(&junk, vec![0x5a; 8192]).unwrap();
    assert_fails(
        &vm_run(&["-b", junk.to_str().unwrap()]),
        65,
        "not a bzImage or ELF kernel",
    );
    // An ELF file that is not a PVH kernel: a program of the host.
    assert_fails(
        &vm_run(&["-b", bin("vm-run").to_str().unwrap()]),
        65,
        "not a bootable kernel",
    );
}

#[test]
fn what_is_not_a_file_is_refused_at_once_with_65() {
    let k = tiny_guest().to_str().unwrap();
    let dir = target_dir().join("tmp/not-files");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo = fifo.to_str().unwrap();
    // A FIFO used to block the open with SIGTERM masked: only SIGKILL
    // ended it. vm_run gives up after 30 s.
    let started = std::time::Instant::now();
    assert_fails(&vm_run(&["-b", fifo]), 65, "a FIFO, not a regular file");
    assert_fails(&vm_run(&["-b", k, "-i", fifo]), 65, "a FIFO");
    assert_fails(&vm_run(&["-b", k, "-d", fifo]), 65, "a FIFO");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_fails(&vm_run(&["-b", "/"]), 65, "/: a directory");
    assert_fails(&vm_run(&["-b", k, "-d", "/"]), 65, "/: a directory");
    assert_fails(&vm_run(&["-b", "/dev/zero"]), 65, "a character device");
}

#[test]
fn what_the_host_cannot_give_exits_69() {
    let k = tiny_guest().to_str().unwrap();
    assert_fails(
        &vm_run(&["-b", k, "-m", "64T"]),
        69,
        "more memory than this host has",
    );
    assert_fails(&vm_run(&["-b", k, "-c", "255"]), 69, "-c 255");
}

#[test]
fn guest_too_small_for_its_files_exits_64() {
    let k = tiny_guest().to_str().unwrap();
    let big = target_dir().join("tiny-guest/big-initrd");
    fs::write(&big, vec![0; 8 << 20]).unwrap();
    assert_fails(
        &vm_run(&["-m", "4M", "-b", k, "-i", big.to_str().unwrap()]),
        64,
        "does not fit",
    );
}

/// Runs vm-run (with `extra` options) in a new mount namespace where
/// /dev/kvm is replaced by `setup` (a shell snippet), as user `nobody`
/// when `unprivileged`.
fn with_dev_kvm(setup: &str, unprivileged: bool, extra: &str) -> vm_tests::Output {
    let run_as = if unprivileged {
        "setpriv --reuid=65534 --regid=65534 --clear-groups"
    } else {
        ""
    };
    let script = format!(
        "set -e; {setup}; exec {run_as} {} {extra} -m 16M -b {} -a poweroff",
        bin("vm-run").display(),
        tiny_guest().display()
    );
    let child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_output(child, Duration::from_secs(30))
}

#[test]
fn no_dev_kvm_exits_69() {
    let out = with_dev_kvm("mount -t tmpfs none /dev", false, "");
    assert_fails(&out, 69, "/dev/kvm: No such file or directory");
}

#[test]
fn no_permission_on_dev_kvm_exits_77() {
    // The tiny guest's file must be readable by nobody, /dev/kvm not.
    let out = with_dev_kvm(
        "d=$(mktemp -d); mount -t tmpfs none $d; mknod -m 600 $d/kvm c 10 232; \
         mount --bind $d/kvm /dev/kvm",
        true,
        "",
    );
    assert_fails(&out, 77, "/dev/kvm: Permission denied");
}

/// The threads of a running process, each `/proc/PID/task/TID/status`.
fn thread_statuses(pid: u32) -> Vec<(String, String)> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| {
            let t = t.unwrap();
            let status = fs::read_to_string(t.path().join("status")).unwrap_or_default();
            (t.file_name().to_string_lossy().into_owned(), status)
        })
        .collect()
}

fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn running_guest_is_sandboxed() {
    // Named, so that the control socket's thread is there too.
    let dir = target_dir().join("tmp/tiny-sandboxed");
    let _ = fs::remove_dir_all(&dir);
    let mut child = Command::new(bin("vm-run"))
        .env("VM_RUNDIR", &dir)
        .args(["-N", "boxed", "-m", "16M", "-b"])
        .arg(tiny_guest())
        .args(["-a", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stdout = wait_for_banner(&mut child);
    // The banner comes from the vCPU, the last thread started.
    std::thread::sleep(Duration::from_millis(200));
    let threads = thread_statuses(child.id());
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = wait_output(child, Duration::from_secs(10));
    assert_eq!(out.status, 0, "{out:?}");
    let names: Vec<String> = threads.iter().map(|(_, s)| field(s, "Name:")).collect();
    for want in ["vcpu0", "control", "signals"] {
        assert!(
            names.iter().any(|n| n.starts_with(want)),
            "no {want}: {names:?}"
        );
    }
    for (tid, status) in &threads {
        let name = field(status, "Name:");
        assert_eq!(field(status, "NoNewPrivs:"), "1", "{tid} {name}");
        assert_eq!(field(status, "Seccomp:"), "2", "{tid} {name}: filter mode");
        for cap in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(field(status, cap), "0000000000000000", "{tid} {name} {cap}");
        }
    }
}

#[test]
fn inherited_descriptors_are_closed() {
    use std::os::unix::process::CommandExt;
    let leak = fs::File::open("/etc/hostname").unwrap();
    let leaked = std::os::fd::AsRawFd::as_raw_fd(&leak);
    let mut cmd = Command::new(bin("vm-run"));
    cmd.args(["-m", "16M", "-b"])
        .arg(tiny_guest())
        .args(["-a", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: dup2 is async-signal-safe; it leaves fd 7 open across exec,
    // as a careless parent would.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(leaked, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let _stdout = wait_for_banner(&mut child);
    let fds: Vec<String> = fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let seven = fs::read_link(format!("/proc/{}/fd/7", child.id()));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = wait_output(child, Duration::from_secs(10));
    assert_eq!(out.status, 0, "{out:?}");
    assert!(
        !seven.as_ref().is_ok_and(|p| p.ends_with("hostname")),
        "fd 7 inherited: {seven:?}, open: {fds:?}"
    );
}

#[test]
fn an_ordinary_user_in_the_kvm_group_runs_a_guest() {
    // The kvm group, as Debian's udev rules make it; /dev/kvm is replaced
    // in a mount namespace of the test's own, so the real one is untouched.
    let made = Command::new("sh")
        .args(["-c", "getent group kvm >/dev/null || groupadd -r kvm"])
        .status()
        .unwrap();
    assert!(made.success(), "no kvm group");
    let script = format!(
        "set -e; d=$(mktemp -d); mount -t tmpfs none $d; mknod -m 660 $d/kvm c 10 232; \
         chgrp kvm $d/kvm; mount --bind $d/kvm /dev/kvm; \
         exec setpriv --reuid=65534 --regid=kvm --clear-groups {} -m 16M -b {} -a poweroff",
        bin("vm-run").display(),
        tiny_guest().display()
    );
    let child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, Duration::from_secs(30));
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout, "tiny: poweroff\n", "{out:?}");
    assert_eq!(out.stderr, "", "{out:?}");
}

#[test]
fn a_writable_image_serves_one_guest_at_a_time() {
    let dir = target_dir().join("tiny-guest");
    fs::create_dir_all(&dir).unwrap();
    let img = dir.join("locked.img");
    fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let img = img.to_str().unwrap();
    let k = tiny_guest().to_str().unwrap();
    let mut first = echo_guest(&["-d", img], Stdio::piped());
    let _stdout = wait_for_banner(&mut first);
    let busy = vm_run(&["-b", k, "-d", img, "-a", "poweroff"]);
    assert_fails(&busy, 69, &format!("{img}: in use by another process"));
    let busy_ro = vm_run(&["-b", k, "-d", &format!("{img},ro"), "-a", "poweroff"]);
    assert_fails(&busy_ro, 69, "in use");
    drop(first.stdin.take());
    kill(Pid::from_raw(first.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_output(first, Duration::from_secs(10)).status, 0);
    // Read-only users share the image; the lock goes with the process.
    let ro = format!("{img},ro");
    let mut reader = echo_guest(&["-d", &ro], Stdio::piped());
    let _stdout = wait_for_banner(&mut reader);
    let second = vm_run(&["-b", k, "-d", &ro, "-a", "poweroff"]);
    assert_eq!(second.status, 0, "{second:?}");
    kill(Pid::from_raw(reader.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_output(reader, Duration::from_secs(10)).status, 0);
    assert_eq!(vm_run(&["-b", k, "-d", img, "-a", "poweroff"]).status, 0);
}

#[test]
fn qcow2_overlays_share_their_base_but_not_themselves() {
    let dir = target_dir().join("tiny-guest").join("qcow2");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let img = |args: &[&str]| {
        let out = Command::new(bin("vm-img"))
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "vm-img {args:?}: {out:?}");
    };
    img(&["create", "-s", "16M", "base.qcow2"]);
    img(&["create", "-b", "base.qcow2", "a.qcow2"]);
    img(&["create", "-b", "base.qcow2", "b.qcow2"]);
    let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let k = tiny_guest().to_str().unwrap();
    let (a, b, base) = (path("a.qcow2"), path("b.qcow2"), path("base.qcow2"));
    let mut first = echo_guest(&["-d", &a], Stdio::piped());
    let _stdout = wait_for_banner(&mut first);
    // A second overlay on the same base runs beside the first.
    let second = vm_run(&["-b", k, "-d", &b, "-a", "poweroff"]);
    assert_eq!(second.status, 0, "{second:?}");
    // Neither the overlay in use nor its base can be written meanwhile.
    assert_fails(
        &vm_run(&["-b", k, "-d", &a, "-a", "poweroff"]),
        69,
        "a.qcow2: in use",
    );
    assert_fails(
        &vm_run(&["-b", k, "-d", &base, "-a", "poweroff"]),
        69,
        "base.qcow2: in use",
    );
    let ro = vm_run(&["-b", k, "-d", &format!("{base},ro"), "-a", "poweroff"]);
    assert_eq!(ro.status, 0, "{ro:?}");
    drop(first.stdin.take());
    kill(Pid::from_raw(first.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(wait_output(first, Duration::from_secs(10)).status, 0);
    assert_eq!(vm_run(&["-b", k, "-d", &base, "-a", "poweroff"]).status, 0);
    // `qcow2:` insists; the file name never decides.
    fs::write(dir.join("plain.qcow2"), vec![0u8; 1 << 20]).unwrap();
    let plain = path("plain.qcow2");
    assert_eq!(vm_run(&["-b", k, "-d", &plain, "-a", "poweroff"]).status, 0);
    assert_fails(
        &vm_run(&["-b", k, "-d", &format!("qcow2:{plain}"), "-a", "poweroff"]),
        65,
        "plain.qcow2: not a qcow2 image",
    );
}

#[test]
fn bad_disks_are_refused_before_the_guest_starts() {
    let k = tiny_guest().to_str().unwrap();
    let dir = target_dir().join("tiny-guest");
    fs::create_dir_all(&dir).unwrap();
    assert_fails(
        &vm_run(&["-b", k, "-d", "/nonexistent/disk.img"]),
        66,
        "/nonexistent/disk.img: No such file",
    );
    assert_fails(&vm_run(&["-b", k, "-d", "x.img,rw"]), 64, "-d x.img,rw");
    let many: Vec<String> = (0..17).flat_map(|_| ["-d".into(), "x".into()]).collect();
    let mut args = vec!["-b", k];
    args.extend(many.iter().map(String::as_str));
    assert_fails(&vm_run(&args), 64, "at most 16 disks");
    // A broken qcow2 header is refused; `raw:` takes the file as raw.
    let q = dir.join("fake.qcow2");
    let mut header = b"QFI\xfb\0\0\0\x03".to_vec();
    header.resize(1 << 16, 0);
    fs::write(&q, header).unwrap();
    let q = q.to_str().unwrap();
    assert_fails(&vm_run(&["-b", k, "-d", q]), 65, "fake.qcow2: cluster size");
    let forced = vm_run(&["-b", k, "-d", &format!("raw:{q}"), "-a", "poweroff"]);
    assert_eq!(forced.status, 0, "{forced:?}");
    // Permission to write is checked up front, not when the guest writes.
    let ro = dir.join("readonly.img");
    fs::write(&ro, vec![0u8; 4096]).unwrap();
    let out = with_dev_kvm(
        &format!(
            "chmod 644 {}; d=$(mktemp -d); mount -t tmpfs none $d; \
             mknod -m 666 $d/kvm c 10 232; mount --bind $d/kvm /dev/kvm",
            ro.display()
        ),
        true,
        &format!("-d {}", ro.display()),
    );
    assert_fails(&out, 77, "readonly.img: Permission denied");
}

#[test]
fn verbose_prints_the_exits_when_the_guest_ends() {
    let out = tiny(&["-v", "-a", "poweroff"]);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout, "tiny: poweroff\n");
    // "tiny: poweroff\n" is 15 bytes, one port write each to COM1's data
    // register (the guest does not poll the line status).
    let com1 = out
        .stderr
        .lines()
        .find(|l| l.contains("port 0x3f8-0x3ff"))
        .unwrap_or_else(|| panic!("no COM1 line in {}", out.stderr));
    let count: u64 = com1
        .split_whitespace()
        .rev()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(count, 15, "{com1}");
    assert!(out.stderr.contains("first vCPU entry "), "{}", out.stderr);
    // The VM is closed before the exit, and -v says how long KVM took.
    assert!(out.stderr.contains("the VM closed in "), "{}", out.stderr);
    let quiet = tiny(&["-a", "poweroff"]);
    assert!(!quiet.stderr.contains("exits"), "{}", quiet.stderr);
}

/// Whether KVM gave process `pid` a PIT: its worker thread is
/// `kvm-pit/PID`.
fn has_pit(pid: u32) -> bool {
    let want = format!("kvm-pit/{pid}\n");
    fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .any(|comm| comm == want)
}

/// The tiny guest, a kernel booted directly, has no PIT unless asked
/// (-P on); sent and received, each guest has what it had.
#[test]
fn a_pit_only_when_asked_and_it_goes_with_the_guest() {
    let dir = target_dir().join("tmp").join("tiny-pit");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("mkdir");
    use vm_tests::named::{Console, Tiny};
    // A guest that echoes what is typed runs: its PIT, made before the
    // vCPUs, is there if it ever will be.
    let running = |name: &str| {
        let mut con = Console::attach(&dir, name);
        con.type_in("x");
        assert!(con.wait_for("x", Duration::from_secs(5)), "{name}: no echo");
    };
    for (name, extra, pit) in [("on", &["-P", "on"][..], true), ("off", &[][..], false)] {
        let src = Tiny::start(&dir, name, extra);
        running(name);
        assert_eq!(has_pit(src.pid()), pit, "{name}");
        let file = dir.join(format!("{name}.snap"));
        let send = Command::new(bin("vm-send"))
            .arg(name)
            .env("VM_RUNDIR", &dir)
            .stdout(fs::File::create(&file).expect("create"))
            .output()
            .expect("vm-send");
        assert!(send.status.success(), "{send:?}");
        assert_eq!(src.end().status, 0);
        let mut cmd = Command::new(bin("vm-receive"));
        cmd.args(["-N", name])
            .stdin(fs::File::open(&file).expect("open"));
        let dst = Tiny::spawn(cmd, &dir, name);
        running(name);
        assert_eq!(has_pit(dst.pid()), pit, "{name} received");
    }
}

#[test]
fn pit_option_takes_on_or_off() {
    let out = tiny(&["-P", "yes", "-a", "poweroff"]);
    assert_fails(&out, 64, "-P yes: not on or off");
    let out = tiny(&["-P", "on", "-a", "poweroff"]);
    assert_eq!((out.status, out.stdout.as_str()), (0, "tiny: poweroff\n"));
}
