//! Named tiny guests (vm-run -N) on this machine's /dev/kvm, and
//! vm-ctl's console as a test drives it: the pieces tests/control.rs and
//! tests/snapshot.rs share.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::{bin, tiny_guest, wait_output, Output};

/// A tiny guest that echoes its console until it reads a '.'.
pub struct Tiny {
    pub child: Option<Child>,
    dir: PathBuf,
    name: String,
}

impl Tiny {
    pub fn start(dir: &Path, name: &str, extra: &[&str]) -> Tiny {
        let mut cmd = Command::new(bin("vm-run"));
        cmd.args(["-N", name, "-m", "16M"])
            .args(extra)
            .arg("-b")
            .arg(tiny_guest())
            .args(["-a", "echo"])
            .stdin(Stdio::null());
        Tiny::spawn(cmd, dir, name)
    }

    /// Runs `cmd` (vm-run or vm-receive with -N `name`, stdin set up) and
    /// waits for its control socket.
    pub fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Tiny {
        let mut child = cmd
            .env("VM_RUNDIR", dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vm-run");
        let sock = dir.join(format!("{name}.sock"));
        let start = Instant::now();
        while UnixStream::connect(&sock).is_err() {
            if let Ok(Some(_)) = child.try_wait() {
                let out = wait_output(child, Duration::from_secs(1));
                panic!("{name}: ended before its socket came: {out:?}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name}: no socket"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Tiny {
            child: Some(child),
            dir: dir.to_path_buf(),
            name: name.into(),
        }
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("running")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn running(&mut self) -> bool {
        self.child().try_wait().expect("try_wait").is_none()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join(format!("{}.sock", self.name))
    }

    pub fn end(mut self) -> Output {
        wait_output(self.child.take().expect("running"), Duration::from_secs(10))
    }
}

impl Drop for Tiny {
    fn drop(&mut self) {
        // A failed test must not leave an echoing guest spinning.
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// vm-ctl console with a pipe for a keyboard; what it prints is collected.
pub struct Console {
    pub child: Child,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Console {
    pub fn attach(dir: &Path, name: &str) -> Console {
        let mut child = Command::new(bin("vm-ctl"))
            .env("VM_RUNDIR", dir)
            .args(["console", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vm-ctl console");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (mut out, s) = (child.stdout.take().expect("stdout"), seen.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                s.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Console { child, seen }
    }

    pub fn type_in(&mut self, s: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(s.as_bytes()).expect("type");
        stdin.flush().expect("flush");
    }

    pub fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    pub fn wait_for(&self, want: &str, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.seen().contains(want) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }
}
