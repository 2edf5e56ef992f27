//! The guest's console: COM1 on our stdin/stdout, or on a new
//! pseudo-terminal. A terminal on stdin is put in raw mode so that every
//! key reaches the guest, and restored on every way out. A client of the
//! control socket (vm-ctl console) may attach as well: it gets a copy of
//! the output and types into the same UART.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
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
    /// Output that may block (stdout), queued for a writer thread: the
    /// queue, and the writer until its thread starts.
    queue: Option<Arc<OutQueue>>,
    writer: Option<Output>,
    /// The terminal the console is on, for vm-ctl status.
    tty: Option<String>,
    /// Held open so that the pty stays usable between two users.
    _pty_slave: Option<OwnedFd>,
}

impl Console {
    pub fn open(kind: config::Console) -> Result<Console> {
        match kind {
            config::Console::Stdio => Self::stdio(),
            config::Console::Pty => Self::pty(),
            config::Console::StdoutOnly => Ok(Console {
                input: None,
                output: Some(Box::new(
                    io::stdout()
                        .as_fd()
                        .try_clone_to_owned()
                        .map(File::from)
                        .map_err(|e| Error::Os("console: stdout".into(), e))?,
                )),
                tty: None,
                queue: None,
                writer: None,
                _pty_slave: None,
            }),
        }
    }

    fn stdio() -> Result<Console> {
        let dup = |fd: std::io::Result<OwnedFd>, what: &str| {
            fd.map(File::from)
                .map_err(|e| Error::Os(format!("console: {what}"), e))
        };
        let input = dup(io::stdin().as_fd().try_clone_to_owned(), "stdin")?;
        let output = dup(io::stdout().as_fd().try_clone_to_owned(), "stdout")?;
        let tty = nix::unistd::ttyname(&input)
            .ok()
            .map(|p| p.display().to_string());
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
            tty,
            queue: None,
            writer: None,
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
            tty: Some(name.display().to_string()),
            queue: None,
            writer: None,
            _pty_slave: Some(pty.slave),
        })
    }

    /// The guest's output, also copied to whoever attaches to `attached`.
    /// Stdout goes through a bounded queue that `spawn_output`'s thread
    /// drains (a pty's output is already lossy and never blocks).
    pub fn take_output(&mut self, attached: Arc<Attached>) -> Option<Output> {
        let mut out = self.output.take()?;
        if self._pty_slave.is_none() {
            let queue = Arc::new(OutQueue::default());
            self.writer = Some(out);
            self.queue = Some(queue.clone());
            out = Box::new(Queued(queue));
        }
        Some(Box::new(Tee { out, attached }))
    }

    /// Starts the thread that writes queued output to stdout.
    pub fn spawn_output(&mut self) -> Result<()> {
        let (Some(queue), Some(out)) = (self.queue.clone(), self.writer.take()) else {
            return Ok(());
        };
        thread::Builder::new()
            .name("console-out".into())
            .spawn(move || queue.write_out(out))
            .map(|_| ())
            .map_err(|e| Error::Os("console output thread".into(), e))
    }

    /// Waits, at most `limit`, for queued output to be written, so that
    /// the guest's last words reach stdout before vm-run exits; says on
    /// stderr how much a reader that did not keep up lost.
    pub fn drain(&self, limit: Duration) {
        if let Some(q) = &self.queue {
            let lost = q.drain(limit);
            if lost > 0 {
                eprintln!("vm-run: console: {lost} bytes of output lost (stdout was not read)");
            }
        }
    }

    pub fn tty(&self) -> Option<&str> {
        self.tty.as_deref()
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

/// The control socket's console client, when one is attached. One at a
/// time, as on a serial line; output it cannot take at once is lost to it
/// (never to the primary console), so a stalled client cannot stall the
/// guest.
#[derive(Default)]
pub struct Attached(Mutex<Option<(u64, UnixStream)>>);

impl Attached {
    /// Attaches `client` unless another is attached (None), after `greet`
    /// has written to it: under the lock that output takes, so that no
    /// guest byte reaches the client before the greeting (the control
    /// reply). Returns an id for `detach`.
    pub fn attach(
        &self,
        mut client: UnixStream,
        greet: impl FnOnce(&mut UnixStream) -> io::Result<()>,
    ) -> Option<io::Result<u64>> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return None;
        }
        if let Err(e) = greet(&mut client) {
            return Some(Err(e));
        }
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *slot = Some((id, client));
        Some(Ok(id))
    }

    pub fn detach(&self, id: u64) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|(i, _)| *i == id) {
            *slot = None;
        }
    }

    fn send(&self, buf: &[u8]) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some((_, client)) = slot.as_ref() else {
            return;
        };
        // SAFETY: the fd is open while `client` is; buf is valid for its length.
        let n = unsafe {
            libc::send(
                client.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
            // Gone: the client's own thread sees the hang-up and detaches
            // too; drop it here so nothing more is sent its way.
            let _ = client.shutdown(std::net::Shutdown::Both);
            *slot = None;
        }
    }
}

