//! The test harness: builds the static binaries and the guests the tests
//! run, runs vm-run on this machine's /dev/kvm, and runs batches of
//! scenarios inside the emulated test host (QEMU TCG with SVM, kvm-amd
//! inside) where stock Linux guests boot. See tests/README.md.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

pub const MUSL: &str = "x86_64-unknown-linux-musl";

pub fn root() -> &'static Path {
    // tests/ is one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// The directory of the static release binaries, built once per test
/// process (a no-op for cargo when they are up to date).
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--release", "--bins", "--target", MUSL])
            .current_dir(root())
            .status()
            .expect("run cargo");
        assert!(status.success(), "building the static binaries failed");
        target_dir().join(MUSL).join("release")
    })
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// The tiny PVH guest of tests/tiny-guest, assembled once.
pub fn tiny_guest() -> &'static Path {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        let src = root().join("tests/tiny-guest");
        let out = target_dir().join("tiny-guest");
        fs::create_dir_all(&out).expect("create target/tiny-guest");
        let (obj, elf) = (out.join("tiny.o"), out.join("tiny.elf"));
        let ok = Command::new("cc")
            .arg("-c")
            .arg(src.join("tiny.S"))
            .arg("-o")
            .arg(&obj)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("ld")
                .args(["-m", "elf_x86_64", "-n", "--no-warn-rwx-segments", "-T"])
                .arg(src.join("tiny.ld"))
                .arg(&obj)
                .arg("-o")
                .arg(&elf)
                .status()
                .is_ok_and(|s| s.success());
        assert!(ok, "assembling the tiny guest failed (cc, ld)");
        elf
    })
}

/// What a finished command left behind.
#[derive(Debug)]
pub struct Output {
    /// The exit status, or 128 + the signal that killed it.
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

fn read_all<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut p) = pipe {
            p.read_to_end(&mut s).ok();
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Waits for `child` at most `limit`, killing it after that.
pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    let out = read_all(child.stdout.take());
    let err = read_all(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > limit {
            // The whole group: run-host.sh leaves timeout and QEMU behind.
            // SAFETY: kill(2) with the group of a child we started.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            child.kill().ok();
            panic!("timed out after {limit:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    use std::os::unix::process::ExitStatusExt;
    Output {
        status: status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs the static vm-run with `args` on this machine's /dev/kvm, stdin
/// empty.
pub fn vm_run(args: &[&str]) -> Output {
    let child = Command::new(bin("vm-run"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vm-run");
    wait_output(child, Duration::from_secs(30))
}

pub mod named;
pub mod testhost;
