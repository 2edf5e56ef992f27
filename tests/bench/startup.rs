//! Start-up on this machine's /dev/kvm: vm-run against QEMU's microvm on
//! the same tiny PVH guest, in the same run, alternating so both see the
//! same machine noise. Measures time from spawn to the guest's first UART
//! byte and to exit, CPU time and peak RSS (from wait4), and prints a
//! Markdown table with medians, spreads and ratios.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use vm_tests::{bin, tiny_guest};

const RUNS: usize = 20;

#[derive(Default)]
struct Samples {
    first_byte_ms: Vec<f64>,
    exit_ms: Vec<f64>,
    cpu_ms: Vec<f64>,
    rss_kib: Vec<f64>,
}

fn measure(cmd: &mut Command, s: &mut Samples) {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut b = [0u8; 256];
    let n = out.read(&mut b).expect("read console");
    assert!(n > 0, "no console output");
    let first = start.elapsed();
    let mut seen = b[..n].to_vec();
    loop {
        match out.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&b[..n]),
        }
    }
    assert!(
        String::from_utf8_lossy(&seen).contains("tiny: bench"),
        "unexpected console output {seen:?}"
    );
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, whose pid we hold.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    assert_eq!(pid, child.id() as i32);
    let exit = start.elapsed();
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    s.first_byte_ms.push(first.as_secs_f64() * 1e3);
    s.exit_ms.push(exit.as_secs_f64() * 1e3);
    s.cpu_ms.push(tv(ru.ru_utime) + tv(ru.ru_stime));
    s.rss_kib.push(ru.ru_maxrss as f64);
}

fn median_spread(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let tiny = tiny_guest().to_str().expect("path").to_string();
    let vm_run = bin("vm-run");
    let mut ours = Samples::default();
    let mut qemu = Samples::default();
    for _ in 0..RUNS {
        measure(
            Command::new(&vm_run).args(["-m", "128M", "-b", &tiny, "-a", "bench"]),
            &mut ours,
        );
        measure(
            Command::new("qemu-system-x86_64")
                .args([
                    "-M",
                    "microvm",
                    "-enable-kvm",
                    "-cpu",
                    "host,-arch-capabilities",
                ])
                .args(["-m", "128M", "-nodefaults", "-no-user-config", "-nographic"])
                .args(["-serial", "stdio", "-monitor", "none", "-no-reboot"])
                .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=1"])
                .args(["-kernel", &tiny, "-append", "bench"])
                .process_group(0),
            &mut qemu,
        );
    }
    println!(
        "| measure ({RUNS} runs each, median [min–max]) | vm-run | QEMU microvm | vm-run / QEMU |"
    );
    println!("|---|---|---|---|");
    for (name, a, b, unit) in [
        (
            "spawn to first UART byte",
            &ours.first_byte_ms,
            &qemu.first_byte_ms,
            "ms",
        ),
        ("spawn to exit", &ours.exit_ms, &qemu.exit_ms, "ms"),
        ("CPU time (user + sys)", &ours.cpu_ms, &qemu.cpu_ms, "ms"),
        ("peak RSS", &ours.rss_kib, &qemu.rss_kib, "KiB"),
    ] {
        let (ma, la, ha) = median_spread(a);
        let (mb, lb, hb) = median_spread(b);
        println!(
            "| {name} | {ma:.1} {unit} [{la:.1}–{ha:.1}] | {mb:.1} {unit} [{lb:.1}–{hb:.1}] | {:.2}x |",
            ma / mb
        );
    }
}
