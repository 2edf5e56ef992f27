//! Guests as Slurm batch jobs: Debian's slurmctld, munged and two slurmd
//! nodes, each node a network namespace of its own (tests/slurm/cluster.sh
//! says why), run the tiny guest through contrib/slurm/vm-job. Each test
//! reads what a Slurm user reads: `scontrol show job` (state, exit code,
//! node, restarts) and the job's output file, where the guest's console
//! goes, on the storage the nodes share.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use vm_tests::{bin, root, target_dir, tiny_guest, wait_output, Output};

const CTL_NS: &str = "vmslurm-ctl";

/// The running cluster, and the script that stops it and deletes its
/// namespaces when its stdin closes, which happens however this process
/// ends.
struct Cluster {
    dir: PathBuf,
    _keeper: Child,
}

fn cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        let t0 = Instant::now();
        // The tools and the guest first: the jobs find them on PATH.
        let _ = (bin("vm-run"), tiny_guest());
        let dir = target_dir().join("slurm");
        let mut keeper = Command::new(root().join("tests/slurm/cluster.sh"))
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run cluster.sh");
        let mut line = String::new();
        let stdout = keeper.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read cluster.sh");
        assert_eq!(line.trim(), "ready", "the Slurm cluster did not start");
        eprintln!("slurm: cluster up in {:?}", t0.elapsed());
        Cluster {
            dir,
            _keeper: keeper,
        }
    })
}

/// One test at a time: the nodes have a CPU each, and the checkpoint test
/// drains one of them.
fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `scontrol show job` says of a job.
#[derive(Debug, Default)]
struct Job {
    state: String,
    exit_code: String,
    batch_host: String,
    restarts: u32,
}

impl Cluster {
    fn shared(&self) -> PathBuf {
        self.dir.join("shared")
    }

    /// A Slurm client `prog` in the controller's namespace, with the
    /// cluster's config and the tools on PATH (sbatch passes both on to
    /// the job).
    fn client(&self, prog: &str, args: &[&str]) -> Output {
        let bins = bin("vm-run");
        let bins = bins.parent().expect("bin dir").display().to_string();
        let path = format!("{bins}:{}", std::env::var("PATH").unwrap_or_default());
        let child = Command::new("ip")
            .args(["netns", "exec", CTL_NS, prog])
            .args(args)
            .env("SLURM_CONF", self.dir.join("slurm.conf"))
            .env("PATH", path)
            .env("VM_JOB_DIR", self.shared())
            .env_remove("VM_RUNDIR")
            .current_dir(self.shared())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a Slurm client");
        wait_output(child, Duration::from_secs(30))
    }

    /// sbatch of vm-job for the guest `name`, with sbatch's `opts` and
    /// vm-run's `args` after `-m 16M -b tiny.elf`; the job's id.
    fn submit(&self, name: &str, opts: &[&str], args: &[&str]) -> String {
        let out_file = self.out_file(name);
        let _ = std::fs::remove_file(&out_file);
        let script = root().join("contrib/slurm/vm-job");
        let mut a: Vec<&str> = vec!["--parsable", "-J", name];
        let out_opt = format!("--output={}", out_file.display());
        a.push(&out_opt);
        a.extend_from_slice(opts);
        let script = script.to_str().expect("UTF-8 path");
        let kernel = tiny_guest().to_str().expect("UTF-8 path");
        a.extend_from_slice(&[script, name, "-m", "16M", "-b", kernel]);
        a.extend_from_slice(args);
        let out = self.client("sbatch", &a);
        assert_eq!(out.status, 0, "sbatch: {out:?}");
        out.stdout.trim().to_string()
    }

    /// The job's output: its console, and what vm-job and vm-run said.
    fn out_file(&self, name: &str) -> PathBuf {
        self.shared().join(format!("{name}.out"))
    }

