//! vm-bench: runs VMM command lines side by side, alternating so that all
//! see the same machine noise, and prints a Markdown table: time from
//! spawn to the first console line holding a marker and to exit, CPU time
//! and peak RSS (from wait4), as medians with [min–max], and the ratio of
//! each command to the last one (the reference).
//!
//! usage: vm-bench [-n runs] [-k marker] name=command ... (run by sh -c exec)

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

struct Subject {
    name: String,
    cmd: String,
    marker_ms: Vec<f64>,
    exit_ms: Vec<f64>,
    cpu_ms: Vec<f64>,
    rss_kib: Vec<f64>,
}

fn usage() -> ! {
    eprintln!("usage: vm-bench [-n runs] [-k marker] name=command ...");
    std::process::exit(64);
}

// The child is reaped by wait4, for its rusage, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_once(s: &mut Subject, marker: &str) {
    let start = Instant::now();
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec {}", s.cmd))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", s.name));
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut marked = None;
    for line in out.split(b'\n') {
        let Ok(line) = line else { break };
        if marked.is_none() && String::from_utf8_lossy(&line).contains(marker) {
            marked = Some(start.elapsed());
        }
    }
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, whose pid we hold.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    assert_eq!(pid, child.id() as i32, "wait4");
    let exit = start.elapsed();
    let Some(marked) = marked else {
        panic!("{}: no console line with {marker:?}", s.name);
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    s.marker_ms.push(marked.as_secs_f64() * 1e3);
    s.exit_ms.push(exit.as_secs_f64() * 1e3);
    s.cpu_ms.push(tv(ru.ru_utime) + tv(ru.ru_stime));
    s.rss_kib.push(ru.ru_maxrss as f64);
}

fn median(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let mut runs = 10;
    let mut marker = String::new();
    let mut subjects = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-n" => {
                runs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "-k" => marker = args.next().unwrap_or_else(|| usage()),
            _ => {
                let (name, cmd) = a.split_once('=').unwrap_or_else(|| usage());
                subjects.push(Subject {
                    name: name.into(),
                    cmd: cmd.into(),
                    marker_ms: vec![],
                    exit_ms: vec![],
                    cpu_ms: vec![],
                    rss_kib: vec![],
                });
            }
        }
    }
    if subjects.len() < 2 || runs == 0 {
        usage();
    }
    for _ in 0..runs {
        for s in subjects.iter_mut() {
            run_once(s, &marker);
        }
    }
    let reference = subjects.len() - 1;
    let names: Vec<&str> = subjects.iter().map(|s| s.name.as_str()).collect();
    print!("| {runs} runs each, median [min–max] |");
    for n in &names {
        print!(" {n} |");
    }
    for n in &names[..reference] {
        print!(" {n} / {} |", names[reference]);
    }
    println!();
    println!("|{}", "---|".repeat(1 + 2 * names.len() - 1));
    type Pick = fn(&Subject) -> &Vec<f64>;
    let rows: [(String, Pick, &str); 4] = [
        (
            format!("spawn to first `{marker}` line"),
            |s| &s.marker_ms,
            "ms",
        ),
        ("spawn to exit".into(), |s| &s.exit_ms, "ms"),
        ("CPU time (user + sys)".into(), |s| &s.cpu_ms, "ms"),
        ("peak RSS".into(), |s| &s.rss_kib, "KiB"),
    ];
    for (label, pick, unit) in rows {
        print!("| {label} |");
        for s in &subjects {
            let (m, lo, hi) = median(pick(s));
            print!(" {m:.1} {unit} [{lo:.1}–{hi:.1}] |");
        }
        let (r, _, _) = median(pick(&subjects[reference]));
        for s in &subjects[..reference] {
            print!(" {:.2}x |", median(pick(s)).0 / r);
        }
        println!();
    }
}
