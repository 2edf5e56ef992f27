//! vm-net: opens a tap device, optionally on a bridge, then execs the
//! next program with the tap's fd inherited and its number appended to
//! VM_NET_FDS (see vm-net(8)). The privileged part of networking a guest,
//! and nothing else: chain it before vm-run, as s6 and execline chain.

mod bridge;
mod ifreq;
mod local;
mod tap;
mod user;

use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;

use tap::TapError;
use user::UserError;

const USAGE: &str =
    "usage: vm-net [-L] [-a lladdr] [-b bridge | -B bridge] [-i ifname] [-u user[:group]] prog [args ...]";

// sysexits(3), the same numbers as the other tools' (vm-net depends on
// no crate of ours, so the file is included), and the shell's statuses
// for a program it cannot run.
#[path = "../../vm-img/src/exit.rs"]
#[allow(dead_code)]
mod exit;
use exit::{
    NOPERM as EX_NOPERM, NOUSER as EX_NOUSER, OSERR as EX_OSERR, UNAVAILABLE as EX_UNAVAILABLE,
    USAGE as EX_USAGE,
};
const CANNOT_EXEC: i32 = 126;
const NOT_FOUND: i32 = 127;

struct Args {
    local: bool,
    lladdr: Option<String>,
    /// (bridge, create it if missing)
    bridge: Option<(String, bool)>,
    ifname: Option<String>,
    user: Option<String>,
    prog: Vec<OsString>,
}

/// One line for stderr and the exit status.
struct Fail(String, i32);

fn usage(msg: impl std::fmt::Display) -> Fail {
    Fail(format!("{msg}\n{USAGE}"), EX_USAGE)
}

fn parse() -> Result<Option<Args>, Fail> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let mut a = Args {
        local: false,
        lladdr: None,
        bridge: None,
        ifname: None,
        user: None,
        prog: Vec::new(),
    };
    let text = |v: OsString| v.into_string().map_err(|_| usage("argument is not UTF-8"));
    while let Some(arg) = p.next().map_err(usage)? {
        match arg {
            Short('L') => a.local = true,
            Short('a') => a.lladdr = Some(text(p.value().map_err(usage)?)?),
            Short('b') => a.bridge = Some((text(p.value().map_err(usage)?)?, false)),
            Short('B') => a.bridge = Some((text(p.value().map_err(usage)?)?, true)),
            Short('i') => a.ifname = Some(text(p.value().map_err(usage)?)?),
            Short('u') => a.user = Some(text(p.value().map_err(usage)?)?),
            Short('h') | Long("help") => return Ok(None),
            Value(prog) => {
                a.prog.push(prog);
                a.prog.extend(p.raw_args().map_err(usage)?);
            }
            _ => return Err(usage(arg.unexpected())),
        }
    }
    if a.prog.is_empty() {
        return Err(usage("no program to run"));
    }
    if let Some(l) = &a.lladdr {
        check_lladdr(l).map_err(|e| usage(format!("-a {l}: {e}")))?;
    }
    for (opt, name) in [
        ("-i", &a.ifname),
        ("-b", &a.bridge.as_ref().map(|b| b.0.clone())),
    ] {
        if let Some(n) = name {
            ifreq::IfReq::new(n).map_err(|e| usage(format!("{opt} {n}: {e}")))?;
        }
    }
    Ok(Some(a))
}