    fn job(&self, id: &str) -> Job {
        let out = self.client("scontrol", &["show", "job", "-o", id]);
        assert_eq!(out.status, 0, "scontrol show job: {out:?}");
        let mut j = Job::default();
        for field in out.stdout.split_whitespace() {
            let Some((k, v)) = field.split_once('=') else {
                continue;
            };
            match k {
                "JobState" => j.state = v.to_string(),
                "ExitCode" => j.exit_code = v.to_string(),
                "BatchHost" => j.batch_host = v.to_string(),
                "Restarts" => j.restarts = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        j
    }

    /// Waits until the job satisfies `ok`, at most `limit`.
    fn await_job(&self, id: &str, limit: Duration, ok: impl Fn(&Job) -> bool) -> Job {
        let t0 = Instant::now();
        loop {
            let j = self.job(id);
            if ok(&j) {
                return j;
            }
            assert!(
                t0.elapsed() < limit,
                "job {id} after {limit:?}: {j:?}\n{}",
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The state and exit code of job `id` once it has ended (within 30 s).
    fn await_end(&self, id: &str) -> (String, String) {
        let j = self.await_job(id, Duration::from_secs(30), |j| {
            !matches!(
                j.state.as_str(),
                "PENDING" | "RUNNING" | "COMPLETING" | "CONFIGURING"
            )
        });
        (j.state, j.exit_code)
    }

    fn log_tail(&self) -> String {
        let log = self.dir.join("log/slurmctld.log");
        let s = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn scontrol(&self, args: &[&str]) {
        let out = self.client("scontrol", args);
        assert_eq!(out.status, 0, "scontrol {args:?}: {out:?}");
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until the file at `path` satisfies `ok`, at most `limit`.
fn await_file(path: &Path, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let s = read(path);
        if ok(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < limit,
            "{} after {limit:?}: {s:?}",
            path.display()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The job's output once the resumed guest has gone on for a few rounds:
/// dots after vm-job's "resuming from" line, no second `tiny:` banner (no
/// reboot), and no "BAD" (every page held the last round's number, so the
/// memory came across whole).
fn resumed(out: &Path) -> String {
    let s = await_file(out, Duration::from_secs(20), |s| {
        s.split_once("resuming from")
            .and_then(|(_, after)| after.split_once('\n'))
            .is_some_and(|(_, after)| after.matches('.').count() >= 3)
    });
    assert_eq!(s.matches("tiny:").count(), 1, "the guest rebooted: {s}");
    assert!(!s.contains("BAD"), "the guest's memory changed: {s}");
    s
}

/// A drained node is put back when the test ends, however it ends.
struct Drained<'a>(&'a Cluster, String);

impl Drop for Drained<'_> {
    fn drop(&mut self) {
        let node = format!("nodename={}", self.1);
        let _ = self
            .0
            .client("scontrol", &["update", &node, "state=resume"]);
    }
}

/// Whether any process on this machine runs the guest `name` (the nodes'
/// processes are this machine's too).
fn guest_process(name: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        let prog = args
            .first()
            .map(|a| a.ends_with(b"vm-run") || a.ends_with(b"vm-receive"));
        prog == Some(true)
            && args
                .windows(2)
                .any(|w| w[0] == b"-N" && w[1] == name.as_bytes())
    })
}

#[test]
fn a_job_at_its_time_limit_is_checkpointed_and_resumed_on_the_other_node() {
    let c = cluster();
    let _serial = serial();
    let t0 = Instant::now();
    // Slurm signals the batch shell when 110 s of the 2 min are left: at
    // its next time-limit check (every 30 s), 10 to 40 s into each run.
    // A disk on the shared storage, reopened by its path on the other
    // node.
    let disk = c.shared().join("ckpt.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("write the disk");
    let disk = disk.to_str().expect("UTF-8 path");
    let id = c.submit(
        "ckpt",
        &["--time=2", "--signal=B:USR1@110"],
        &["-d", disk, "-a", "dirty"],
    );
    let first = c.await_job(&id, Duration::from_secs(30), |j| j.state == "RUNNING");
    let out = c.out_file("ckpt");
    await_file(&out, Duration::from_secs(10), |s| {
        s.contains("tiny: dirty\n..")
    });
    // The node is wanted back: the requeued job cannot start there again.
    c.scontrol(&[
        "update",
        &format!("nodename={}", first.batch_host),
        "state=drain",
        "reason=maintenance",
    ]);
    let _drained = Drained(c, first.batch_host.clone());

    let second = c.await_job(&id, Duration::from_secs(90), |j| {
        j.restarts >= 1 && j.state == "RUNNING"
    });
    assert_ne!(second.batch_host, first.batch_host, "{second:?}");
    let snap = c.shared().join(format!("vm-job.{id}.ckpt.snap"));
    assert!(snap.exists(), "no checkpoint at {}", snap.display());
    let s = resumed(&out);
    assert!(
        s.contains(&format!("on {}", second.batch_host)),
        "not resumed on the other node: {s}"
    );
    let dots_before = s
        .split_once("vm-job: ckpt: checkpointed")
        .map(|(b, _)| b.matches('.').count());
    assert!(
        dots_before.is_some_and(|n| n > 1),
        "no checkpoint message: {s}"
    );

    c.client("scancel", &[&id]);
    let end = c.await_job(&id, Duration::from_secs(30), |j| j.state == "CANCELLED");
    assert!(!snap.exists(), "the checkpoint outlived the job: {end:?}");
    eprintln!("slurm: checkpoint and resume took {:?}", t0.elapsed());
}

#[test]
fn a_job_signalled_by_scancel_is_checkpointed_and_resumed_on_the_other_node() {
    let c = cluster();
    let _serial = serial();
    let t0 = Instant::now();
    let id = c.submit("pre", &[], &["-a", "dirty"]);
    let first = c.await_job(&id, Duration::from_secs(30), |j| j.state == "RUNNING");
    let out = c.out_file("pre");
    await_file(&out, Duration::from_secs(10), |s| {
        s.contains("tiny: dirty\n..")
    });
    // The node is wanted now, not at a time limit: the operator drains
    // it and sends the batch shell what --signal would.
    c.scontrol(&[
        "update",
        &format!("nodename={}", first.batch_host),
        "state=drain",
        "reason=urgent",
    ]);
    let _drained = Drained(c, first.batch_host.clone());
    let r = c.client("scancel", &["-b", "-s", "USR1", &id]);
    assert_eq!(r.status, 0, "{r:?}");
    let second = c.await_job(&id, Duration::from_secs(60), |j| {
        j.restarts >= 1 && j.state == "RUNNING"
    });
    assert_ne!(second.batch_host, first.batch_host, "{second:?}");
    let s = resumed(&out);
    assert!(s.contains("vm-job: pre: checkpointed"), "{s}");
    c.client("scancel", &[&id]);
    c.await_job(&id, Duration::from_secs(30), |j| j.state == "CANCELLED");
    eprintln!(
        "slurm: signal, checkpoint and resume took {:?}",
        t0.elapsed()
    );
}

#[test]
fn a_job_preempted_by_a_higher_partition_is_checkpointed_and_resumed_on_the_other_node() {
    let c = cluster();
    let _serial = serial();
    let t0 = Instant::now();
    let id = c.submit("pmt", &[], &["-a", "dirty"]);
    let first = c.await_job(&id, Duration::from_secs(30), |j| j.state == "RUNNING");
    let out = c.out_file("pmt");
    await_file(&out, Duration::from_secs(10), |s| {
        s.contains("tiny: dirty\n..")
    });
    // A job of the higher partition wants the guest's node. Slurm
    // preempts the guest's job: with preempt_send_user_signal it sends
    // vm-job's --signal (USR1 to the batch shell) and gives it the
    // partition's GraceTime before it would requeue the job itself.
    let node = format!("--nodelist={}", first.batch_host);
    let r = c.client(
        "sbatch",
        &[
            "--parsable",
            "-p",
            "urgent",
            &node,
            "-J",
            "urgent",
            "--output=/dev/null",
            "--wrap",
            "sleep 30",
        ],
    );
    assert_eq!(r.status, 0, "sbatch: {r:?}");
    let urgent = r.stdout.trim().to_string();
    let u = c.await_job(&urgent, Duration::from_secs(60), |j| j.state == "RUNNING");
    assert_eq!(u.batch_host, first.batch_host, "{u:?}");
    let second = c.await_job(&id, Duration::from_secs(60), |j| {
        j.restarts >= 1 && j.state == "RUNNING"
    });
    assert_ne!(second.batch_host, first.batch_host, "{second:?}");
    let s = resumed(&out);
    assert!(
        s.contains("vm-job: pmt: checkpointed"),
        "not checkpointed: {s}"
    );
    c.client("scancel", &[&id, &urgent]);
    c.await_job(&id, Duration::from_secs(30), |j| j.state == "CANCELLED");
    eprintln!(
        "slurm: preemption, checkpoint and resume took {:?}",
        t0.elapsed()
    );
}

#[test]
fn a_guest_that_powers_off_ends_the_job_completed() {
    let c = cluster();
    let _serial = serial();
    let id = c.submit("off", &[], &["-a", "poweroff"]);
    assert_eq!(c.await_end(&id), ("COMPLETED".into(), "0:0".into()));
    assert_eq!(read(&c.out_file("off")), "tiny: poweroff\n");
}

#[test]
fn a_guest_that_fails_ends_the_job_failed_with_vm_runs_status() {
    let c = cluster();
    let _serial = serial();
    // The tiny guest's "reset": vm-run exits 75 for a reboot.
    let id = c.submit("boom", &[], &["-a", "reset"]);
    assert_eq!(c.await_end(&id), ("FAILED".into(), "75:0".into()));
    // And one that cannot start: vm-run's one line, and its status.
    let id = c.submit("nokernel", &[], &["-b", "/nonexistent/vmlinuz"]);
    assert_eq!(c.await_end(&id), ("FAILED".into(), "66:0".into()));
    let s = read(&c.out_file("nokernel"));
    assert!(s.starts_with("vm-run: /nonexistent/vmlinuz: "), "{s:?}");
    assert_eq!(s.lines().count(), 1, "{s:?}");
}

#[test]
fn scancel_ends_the_guest_cleanly() {
    let c = cluster();
    let _serial = serial();
    let id = c.submit("gone", &[], &["-a", "dirty"]);
    c.await_job(&id, Duration::from_secs(30), |j| j.state == "RUNNING");
    let out = c.out_file("gone");
    await_file(&out, Duration::from_secs(10), |s| {
        s.contains("tiny: dirty\n..")
    });
    assert!(guest_process("gone"), "no vm-run for the job");
    let r = c.client("scancel", &[&id]);
    assert_eq!(r.status, 0, "{r:?}");
    let j = c.await_job(&id, Duration::from_secs(30), |j| j.state == "CANCELLED");
    // vm-run stopped the guest and went; nothing said but the console.
    let t0 = Instant::now();
    while guest_process("gone") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "vm-run outlived the job: {j:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // Nothing said but the console, and slurmstepd's note of the
    // cancel: vm-run ended quietly (exit 0), vm-job too.
    let s = read(&out);
    let said: Vec<&str> = s
        .trim_end()
        .split(['\n', '.'])
        .filter(|l| !l.is_empty() && !l.starts_with("slurmstepd-"))
        .collect();
    assert_eq!(said, ["tiny: dirty"], "{s:?}");
    assert!(s.contains(&format!("JOB {id} ON ")), "{s:?}");
}

#[test]
fn vm_job_outside_slurm_is_a_usage_error() {
    let out = wait_output(
        Command::new(root().join("contrib/slurm/vm-job"))
            .arg("web")
            .env_remove("SLURM_JOB_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vm-job"),
        Duration::from_secs(10),
    );
    assert_eq!(out.status, 64, "{out:?}");
    assert_eq!(
        out.stderr,
        "vm-job: web: not a Slurm job (no SLURM_JOB_ID)\n"
    );
}
