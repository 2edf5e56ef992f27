//! vm-send: writes a running guest's snapshot to the standard output (see
//! vm-send(1)). vm-run does the writing: it gets our stdout through the
//! control socket (SCM_RIGHTS), so the stream never passes through here.

use std::io::{self, IoSlice, IsTerminal};
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use vm_run::control::client::{ClientError, GuestSocket};
use vm_run::control::proto::Request;
use vm_run::exit;

#[path = "../progress.rs"]
mod progress;

const USAGE: &str = "usage: vm-send [-k | -l] name > stream";

enum Args {
    Help,
    Send { req: Request, name: String },
}

fn parse() -> Result<Args, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let (mut keep, mut live, mut name) = (false, false, None);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Short('k') => keep = true,
            Short('l') => live = true,
            Short('h') | Long("help") => return Ok(Args::Help),
            Value(v) if name.is_none() => name = Some(v.string().map_err(|e| e.to_string())?),
            a => return Err(a.unexpected().to_string()),
        }
    }
    let name = name.ok_or("no guest name given")?;
    let req = match (keep, live) {
        (true, true) => return Err("-k and -l: a migrated guest ends".into()),
        (true, false) => Request::Checkpoint,
        (false, true) => Request::Migrate,
        (false, false) => Request::Send,
    };
    Ok(Args::Send { req, name })
}

fn send(req: Request, name: &str) -> Result<(), ClientError> {
    let dir = vm_run::control::rundir().map_err(|e| ClientError::Refused(name.into(), e))?;
    let g = GuestSocket::named(&dir, name)?;
    let (_, s) = g.request(req)?;
    let out = io::stdout();
    // On a terminal's stderr, vm-run writes into a pipe of ours, relayed
    // to stdout and counted (progress.rs); not into a regular file, which
    // vm-run itself must have to write memory as an image to map.
    let file = out
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
        .is_ok_and(|m| m.file_type().is_file());
    // (Not made and dropped: a meter prints its total when dropped.)
    let meter = if file {
        None
    } else {
        progress::meter("vm-send")
    };
    let relay = match meter {
        Some(_) => Some(
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| ClientError::Os("pipe".into(), e.into()))?,
        ),
        None => None,
    };
    let fds = [relay
        .as_ref()
        .map_or(out.as_raw_fd(), |(_, w)| w.as_raw_fd())];
    // Into a pipe, vm-run and the reader take turns as the pipe fills and
    // empties, and a turn costs a wakeup of the other CPU: with 1 MiB (the
    // most Linux allows users) instead of 64 KiB, a reader that reads big
    // (dd bs=1M) waits for fewer. Not a pipe, or a lower limit: as it was.
    // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours.
    let _ = unsafe { libc::fcntl(fds[0], libc::F_SETPIPE_SZ, 1 << 20) };
    sendmsg::<()>(
        s.as_raw_fd(),
        &[IoSlice::new(b"F")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| ClientError::Os(g.path.display().to_string(), e.into()))?;
    // vm-run's own word on a failed send (the guest resumed) comes first.
    let relayed = match (relay, meter) {
        (Some((r, w)), Some(m)) => {
            drop(w);
            progress::relay(r, m).map_err(|e| ClientError::Os("stdout".into(), e))
        }
        _ => Ok(()),
    };
    let mut s = s;
    g.reply(&mut s).map(|_| ())?;
    relayed
}

fn main() {
    let code = match parse() {
        Ok(Args::Help) => {
            println!("{USAGE}");
            exit::OK
        }
        Ok(Args::Send { req, name }) => {
            if io::stdout().is_terminal() {
                eprintln!(
                    "vm-send: the standard output is a terminal; redirect it to a file or pipe"
                );
                exit::USAGE
            } else {
                match send(req, &name) {
                    Ok(()) => exit::OK,
                    Err(e) => {
                        eprintln!("vm-send: {e}");
                        e.exit_status()
                    }
                }
            }
        }
        Err(e) => {
            eprintln!("vm-send: {e}\n{USAGE}");
            exit::USAGE
        }
    };
    std::process::exit(code);
}