/// The primary console's writer, with a copy to the attached client.
struct Tee {
    out: Output,
    attached: Arc<Attached>,
}

impl Write for Tee {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.out.write(b)?;
        self.attached.send(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Console output queued beyond what stdout's pipe holds (64 KiB by
/// default): slack for a reader that falls behind, such as a busy
/// journal; a reader that stops loses what is beyond.
const QUEUE_MAX: usize = 64 << 10;

/// How long the writer lets a line gather before it writes what it has.
/// A guest prints a byte per exit; waking the writer for each byte made
/// every one of them cost a context switch, and on a host with no CPU to
/// spare the writer preempted a vCPU each time (88 us an exit against 29
/// with a CPU free, in the emulated test host). A line's end, a full
/// chunk or vm-run's end does not wait.
const GATHER: Duration = Duration::from_millis(1);
/// Queued bytes that are written without waiting for a line's end.
const GATHER_MAX: usize = 4 << 10;

/// Output for a writer thread. A vCPU writes the UART's bytes here while
/// it holds the UART; were it to write to a pipe nobody reads, it would
/// block there, and with it everyone who needs the UART (the console
/// client, vm-ctl). So what does not fit is dropped and counted.
pub struct OutQueue {
    state: Mutex<QueueState>,
    changed: std::sync::Condvar,
    gather: Duration,
}

impl Default for OutQueue {
    fn default() -> Self {
        OutQueue::gathering_for(GATHER)
    }
}

#[derive(Default)]
struct QueueState {
    bytes: std::collections::VecDeque<u8>,
    /// What the writer took and is writing; it counts against the bound.
    busy: usize,
    /// The writer has ended (stdout closed).
    gone: bool,
    lost: u64,
    /// The writer is letting a line gather (its wait is timed).
    gathering: bool,
    /// What is queued should be written now: a line ended, or drain.
    now: bool,
}

impl OutQueue {
    fn gathering_for(gather: Duration) -> OutQueue {
        OutQueue {
            state: Mutex::default(),
            changed: std::sync::Condvar::new(),
            gather,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, b: &[u8]) {
        let mut st = self.lock();
        let room = QUEUE_MAX.saturating_sub(st.bytes.len() + st.busy);
        let take = if st.gone { 0 } else { b.len().min(room) };
        st.bytes.extend(&b[..take]);
        st.lost += (b.len() - take) as u64;
        if take == 0 {
            return;
        }
        let urgent = b[..take].contains(&b'\n') || st.bytes.len() >= GATHER_MAX;
        st.now |= urgent;
        // The writer is idle, or gathering and this cannot wait; one that
        // is writing looks again when it is done.
        if st.busy == 0 && (!st.gathering || urgent) {
            self.changed.notify_all();
        }
    }

    fn write_out(&self, mut out: Output) {
        let mut chunk = Vec::with_capacity(64 << 10);
        loop {
            {
                let mut st = self.lock();
                st.busy = 0;
                self.changed.notify_all();
                while st.bytes.is_empty() {
                    st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                st.gathering = true;
                let until = std::time::Instant::now() + self.gather;
                while !st.now {
                    let left = until.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    st = self
                        .changed
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                st.gathering = false;
                st.now = false;
                let n = st.bytes.len().min(chunk.capacity());
                chunk.clear();
                chunk.extend(st.bytes.drain(..n));
                st.busy = n;
            }
            if out.write_all(&chunk).and_then(|()| out.flush()).is_err() {
                let mut st = self.lock();
                st.gone = true;
                st.busy = 0;
                st.bytes.clear();
                self.changed.notify_all();
                return;
            }
        }
    }

    /// Waits until everything queued is written; returns the bytes lost.
    fn drain(&self, limit: Duration) -> u64 {
        let mut st = self.lock();
        st.now = true;
        self.changed.notify_all();
        let (st, _) = self
            .changed
            .wait_timeout_while(st, limit, |st| {
                !st.gone && (st.busy > 0 || !st.bytes.is_empty())
            })
            .unwrap_or_else(|e| e.into_inner());
        st.lost + st.bytes.len() as u64
    }
}

/// The UART's side of an `OutQueue`.
struct Queued(Arc<OutQueue>);

impl Write for Queued {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.push(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes 512 bytes a millisecond.
    struct Slow(Arc<Mutex<Vec<u8>>>);
    impl Write for Slow {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            thread::sleep(Duration::from_millis(1));
            let n = b.len().min(512);
            self.0.lock().unwrap().extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_beyond_the_queue_is_dropped_and_counted_never_waited_for() {
        let q = Arc::new(OutQueue::default());
        let mut w = Queued(q.clone());
        let started = std::time::Instant::now();
        // Nobody writes out yet: the queue fills, the rest is counted.
        w.write_all(&vec![b'a'; QUEUE_MAX + 1000]).unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(q.drain(Duration::from_millis(10)), QUEUE_MAX as u64 + 1000);
        // A writer drains what was queued; what was lost stays lost.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (q2, s2) = (q.clone(), seen.clone());
        thread::spawn(move || q2.write_out(Box::new(Slow(s2))));
        assert_eq!(q.drain(Duration::from_secs(60)), 1000);
        w.write_all(b"end").unwrap();
        assert_eq!(q.drain(Duration::from_secs(60)), 1000);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), QUEUE_MAX + 3);
        assert!(seen.ends_with(b"aaaend"));
    }

    #[test]
    fn an_attached_client_hears_its_greeting_before_any_guest_output() {
        let attached = Arc::new(Attached::default());
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut printer = None;
        let id = attached.attach(ours, |client| {
            // The guest prints while the greeting is on its way.
            let a = attached.clone();
            printer = Some(thread::spawn(move || a.send(b"guest")));
            thread::sleep(Duration::from_millis(50));
            client.write_all(b"OK;")
        });
        assert!(matches!(id, Some(Ok(_))));
        printer.unwrap().join().unwrap();
        let mut got = [0u8; 8];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"OK;guest");
        // One client at a time.
        let (other, _) = UnixStream::pair().unwrap();
        assert!(attached.attach(other, |_| Ok(())).is_none());
    }

    /// Writes as they reach stdout, each a separate entry.
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);
    impl Write for Writes {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_printed_a_byte_at_a_time_is_written_once_at_its_end() {
        // A gathering time no test run outlasts: only the line's end,
        // a full chunk or drain can make the writer write.
        let q = Arc::new(OutQueue::gathering_for(Duration::from_secs(3600)));
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (q2, w2) = (q.clone(), writes.clone());
        thread::spawn(move || q2.write_out(Box::new(Writes(w2))));
        let mut w = Queued(q.clone());
        for b in b"login: root\n" {
            w.write_all(&[*b]).unwrap();
        }
        assert_eq!(q.drain(Duration::from_secs(60)), 0);
        assert_eq!(*writes.lock().unwrap(), vec![b"login: root\n".to_vec()]);
        // A prompt without a line's end waits for the gathering time,
        // unless vm-run is ending: drain writes it at once.
        for b in b"Password: " {
            w.write_all(&[*b]).unwrap();
        }
        thread::sleep(Duration::from_millis(20));
        assert_eq!(writes.lock().unwrap().len(), 1);
        assert_eq!(q.drain(Duration::from_secs(60)), 0);
        assert_eq!(writes.lock().unwrap()[1], b"Password: ".to_vec());
        // A chunk's worth is not held back for a line's end either.
        w.write_all(&vec![b'x'; GATHER_MAX]).unwrap();
        let started = std::time::Instant::now();
        while writes.lock().unwrap().len() < 3 {
            assert!(started.elapsed() < Duration::from_secs(60));
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(writes.lock().unwrap()[2].len(), GATHER_MAX);
    }
}
