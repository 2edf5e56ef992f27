//! The guest's console when nobody reads it: a guest that writes more
//! than stdout's pipe holds must not stall (its vCPU would block holding
//! the UART, and with it the console input and vm-ctl console).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use vm_tests::{bin, tiny_guest, wait_output};

#[test]
fn a_guest_flooding_an_unread_stdout_runs_on() {
    let mut child = Command::new(bin("vm-run"))
        .args(["-m", "16M", "-b"])
        .arg(tiny_guest())
        .args(["-a", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vm-run");
    // Nobody reads stdout for now, and its pipe is as small as Linux
    // allows, 4 KiB, so that the echo guest fills it at once.
    let stdout = child.stdout.as_ref().expect("stdout").as_raw_fd();
    // SAFETY: fcntl on a pipe we hold, with integer arguments.
    let size = unsafe { libc::fcntl(stdout, libc::F_SETPIPE_SZ, 4096) };
    assert_eq!(size, 4096);
    // The same for stdin: once the typing is done, the guest has read
    // all but the last 4 KiB of it.
    let keys = child.stdin.as_ref().expect("stdin").as_raw_fd();
    // SAFETY: as above.
    let size = unsafe { libc::fcntl(keys, libc::F_SETPIPE_SZ, 4096) };
    assert_eq!(size, 4096);
    // 100 KiB typed: the guest echoes all of it, more than the pipe and
    // vm-run's queue (64 KiB) hold. A guest that stalled would stop
    // reading, and the typing would never end.
    let mut stdin = child.stdin.take().expect("stdin");
    let (typed, done) = mpsc::channel();
    let (go_on, more) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let line = "x".repeat(1023) + "\n";
        for _ in 0..100 {
            stdin.write_all(line.as_bytes()).expect("type");
        }
        let _ = typed.send(());
        let _ = more.recv();
        // The echo guest resets once it reads a '.'.
        let _ = stdin.write_all(b"LAST-WORDS.");
    });
    let stalled = done.recv_timeout(Duration::from_secs(60)).is_err();
    // Reading stdout now lets the queue out.
    let _ = go_on.send(());
    let out = wait_output(child, Duration::from_secs(30));
    assert!(!stalled, "the guest stalled on its console: {}", out.stderr);
    assert_eq!(out.status, 75, "{}", out.stderr);
    // The pipe's and the queue's worth was kept, the guest's last words
    // too; what did not fit (about 100 - 4 - 4 - 64 KiB) is lost, and
    // said so.
    assert!(out.stdout.len() >= 68 << 10, "{} bytes", out.stdout.len());
    let lost: usize = out
        .stderr
        .strip_prefix("vm-run: console: ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        lost >= 24 << 10,
        "{} bytes out, {:?}",
        out.stdout.len(),
        out.stderr
    );
    assert!(
        out.stdout.ends_with("LAST-WORDS."),
        "{:?}",
        &out.stdout[out.stdout.len() - 40..]
    );
    assert!(
        out.stderr.starts_with("vm-run: console: ") && out.stderr.contains("bytes of output lost"),
        "{}",
        out.stderr
    );
}
