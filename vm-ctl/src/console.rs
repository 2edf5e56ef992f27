//! `vm-ctl console`: the guest's serial console on this terminal, through
//! the control socket. `~.` at the start of a line detaches, as in cu(1);
//! `~~` sends one `~`.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, SetArg};
use vm_run::control::proto::Request;

use crate::Fail;
use vm_run::control::client::{ClientError, GuestSocket};

/// cu's escape handling, one input byte at a time.
#[derive(Default)]
struct Escape {
    mid_line: bool,
    tilde: bool,
}

enum Key {
    Send(Vec<u8>),
    Detach,
}

impl Escape {
    fn feed(&mut self, b: u8) -> Key {
        let was_mid_line = self.mid_line;
        self.mid_line = !matches!(b, b'\r' | b'\n');
        if self.tilde {
            self.tilde = false;
            return match b {
                b'.' => Key::Detach,
                b'~' => Key::Send(vec![b'~']),
                _ => Key::Send(vec![b'~', b]),
            };
        }
        if b == b'~' && !was_mid_line {
            self.tilde = true;
            return Key::Send(Vec::new());
        }
        Key::Send(vec![b])
    }
}

pub fn attach(g: &GuestSocket) -> Result<(), Fail> {
    let (_, mut sock) = g.request(Request::Console)?;
    let os = |what: &str, e: io::Error| Fail::Client(ClientError::Os(what.to_string(), e));
    let stdin = io::stdin();
    let saved = termios::tcgetattr(&stdin).ok();
    if let Some(orig) = &saved {
        let mut raw = orig.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        eprint!("[{}: ~. to detach]\r\n", g.name);
    }
    let result = relay(&mut sock, &stdin, &os);
    if let Some(orig) = &saved {
        let _ = termios::tcsetattr(&stdin, SetArg::TCSANOW, orig);
        eprintln!("\r\n[detached]");
    }
    result
}

fn relay(
    sock: &mut std::os::unix::net::UnixStream,
    stdin: &io::Stdin,
    os: &dyn Fn(&str, io::Error) -> Fail,
) -> Result<(), Fail> {
    let mut esc = Escape::default();
    let mut out = io::stdout();
    let mut buf = [0u8; 4096];
    let mut peer = sock.try_clone().map_err(|e| os("socket", e))?;
    loop {
        let (from_user, from_guest) = {
            let mut fds = [
                PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
                PollFd::new(sock.as_fd(), PollFlags::POLLIN),
            ];
            poll(&mut fds, PollTimeout::NONE).map_err(|e| os("poll", e.into()))?;
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if from_guest {
            match sock.read(&mut buf) {
                Ok(0) | Err(_) => return Ok(()),
                Ok(n) => {
                    out.write_all(&buf[..n]).map_err(|e| os("stdout", e))?;
                    out.flush().map_err(|e| os("stdout", e))?;
                }
            }
        }
        if from_user {
            let n = io::stdin()
                .lock()
                .read(&mut buf)
                .map_err(|e| os("stdin", e))?;
            if n == 0 {
                return Ok(());
            }
            for &b in &buf[..n] {
                match esc.feed(b) {
                    Key::Detach => return Ok(()),
                    Key::Send(bytes) => peer.write_all(&bytes).map_err(|e| os("socket", e))?,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(input: &[u8]) -> (Vec<u8>, bool) {
        let mut e = Escape::default();
        let mut sent = Vec::new();
        for &b in input {
            match e.feed(b) {
                Key::Send(v) => sent.extend(v),
                Key::Detach => return (sent, true),
            }
        }
        (sent, false)
    }

    #[test]
    fn tilde_dot_detaches_only_at_line_start() {
        assert_eq!(typed(b"ls\r~."), (b"ls\r".to_vec(), true));
        assert_eq!(typed(b"~."), (Vec::new(), true));
        assert_eq!(typed(b"a~.b"), (b"a~.b".to_vec(), false));
        assert_eq!(typed(b"\n~~x"), (b"\n~x".to_vec(), false));
        assert_eq!(typed(b"\n~x"), (b"\n~x".to_vec(), false));
    }
}
