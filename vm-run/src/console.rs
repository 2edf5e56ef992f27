//! The guest's console: COM1 on our stdin/stdout, or on a new
//! pseudo-terminal. A terminal on stdin is put in raw mode so that every
//! key reaches the guest, and restored on every way out.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, SetArg, Termios};
use vmm_sys_util::eventfd::EventFd;

use crate::config;
use crate::devices::serial::{Output, Serial};
use crate::error::{Error, Result};

/// The terminal settings to put back, and the fd to put them on. Global,
/// so that a panic hook can restore them as well as every ordinary exit.
static SAVED: Mutex<Option<(OwnedFd, Termios)>> = Mutex::new(None);

/// Puts the terminal back as it was before raw mode, if it was changed.
pub fn restore_terminal() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((fd, orig)) = saved {
        let _ = termios::tcsetattr(&fd, SetArg::TCSANOW, &orig);
    }
}

pub struct Console {
    /// Where the guest's keystrokes come from; None once handed to the
    /// input thread.
    input: Option<File>,
    output: Option<Output>,
    /// Held open so that the pty stays usable between two users.
    _pty_slave: Option<OwnedFd>,
}

impl Console {
    pub fn open(kind: config::Console) -> Result<Console> {
        match kind {
            config::Console::Stdio => Self::stdio(),
            config::Console::Pty => Self::pty(),
        }
    }

    fn stdio() -> Result<Console> {
        let dup = |fd: std::io::Result<OwnedFd>, what: &str| {
            fd.map(File::from)
                .map_err(|e| Error::Os(format!("console: {what}"), e))
        };
        let input = dup(io::stdin().as_fd().try_clone_to_owned(), "stdin")?;
        let output = dup(io::stdout().as_fd().try_clone_to_owned(), "stdout")?;
        if let Ok(orig) = termios::tcgetattr(&input) {
            // Remember how to undo raw mode before entering it.
            let restore_fd = input
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| Error::Os("console: stdin".into(), e))?;
            let mut raw = orig.clone();
            termios::cfmakeraw(&mut raw);
            *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some((restore_fd, orig));
            termios::tcsetattr(&input, SetArg::TCSANOW, &raw)
                .map_err(|e| Error::Os("console: stdin".into(), e.into()))?;
        }
        Ok(Console {
            input: Some(input),
            output: Some(Box::new(output)),
            _pty_slave: None,
        })
    }

    fn pty() -> Result<Console> {
        let os = |e: nix::Error| Error::Os("console: pty".into(), e.into());
        let pty = nix::pty::openpty(None, None).map_err(os)?;
        let mut raw = termios::tcgetattr(&pty.slave).map_err(os)?;
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&pty.slave, SetArg::TCSANOW, &raw).map_err(os)?;
        let name = nix::unistd::ttyname(&pty.slave).map_err(os)?;
        // Nobody may be reading the pty: the guest must not stall on a
        // full buffer, so output to it never blocks and is lost instead.
        let flags = nix::fcntl::fcntl(&pty.master, nix::fcntl::FcntlArg::F_GETFL).map_err(os)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&pty.master, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(os)?;
        let master = File::from(pty.master);
        let output = master
            .try_clone()
            .map_err(|e| Error::Os("console: pty".into(), e))?;
        let mut stdout = io::stdout();
        writeln!(stdout, "{}", name.display())
            .and_then(|_| stdout.flush())
            .map_err(|e| Error::Os("stdout".into(), e))?;
        Ok(Console {
            input: Some(master),
            output: Some(Box::new(Lossy(output))),
            _pty_slave: Some(pty.slave),
        })
    }

    pub fn take_output(&mut self) -> Option<Output> {
        self.output.take()
    }

    /// Feeds console input to the UART from a thread of its own.
    pub fn spawn_input(&mut self, serial: Arc<Mutex<Serial>>, room: EventFd) -> Result<()> {
        let Some(input) = self.input.take() else {
            return Ok(());
        };
        thread::Builder::new()
            .name("console".into())
            .spawn(move || input_loop(input, &serial, &room))
            .map(|_| ())
            .map_err(|e| Error::Os("console thread".into(), e))
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// A writer that drops what it cannot write at once.
struct Lossy(File);

impl Write for Lossy {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self.0.write(b) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(b.len()),
            r => r,
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn wait_readable(fd: &impl AsFd, timeout: PollTimeout) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
}

fn input_loop(mut input: File, serial: &Mutex<Serial>, room: &EventFd) {
    let mut buf = [0u8; 64];
    loop {
        wait_readable(&input, PollTimeout::NONE);
        let n = match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                continue
            }
            Err(_) => {
                // A pty whose last user left reads EIO until the next one
                // comes; do not spin on it.
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let taken = serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .enqueue(rest);
            rest = &rest[taken..];
            if !rest.is_empty() {
                // The guest has not read its FIFO yet: wait until it has
                // (or a while, should it have put the UART in loopback).
                // SAFETY: room's fd is open for the life of `room`.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(room.as_raw_fd()) };
                wait_readable(&fd, PollTimeout::from(100u16));
                let _ = room.read();
            }
        }
    }
}
