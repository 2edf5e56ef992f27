//! vm-ctl: talks to running guests over their control sockets (see
//! vm-ctl(8)). vm-run serves the sockets; the protocol is vm-run's
//! (vm_run::control::proto, docs/CONTROL.md).

mod client;
mod console;
mod status;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::PathBuf;

use vm_run::control::proto::Request;

use client::Guest;

const USAGE: &str = "usage: vm-ctl status [name]\n       vm-ctl stop [-fw] name | -a\n       \
vm-ctl pause name\n       vm-ctl unpause name\n       vm-ctl console name\n       vm-ctl wait name";

// sysexits(3), as vm-ctl(8) documents them.
const EX_USAGE: i32 = 64;
const EX_UNAVAILABLE: i32 = 69;
const EX_OSERR: i32 = 71;
const EX_NOPERM: i32 = 77;

pub enum Fail {
    Usage(String),
    /// No guest of that name is running.
    NoGuest(String),
    /// The guest's socket is not ours to use.
    Perm(String),
    /// The guest answered with an error.
    Refused(String, String),
    Os(String, io::Error),
    /// Already told on stderr (stop -a, one line a guest); the status.
    Reported(i32),
}

impl Fail {
    fn status(&self) -> i32 {
        match self {
            Fail::Usage(_) => EX_USAGE,
            Fail::NoGuest(_) | Fail::Refused(..) => EX_UNAVAILABLE,
            Fail::Perm(_) => EX_NOPERM,
            Fail::Os(..) => EX_OSERR,
            Fail::Reported(status) => *status,
        }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Fail::Usage(s) => f.write_str(s),
            Fail::NoGuest(n) => write!(f, "{n}: no such guest running"),
            Fail::Perm(n) => write!(f, "{n}: permission denied"),
            Fail::Refused(n, why) => write!(f, "{n}: {why}"),
            Fail::Os(what, e) => write!(f, "{what}: {e}"),
            Fail::Reported(_) => Ok(()),
        }
    }
}

enum Command {
    Help,
    Status(Option<String>),
    Stop {
        force: bool,
        wait: bool,
        /// None: every guest (-a).
        name: Option<String>,
    },
    Simple(Request, String),
}

fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, Fail> {
    use lexopt::prelude::*;
    let usage = |e: lexopt::Error| Fail::Usage(e.to_string());
    let mut p = lexopt::Parser::from_iter(args);
    let verb = match p.next().map_err(usage)? {
        Some(Value(v)) => v.string().map_err(usage)?,
        Some(Short('h') | Long("help")) => return Ok(Command::Help),
        Some(a) => return Err(usage(a.unexpected())),
        None => return Err(Fail::Usage("no command given".into())),
    };
    let (mut force, mut wait, mut all, mut names) = (false, false, false, Vec::new());
    while let Some(arg) = p.next().map_err(usage)? {
        match arg {
            Short('f') if verb == "stop" => force = true,
            Short('w') if verb == "stop" => wait = true,
            Short('a') if verb == "stop" => all = true,
            Short('h') | Long("help") => return Ok(Command::Help),
            Value(v) => names.push(v.string().map_err(usage)?),
            a => return Err(usage(a.unexpected())),
        }
    }
    let one = |names: Vec<String>| match <[String; 1]>::try_from(names) {
        Ok([n]) => Ok(n),
        Err(_) => Err(Fail::Usage(format!("{verb}: give one guest name"))),
    };
    match verb.as_str() {
        "status" if names.len() <= 1 => Ok(Command::Status(names.pop())),
        "stop" if all && names.is_empty() => Ok(Command::Stop {
            force,
            wait,
            name: None,
        }),
        "stop" if !all => Ok(Command::Stop {
            force,
            wait,
            name: Some(one(names)?),
        }),
        "pause" => Ok(Command::Simple(Request::Pause, one(names)?)),
        "unpause" => Ok(Command::Simple(Request::Unpause, one(names)?)),
        "console" => Ok(Command::Simple(Request::Console, one(names)?)),
        "wait" => Ok(Command::Simple(Request::Wait, one(names)?)),
        "status" | "stop" => Err(Fail::Usage(format!("{verb}: wrong arguments"))),
        v => Err(Fail::Usage(format!("{v}: unknown command"))),
    }
}

fn rundir() -> Result<PathBuf, Fail> {
    vm_run::control::rundir().map_err(Fail::Usage)
}

fn run(cmd: Command) -> Result<(), Fail> {
    let dir = rundir()?;
    match cmd {
        Command::Help => {
            println!("{USAGE}");
            Ok(())
        }
        Command::Status(None) => status::print(&client::all(&dir)?, false),
        Command::Status(Some(n)) => status::print(&[Guest::named(&dir, &n)?], true),
        Command::Stop { force, wait, name } => {
            let guests = match name {
                Some(ref n) => vec![Guest::named(&dir, n)?],
                None => client::all(&dir)?,
            };
            stop(&guests, force, wait, name.is_none())
        }
        Command::Simple(Request::Console, n) => console::attach(&Guest::named(&dir, &n)?),
        Command::Simple(Request::Wait, n) => {
            Guest::wait_exit(wait_request(&Guest::named(&dir, &n)?)?);
            Ok(())
        }
        Command::Simple(req, n) => Guest::named(&dir, &n)?.request(req).map(|_| ()),
    }
}

/// The wait request gets no reply until the guest ends, so it is sent by
/// hand rather than through Guest::request.
fn wait_request(g: &Guest) -> Result<std::os::unix::net::UnixStream, Fail> {
    let mut s = g.connect()?;
    vm_run::control::proto::write_frame(&mut s, Request::Wait.verb())
        .map_err(|e| Fail::Os(g.path.display().to_string(), e))?;
    Ok(s)
}

/// Presses each guest's power button (or ends it, -f); with -w, returns
/// once they are all gone. Guests that vanish on the way are fine with -a.
fn stop(guests: &[Guest], force: bool, wait: bool, all: bool) -> Result<(), Fail> {
    let req = if force { Request::Kill } else { Request::Stop };
    let mut waits = Vec::new();
    let mut failed = None;
    for g in guests {
        // The wait connection first, so that a guest quick to power off
        // cannot end between the stop and the wait.
        let w = if wait { Some(wait_request(g)) } else { None };
        let r = g.request(req).map(|_| ());
        match (r, w) {
            (Ok(()), Some(Ok(s))) => waits.push(s),
            (Ok(()), Some(Err(e))) | (Err(e), _) => {
                if !(all && matches!(e, Fail::NoGuest(_))) {
                    eprintln!("vm-ctl: {e}");
                    failed.get_or_insert(e.status());
                }
            }
            (Ok(()), None) => {}
        }
    }
    for s in waits {
        Guest::wait_exit(s);
    }
    failed.map_or(Ok(()), |status| Err(Fail::Reported(status)))
}

fn main() {
    let code = match parse(std::env::args_os()) {
        Ok(cmd) => match run(cmd) {
            Ok(()) => 0,
            Err(e) => {
                if !matches!(e, Fail::Reported(_)) {
                    eprintln!("vm-ctl: {e}");
                }
                e.status()
            }
        },
        Err(e) => {
            eprintln!("vm-ctl: {e}");
            eprintln!("{USAGE}");
            e.status()
        }
    };
    std::process::exit(code);
}
