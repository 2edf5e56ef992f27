//! vm-run under containerd, Kubernetes' node runtime: Debian's containerd
//! and runc, started by tests/engines/containerd.sh with state of their own
//! under target/containerd, import the image `make oci` writes
//! (contrib/oci/build.sh) and `ctr run` the tiny guest in it on /dev/kvm,
//! as a kubelet would through CRI. Each test reads what an operator reads:
//! `ctr run`'s output and exit status, `ctr container info`,
//! /proc/PID/status of the container's process.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use vm_tests::{bin_dir, root, target_dir, tiny_guest, wait_output, Output};

const NS: &str = "vm-tests";
const IMAGE: &str = "localhost/vm-tools:latest";

/// Every capability ctr's default spec gives a container (containerd's
/// oci.defaultUnixCaps), dropped one by one: ctr 1.6 takes no "ALL".
const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// The running containerd: its socket, and the script that ends every
/// task and then containerd when its stdin closes, which happens however
/// this process ends.
struct Containerd {
    sock: PathBuf,
    _keeper: Child,
}

fn containerd() -> &'static Containerd {
    static C: OnceLock<Containerd> = OnceLock::new();
    C.get_or_init(|| {
        let t0 = Instant::now();
        // The image, as make oci writes it.
        let tar = target_dir().join("oci/vm-tools.tar");
        let built = Command::new(root().join("contrib/oci/build.sh"))
            .arg(bin_dir())
            .arg(&tar)
            .status()
            .is_ok_and(|s| s.success());
        assert!(built, "contrib/oci/build.sh failed");
        let dir = target_dir().join("containerd");
        let mut keeper = Command::new(root().join("tests/engines/containerd.sh"))
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run containerd.sh");
        let mut line = String::new();
        let stdout = keeper.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read containerd.sh");
        assert_eq!(line.trim(), "ready", "containerd did not start");
        let c = Containerd {
            sock: dir.join("containerd.sock"),
            _keeper: keeper,
        };
        let out = c.ctr(&["images", "import"], &[tar.to_str().expect("UTF-8 path")]);
        assert_eq!(out.status, 0, "{out:?}");
        eprintln!("containerd: started, image imported in {:?}", t0.elapsed());
        c
    })
}

impl Containerd {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&self.sock).args(["-n", NS]).args(args);
        c
    }

    fn ctr(&self, args: &[&str], more: &[&str]) -> Output {
        let child = self
            .cmd(args)
            .args(more)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ctr");
        wait_output(child, Duration::from_secs(60))
    }

    /// `ctr run` of the tiny guest with the command line `mode` in a
    /// container `name`: /dev/kvm its only device beyond the default
    /// set, no capabilities, the guest's directory bind-mounted read-only
    /// (the image holds the tools only). The console is the task's stdio.
    fn run(&self, name: &str, mode: &str) -> Command {
        self.run_kernel(name, "/guest/tiny.elf", mode)
    }

    fn run_kernel(&self, name: &str, kernel: &str, mode: &str) -> Command {
        self.run_with(name, &["--device", "/dev/kvm"], &["-b", kernel, "-a", mode])
    }

    /// `ctr run` with the options `how` of the tiny guest, given vm-run's
    /// arguments `args` after `-m 16M`.
    fn run_with(&self, name: &str, how: &[&str], args: &[&str]) -> Command {
        let guest = tiny_guest().parent().expect("guest dir").display();
        // --seccomp: containerd's default profile, RuntimeDefault in a Pod.
        let mut c = self.cmd(&["run", "--rm", "--seccomp"]);
        c.args(how);
        for cap in DEFAULT_CAPS {
            c.args(["--cap-drop", &format!("CAP_{cap}")]);
        }
        c.args([
            "--mount",
            &format!("type=bind,src={guest},dst=/guest,options=rbind:ro"),
            IMAGE,
            name,
            "vm-run",
            "-m",
            "16M",
        ]);
        c.args(args);
        c
    }
}

fn run_with_input(c: &Containerd, name: &str, mode: &str, input: &str) -> Output {
    let mut child = c
        .run(name, mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr run");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    wait_output(child, Duration::from_secs(60))
}

#[test]
fn the_image_holds_the_static_tools_and_nothing_else() {
    let c = containerd();
    let out = c.ctr(&["images", "ls", "-q"], &[]);
    assert!(out.stdout.lines().any(|l| l == IMAGE), "{out:?}");
    // Every layer's files, from the archive make oci wrote.
    let dir = target_dir().join("tmp/oci-layers");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let tar = target_dir().join("oci/vm-tools.tar");
    let out = wait_output(
        Command::new("sh")
            .args([
                "-c",
                "tar -xf \"$1\" && for b in blobs/sha256/*; do \
                 if gzip -t \"$b\" 2>/dev/null; then tar -tzf \"$b\"; fi; done",
                "sh",
            ])
            .arg(&tar)
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh"),
        Duration::from_secs(30),
    );
    assert_eq!(out.status, 0, "{out:?}");
    let mut files: Vec<&str> = out.stdout.lines().collect();
    files.sort();
    assert_eq!(
        files,
        [
            "usr/",
            "usr/local/",
            "usr/local/bin/",
            "usr/local/bin/vm-ctl",
            "usr/local/bin/vm-img",
            "usr/local/bin/vm-net",
            "usr/local/bin/vm-receive",
            "usr/local/bin/vm-run",
            "usr/local/bin/vm-send",
        ]
    );
}

#[test]
fn the_tasks_exit_status_is_vm_runs() {
    let c = containerd();
    let out = run_with_input(c, "poweroff", "poweroff", "");
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout, "tiny: poweroff\n");
    let out = run_with_input(c, "reset", "reset", "");
    assert_eq!(out.status, 75, "{out:?}");
    assert_eq!(out.stdout, "tiny: reset\n");
    // vm-run's own errors too: a kernel that is not in the container.
    let out = wait_output(
        c.run_kernel("missing", "/guest/none", "x")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ctr run"),
        Duration::from_secs(60),
    );
    assert_eq!(out.status, 66, "{out:?}");
    assert_eq!(
        out.stderr, "vm-run: /guest/none: No such file or directory\n",
        "{out:?}"
    );
}

