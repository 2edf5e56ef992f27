//! Faults that must lose nothing: a disk that fills under a Linux guest's
//! writes (one boot of the emulated test host), and, with tiny guests on
//! this machine's /dev/kvm, the far end of a stream or of a control
//! connection killed or stuck. Each checks what a user would: the guest
//! still answers, `qemu-img check` of the image, the name and the disk
//! free for the next guest.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use vm_tests::named::{Console, Tiny};
use vm_tests::testhost::{self, guest, Case, Report, Scenario};
use vm_tests::{bin, target_dir, wait_output, Output};

fn rundir(test: &str) -> PathBuf {
    let d = target_dir().join("tmp").join(format!("faults-{test}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

fn ctl(dir: &Path, args: &[&str]) -> Output {
    let child = Command::new(bin("vm-ctl"))
        .env("VM_RUNDIR", dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vm-ctl");
    wait_output(child, Duration::from_secs(20))
}

fn kill9(pid: u32) {
    let pid = i32::try_from(pid).expect("pid");
    // SAFETY: kill(2) on a process this test started; no memory is shared.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
}

/// 8 MiB of random bytes as an initrd: a stream bigger than any pipe
/// buffer, that takes a while to read.
fn big_initrd(dir: &Path) -> PathBuf {
    let big = dir.join("initrd");
    let mut rnd = vec![0u8; 8 << 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut rnd))
        .expect("urandom");
    std::fs::write(&big, &rnd).expect("write initrd");
    big
}

/// Types `typed` into `name`'s console and expects it back.
fn echoes(dir: &Path, name: &str, typed: &str) -> bool {
    let mut con = Console::attach(dir, name);
    con.type_in(typed);
    let ok = con.wait_for(typed, Duration::from_secs(5));
    let _ = con.child.kill();
    let _ = con.child.wait();
    ok
}

/// Whether an exclusive flock(2) on `path` is free now, as the next
/// vm-run of that disk would take it.
fn lock_is_free(path: &Path) -> bool {
    let o = Command::new("flock")
        .args(["-n", "-x"])
        .arg(path)
        .arg("true")
        .status()
        .expect("flock(1)");
    o.success()
}

#[test]
fn a_reader_of_vm_send_killed_mid_stream_leaves_the_guest_running() {
    // tests/snapshot.rs's a_failed_send_leaves_the_guest_running closes
    // the pipe; here the reader is a process that dies by SIGKILL while
    // vm-run is blocked writing into a full pipe.
    let dir = rundir("send-reader");
    let big = big_initrd(&dir);
    let mut src = Tiny::start(&dir, "src", &["-m", "32M", "-i", big.to_str().unwrap()]);
    assert!(echoes(&dir, "src", "a"));

    let mut send = Command::new(bin("vm-send"))
        .arg("src")
        .env("VM_RUNDIR", &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vm-send");
    let pipe = send.stdout.take().expect("stdout");
    // The reader: reads 1 MiB, then stops reading and sleeps, so the
    // sender fills the pipe and blocks before the reader is killed.
    let mut reader = Command::new("sh")
        .args(["-c", "head -c 1048576 > /dev/null; exec sleep 60"])
        .stdin(pipe)
        .stdout(Stdio::null())
        .spawn()
        .expect("reader");
    thread::sleep(Duration::from_secs(2));
    assert!(
        send.try_wait().expect("try_wait").is_none(),
        "vm-send ended before the reader was killed"
    );
    kill9(reader.id());
    let _ = reader.wait();
    let o = wait_output(send, Duration::from_secs(20));
    assert_eq!(o.status, 69, "{o:?}");
    assert_eq!(
        o.stderr,
        "vm-send: src: send failed, guest resumed: Broken pipe\n"
    );
    assert!(src.running());
    assert!(echoes(&dir, "src", "b"), "the guest does not answer");
    let st = ctl(&dir, &["status", "src"]);
    assert!(st.stdout.contains("running"), "{st:?}");
    // And it can still be sent whole.
    let o = Command::new("sh")
        .args(["-c", "vm-send src | wc -c"])
        .env("VM_RUNDIR", &dir)
        .env("PATH", path_with_bins())
        .output()
        .expect("sh");
    assert!(o.status.success(), "{o:?}");
    let n: u64 = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(n > 8 << 20, "a stream of {n} bytes");
    assert_eq!(src.end().status, 0);
}

fn path_with_bins() -> String {
    let bins = bin("vm-run");
    let bins = bins.parent().expect("bin dir").display().to_string();
    format!("{bins}:{}", std::env::var("PATH").unwrap_or_default())
}

/// After a killed vm-receive or vm-run of `name`: nothing answers on the
/// name, vm-ctl does not list it, and `disk` is free.
fn assert_nothing_left(dir: &Path, name: &str, disk: &Path) {
    let sock = dir.join(format!("{name}.sock"));
    assert!(
        UnixStream::connect(&sock).is_err(),
        "a socket answers for the killed {name}"
    );
    let st = ctl(dir, &["status", name]);
    assert_eq!(
        (st.status, st.stderr.as_str()),
        (
            69,
            format!("vm-ctl: {name}: no such guest running\n").as_str()
        )
    );
    assert!(lock_is_free(disk), "{}: still locked", disk.display());
}

#[test]
fn vm_receive_killed_mid_stream_leaves_nothing_behind() {
    let dir = rundir("receive-killed");
    let big = big_initrd(&dir);
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let d = disk.to_str().unwrap();
    let src = Tiny::start(
        &dir,
        "src",
        &["-m", "32M", "-i", big.to_str().unwrap(), "-d", d],
    );
    assert!(echoes(&dir, "src", "x"));
    let stream = dir.join("stream");
    let file = std::fs::File::create(&stream).expect("stream file");
    let o = Command::new(bin("vm-send"))
        .arg("src")
        .env("VM_RUNDIR", &dir)
        .stdout(file)
        .output()
        .expect("vm-send");
    assert!(o.status.success(), "{o:?}");
    // vm-send without -k ends the guest, and with it the disk's lock.
    assert_eq!(src.end().status, 0);
    let bytes = std::fs::read(&stream).expect("read stream");
    assert!(bytes.len() > 8 << 20, "a stream of {} bytes", bytes.len());

    let mut recv = Command::new(bin("vm-receive"))
        .args(["-N", "dst", "-d", d])
        .env("VM_RUNDIR", &dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vm-receive");
    let mut input = recv.stdin.take().expect("stdin");
    input
        .write_all(&bytes[..bytes.len() / 2])
        .expect("half the stream");
    // Half read: vm-receive waits for the rest. (It opens the disks only
    // once the whole stream is checked, so the disk is not locked yet.)
    thread::sleep(Duration::from_millis(500));
    assert!(recv.try_wait().expect("try_wait").is_none());
    kill9(recv.id());
    let _ = recv.wait();
    drop(input);
    assert_nothing_left(&dir, "dst", &disk);

    // Killed once the stream is in and the guest runs, the disk locked.
    let stdin = std::fs::File::open(&stream).expect("stream");
    let mut cmd = Command::new(bin("vm-receive"));
    cmd.args(["-N", "dst", "-d", d]).stdin(stdin);
    let mut rcvd = Tiny::spawn(cmd, &dir, "dst");
    assert!(echoes(&dir, "dst", "received"));
    assert!(
        !lock_is_free(&disk),
        "the received guest's disk is not locked"
    );
    kill9(rcvd.pid());
    let _ = rcvd.child().wait();
    rcvd.child = None;
    assert_nothing_left(&dir, "dst", &disk);

    let g = Tiny::start(&dir, "dst", &["-d", d]);
    assert!(echoes(&dir, "dst", "fresh"));
    assert_eq!(ctl(&dir, &["stop", "-f", "-w", "dst"]).status, 0);
    assert_eq!(g.end().status, 0);
}

#[test]
fn a_console_client_killed_or_stopped_does_not_hold_the_guest() {
    // tests/control.rs covers silent and dripping clients; here the
    // console's own client dies mid-session, and another is stopped.
    let dir = rundir("console-dies");
    let mut g = Tiny::start(&dir, "echoer", &[]);
    let mut con = Console::attach(&dir, "echoer");
    con.type_in("one");
    assert!(con.wait_for("one", Duration::from_secs(5)));
    kill9(con.child.id());
    let _ = con.child.wait();
    // The console is free again for the next client, and the guest goes on.
    let start = Instant::now();
    let mut con = loop {
        let mut c = Console::attach(&dir, "echoer");
        c.type_in("two");
        if c.wait_for("two", Duration::from_secs(2)) {
            break c;
        }
        let _ = c.child.kill();
        let _ = c.child.wait();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the console stays taken by a dead client"
        );
    };
    // A console client that is stopped (SIGSTOP: it neither reads nor
    // goes away) while the guest echoes: other clients are served.
    con.type_in(&"y".repeat(4000));
    let pid = i32::try_from(con.child.id()).expect("pid");
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    for _ in 0..3 {
        let st = ctl(&dir, &["status", "echoer"]);
        assert_eq!(st.status, 0, "{st:?}");
        assert!(st.stdout.contains("running"), "{st:?}");
    }
    assert!(g.running());
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    con.type_in("three");
    assert!(
        con.wait_for("three", Duration::from_secs(5)),
        "{}",
        con.seen()
    );
    con.type_in(".");
    assert_eq!(g.end().status, 75);
}

/// The guest's side of the full disk: 1 MiB of its own, then 64 MiB more
/// than the 32 MiB tmpfs under the image holds; then whether it still
/// reads, rewrites what it has, and answers.
fn filler(dev: &str, key: &str) -> String {
    format!(
        "head -c 1048576 /dev/urandom > /x; echo W-{key}=$(sha256sum < /x | cut -c1-64); \
         dd if=/x of=/dev/{dev} bs=1M oflag=direct 2>/dev/null && echo FIRST-{key}-OK; \
         dd if=/dev/urandom of=/dev/{dev} bs=1M seek=1 count=64 oflag=direct 2>/dd.err; \
         echo DD-{key}-RC=$?; echo DD-{key}-ERR=$(grep -v records /dd.err | head -n1); \
         echo GUEST-{key}=$(head -c 1048576 /dev/{dev} | sha256sum | cut -c1-64); \
         dd if=/x of=/dev/{dev} bs=64k count=1 oflag=direct 2>/dev/null && echo REWRITE-{key}-OK; \
         dmesg | grep -c -i error | sed s/^/GUEST-ERRORS-{key}=/; "
    )
}

fn scenarios() -> Vec<Scenario> {
    let run = guest(
        "-m 256M -d /mnt/q/full.qcow2 -d /mnt/r/full.raw",
        "bzImage",
        &format!(
            "run=\"{}{}echo GUEST-ALIVE\"",
            filler("vda", "Q"),
            filler("vdb", "R")
        ),
    );
    vec![Scenario {
        name: "full",
        script: format!(
            "mkdir -p /mnt/q /mnt/r\n\
             mount -t tmpfs -o size=32m tmpfs /mnt/q && mount -t tmpfs -o size=32m tmpfs /mnt/r || exit 1\n\
             vm-img create -s 256M /mnt/q/full.qcow2 || exit 1\n\
             dd of=/mnt/r/full.raw bs=1048576 seek=256 count=0 2>/dev/null || exit 1\n\
             {run} 2>/tmp/vmrun.err\n\
             echo VMRUN-RC=$?\n\
             echo VMRUN-STDERR:; cat /tmp/vmrun.err\n\
             df -k /mnt/q /mnt/r\n\
             qemu-img check /mnt/q/full.qcow2; echo QEMU-CHECK=$?\n\
             vm-img check /mnt/q/full.qcow2 > /dev/null; echo VM-IMG-CHECK=$?\n\
             qemu-img convert -O raw /mnt/q/full.qcow2 /tmp/q.raw && \
             echo HOST-Q=$(head -c 1048576 /tmp/q.raw | sha256sum | cut -c1-64)\n\
             rm -f /tmp/q.raw\n\
             echo HOST-R=$(head -c 1048576 /mnt/r/full.raw | sha256sum | cut -c1-64)\n\
             echo RAW-SIZE=$(stat -c %s /mnt/r/full.raw)"
        ),
    }]
}

fn case(name: &str) -> &'static Case {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT
        .get_or_init(|| testhost::run("faults", &scenarios(), true))
        .case(name)
}

fn value<'a>(c: &'a Case, key: &str) -> &'a str {
    c.output
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in:\n{}", c.output))
}

fn assert_has(c: &Case, want: &str) {
    assert!(c.output.contains(want), "no {want:?} in:\n{}", c.output);
}

/// What the guest sees of a full disk, for the qcow2 (Q) and raw (R) one.
fn guest_sees_io_errors_and_goes_on(key: &str) {
    let c = case("full");
    assert_has(c, &format!("FIRST-{key}-OK"));
    assert_ne!(value(c, &format!("DD-{key}-RC")), "0", "{}", c.output);
    let err = value(c, &format!("DD-{key}-ERR"));
    assert!(
        err.contains("Input/output error") || err.contains("No space left"),
        "dd of the full disk {key}: {err:?}\n{}",
        c.output
    );
    // What was written before the disk filled reads back, and an
    // overwrite of it needs no new space and succeeds.
    assert_eq!(
        value(c, &format!("GUEST-{key}")),
        value(c, &format!("W-{key}")),
        "{}",
        c.output
    );
    assert_has(c, &format!("REWRITE-{key}-OK"));
    assert_has(c, "GUEST-ALIVE");
    assert_has(c, "VMTEST-RUN-END");
    // vm-run kept running and the guest powered off as usual.
    assert_eq!(value(c, "VMRUN-RC"), "0", "{}", c.output);
}

#[test]
fn a_full_disk_under_a_qcow2_gives_the_guest_io_errors() {
    guest_sees_io_errors_and_goes_on("Q");
}

#[test]
fn a_full_disk_under_a_raw_image_gives_the_guest_io_errors() {
    guest_sees_io_errors_and_goes_on("R");
    let c = case("full");
    assert_eq!(value(c, "HOST-R"), value(c, "W-R"), "{}", c.output);
    assert_eq!(value(c, "RAW-SIZE"), "268435456", "{}", c.output);
}

#[test]
fn a_qcow2_that_filled_its_disk_checks_clean() {
    let c = case("full");
    // 0: clean; 3: leaked clusters only, no harm to data (vm-img(1)).
    let q = value(c, "QEMU-CHECK");
    // (0 is what it said here: the failed allocations left no cluster.)
    assert!(
        q == "0" || q == "3",
        "qemu-img check says {q}:\n{}",
        c.output
    );
    assert_eq!(value(c, "VM-IMG-CHECK"), q, "{}", c.output);
    // vm-run said why on its stderr, and went on.
    assert!(
        c.output
            .contains("vm-run: /mnt/q/full.qcow2: write: No space left on device"),
        "{}",
        c.output
    );
    assert_eq!(value(c, "HOST-Q"), value(c, "W-Q"), "{}", c.output);
}