/// A unicast Ethernet address, six hex pairs with colons.
fn check_lladdr(s: &str) -> Result<(), &'static str> {
    let octets: Vec<u8> = s
        .split(':')
        .map(|o| {
            (o.len() == 2)
                .then(|| u8::from_str_radix(o, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()
        .ok_or("not an Ethernet address (xx:xx:xx:xx:xx:xx)")?;
    match octets.as_slice() {
        [first, ..] if octets.len() == 6 && first & 1 == 0 => Ok(()),
        [_, ..] if octets.len() == 6 => Err("a multicast address"),
        _ => Err("not an Ethernet address (xx:xx:xx:xx:xx:xx)"),
    }
}

fn os_fail(what: &str, e: io::Error) -> Fail {
    let status = match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => EX_NOPERM,
        Some(libc::EBUSY | libc::ENODEV | libc::ENOENT | libc::ENXIO) => EX_UNAVAILABLE,
        _ => EX_OSERR,
    };
    Fail(format!("{what}: {e}"), status)
}

fn run(a: Args) -> Result<std::convert::Infallible, Fail> {
    let target = match &a.user {
        Some(spec) => Some(user::resolve(spec).map_err(|e| match e {
            UserError::NoUser(u) => Fail(format!("-u {spec}: no such user {u}"), EX_NOUSER),
            UserError::NoGroup(g) => Fail(format!("-u {spec}: no such group {g}"), EX_NOUSER),
            UserError::Os(what, e) => os_fail(what, e),
        })?),
        None => None,
    };
    if let Some((b, false)) = &a.bridge {
        if !bridge::is_bridge(b) {
            return Err(Fail(format!("{b}: no such bridge"), EX_UNAVAILABLE));
        }
    }
    let tap = tap::open(a.ifname.as_deref()).map_err(|e| match e {
        TapError::Open(e) => os_fail("/dev/net/tun", e),
        TapError::Create(name, e) if e.raw_os_error() == Some(libc::EBUSY) => Fail(
            format!("{name}: busy (another program has it open)"),
            EX_UNAVAILABLE,
        ),
        TapError::Create(name, e) => os_fail(&name, e),
    })?;
    let sock = ifreq::control_socket().map_err(|e| os_fail("socket", e))?;
    ifreq::bring_up(&sock, &tap.name).map_err(|e| os_fail(&tap.name, e))?;
    if let Some((b, create)) = &a.bridge {
        if *create {
            bridge::create(&sock, b).map_err(|e| os_fail(b, e))?;
        }
        bridge::attach(&sock, b, &tap.name).map_err(|e| os_fail(b, e))?;
    }
    let mut items = Vec::new();
    if let Some(l) = &a.lladdr {
        items.push(format!("lladdr={}", l.to_ascii_lowercase()));
    }
    if a.local {
        let idx = ifreq::index(&sock, &tap.name).map_err(|e| os_fail(&tap.name, e))?;
        let (host, guest) = local::pair(idx);
        local::configure(&sock, &tap.name, host).map_err(|e| os_fail(&tap.name, e))?;
        items.push(format!("host={host}"));
        items.push(format!("guest={guest}"));
        if let Some(dns) = std::fs::read_to_string("/etc/resolv.conf")
            .ok()
            .and_then(|c| local::nameserver(&c))
        {
            items.push(format!("dns={dns}"));
        }
    }
    drop(sock);

    let mut fds: Vec<i32> = std::env::var("VM_NET_FDS")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    fds.push(tap.fd);
    let list = fds.iter().map(i32::to_string).collect::<Vec<_>>().join(" ");
    // SAFETY: single-threaded; nothing reads the environment meanwhile.
    unsafe {
        std::env::set_var("VM_NET_FDS", list);
        if items.is_empty() {
            std::env::remove_var(format!("VM_NET_{}", tap.fd));
        } else {
            std::env::set_var(format!("VM_NET_{}", tap.fd), items.join(" "));
        }
    }
    close_on_exec_all_but(&fds);

    if let Some(t) = &target {
        user::drop_to(t).map_err(|e| match e {
            UserError::Os(what, e) => os_fail(what, e),
            _ => Fail("cannot change user".into(), EX_OSERR),
        })?;
    }
    exec(&a.prog)
}

/// Marks every inherited fd but stdio and the taps close-on-exec, so
/// that only they reach the next program.
fn close_on_exec_all_but(keep: &[i32]) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: F_SETFD on a descriptor number; a stale one (the
            // directory's own) fails harmlessly.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

fn exec(prog: &[OsString]) -> Result<std::convert::Infallible, Fail> {
    let argv: Vec<CString> = prog
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| usage("an argument contains a NUL byte"))?;
    let name = prog[0].to_string_lossy().into_owned();
    let e = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
    let status = if e == nix::Error::ENOENT {
        NOT_FOUND
    } else {
        CANNOT_EXEC
    };
    Err(Fail(format!("{name}: {}", io::Error::from(e)), status))
}

fn main() {
    let result = match parse() {
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Ok(Some(a)) => run(a).map(|_| ()),
        Err(f) => Err(f),
    };
    if let Err(Fail(msg, status)) = result {
        eprintln!("vm-net: {msg}");
        std::process::exit(status);
    }
}