#[test]
fn the_console_is_the_tasks_stdio() {
    let c = containerd();
    let out = run_with_input(c, "echo", "echo", "through ctr.");
    assert_eq!(out.status, 75, "{out:?}");
    assert_eq!(out.stdout, "tiny: echo\nthrough ctr.");
}

/// The container's first process, once the task runs.
fn task_pid(c: &Containerd, name: &str) -> u32 {
    let t0 = Instant::now();
    loop {
        let out = c.ctr(&["tasks", "ls"], &[]);
        let pid = out.stdout.lines().find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 3 && w[0] == name && w[2] == "RUNNING").then(|| w[1].parse().ok())?
        });
        if let Some(pid) = pid {
            return pid;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{name}: {out:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctr_task_kill_ends_the_guest_and_the_container_has_no_capabilities() {
    let c = containerd();
    let name = "kill";
    let run = c
        .run(name, "echo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr run");
    let pid = task_pid(c, name);

    // What runc was told: no capability in any set, /dev/kvm the one
    // device added, containerd's default seccomp profile.
    let info = c.ctr(&["containers", "info"], &[name]);
    assert_eq!(info.status, 0, "{info:?}");
    let spec: String = info.stdout.split_whitespace().collect();
    assert!(spec.contains("\"capabilities\":{}"), "{}", info.stdout);
    assert!(spec.contains("\"path\":\"/dev/kvm\""), "{}", info.stdout);
    assert!(spec.contains("\"seccomp\":{"), "{}", info.stdout);
    // What the process has: nothing, and no way to get anything back.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let line = status
            .lines()
            .find(|l| l.starts_with(set))
            .expect("Cap line");
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(cmdline.starts_with(b"vm-run\0"), "{cmdline:?}");
    // Its /dev: the default pseudo devices and kvm, nothing else (no
    // tun, no disk).
    let mut devs: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root/dev"))
        .expect("its /dev")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    devs.sort();
    let mut want = [
        "fd", "full", "kvm", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin",
        "stdout", "tty", "urandom", "zero",
    ];
    want.sort();
    assert_eq!(devs, want);

    // SIGTERM, ctr task kill's default: vm-run ends the guest, exits 0,
    // and ctr run with it.
    let kill = c.ctr(&["tasks", "kill"], &[name]);
    let out = wait_output(run, Duration::from_secs(30));
    assert_eq!(out.status, 0, "{out:?} after {kill:?}");
    assert_eq!(out.stdout, "tiny: echo\n");
}

#[test]
fn a_bind_mounted_dev_kvm_is_not_enough() {
    // What a hostPath volume of /dev/kvm gives a pod that is not
    // privileged: the node, but the device cgroup refuses it.
    let c = containerd();
    let out = wait_output(
        c.run_with(
            "hostpath",
            &[
                "--mount",
                "type=bind,src=/dev/kvm,dst=/dev/kvm,options=rbind:rw",
            ],
            &["-b", "/guest/tiny.elf", "-a", "poweroff"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr run"),
        Duration::from_secs(60),
    );
    assert_eq!(out.status, 77, "{out:?}");
    assert_eq!(out.stderr, "vm-run: /dev/kvm: Operation not permitted\n");
}

#[test]
fn vm_ctl_stop_in_the_container_powers_the_guest_off() {
    // contrib/k8s/vm-pod.yaml's preStop hook, as ctr task exec.
    let c = containerd();
    let name = "prestop";
    let run = c
        .run_with(
            name,
            &["--device", "/dev/kvm"],
            &["-N", "web", "-b", "/guest/tiny.elf", "-a", "wait"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr run");
    task_pid(c, name);
    // The control socket comes a moment after the process.
    let t0 = Instant::now();
    let stop = loop {
        let o = c.ctr(
            &["tasks", "exec", "--exec-id", "stop", name],
            &["vm-ctl", "stop", "-w", "web"],
        );
        if o.status == 0 || t0.elapsed() > Duration::from_secs(10) {
            break o;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!((stop.status, stop.stderr.as_str()), (0, ""), "{stop:?}");
    let out = wait_output(run, Duration::from_secs(30));
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout, "tiny: wait\n");
}
