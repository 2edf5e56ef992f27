//! vm-ctl: talks to running guests over their control sockets (see
//! vm-ctl(8)). vm-run serves the sockets; the protocol is vm-run's
//! (vm_run::control::proto, docs/CONTROL.md).

mod console;
mod status;

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use vm_run::control::client::{self, ClientError, GuestSocket};
use vm_run::control::proto::Request;

const USAGE: &str = "usage: vm-ctl status [name]\n       vm-ctl stop [-fw] name | -a\n       \
vm-ctl pause name\n       vm-ctl unpause name\n       vm-ctl console name\n       vm-ctl wait name";

pub enum Fail {
    Usage(String),
    Client(ClientError),
    /// Already told on stderr (stop -a, one line a guest); the status.
    Reported(i32),
}

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Self {
        Fail::Client(e)
    }
}

impl Fail {
    fn status(&self) -> i32 {
        match self {
            Fail::Usage(_) => vm_run::exit::USAGE,
            Fail::Client(e) => e.exit_status(),
            Fail::Reported(status) => *status,
        }
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Fail::Usage(s) => f.write_str(s),
            Fail::Client(e) => write!(f, "{e}"),
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
        Command::Status(Some(n)) => status::print(&[GuestSocket::named(&dir, &n)?], true),
        Command::Stop { force, wait, name } => {
            let guests = match name {
                Some(ref n) => vec![GuestSocket::named(&dir, n)?],
                None => client::all(&dir)?,
            };
            stop(&guests, force, wait, name.is_none())
        }
        Command::Simple(Request::Console, n) => console::attach(&GuestSocket::named(&dir, &n)?),
        Command::Simple(Request::Wait, n) => {
            GuestSocket::wait_exit(GuestSocket::named(&dir, &n)?.wait_request()?);
            Ok(())
        }
        Command::Simple(req, n) => {
            GuestSocket::named(&dir, &n)?.request(req)?;
            Ok(())
        }
    }
}

/// Presses each guest's power button (or ends it, -f); with -w, returns
/// once they are all gone. Guests that vanish on the way are fine with -a,
/// and with -w, whose promise is that the guest is gone: systemd runs a
/// unit's ExecStop (vm-ctl stop -w) after a guest powered off or rebooted
/// by itself too, and would call that unit failed.
fn stop(guests: &[GuestSocket], force: bool, wait: bool, all: bool) -> Result<(), Fail> {
    let req = if force { Request::Kill } else { Request::Stop };
    let mut waits = Vec::new();
    let mut failed = None;
    for g in guests {
        // The wait connection first, so that a guest quick to power off
        // cannot end between the stop and the wait.
        let w = if wait { Some(g.wait_request()) } else { None };
        let r = g.request(req).map(|_| ());
        match (r, w) {
            (Ok(()), Some(Ok(s))) => waits.push(s),
            (Ok(()), Some(Err(e))) | (Err(e), _) => {
                if !((all || wait) && matches!(e, ClientError::NoGuest(_))) {
                    eprintln!("vm-ctl: {e}");
                    failed.get_or_insert(e.exit_status());
                }
            }
            (Ok(()), None) => {}
        }
    }
    for s in waits {
        GuestSocket::wait_exit(s);
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
