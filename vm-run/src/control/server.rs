//! vm-run's side of the control socket: bound before the sandbox, served
//! by an accept thread after it. Removed on the way out only if vm-run
//! ends before its sandbox, which allows no file's removal: after that a
//! socket refuses connections once its vm-run is gone, and the next
//! vm-run of its name (bind) or vm-ctl (client.rs) clears it away.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Gid, Uid};

use super::proto::{self, ProtoError, Reply, Request, State, Status};
use crate::board::{lock, Board};
use crate::console::Attached;
use crate::error::{Error, Result};
use crate::memory;
use crate::outcome::{Outcome, Reporter};

/// Connections served at once; more are told to come back later. Waiters
/// (`wait`) do not count: they hold no thread.
const MAX_CONNECTIONS: usize = 8;
/// Waiters held at once, each a descriptor; those whose client hung up
/// are let go first (see `prune`).
const MAX_WAITERS: usize = 64;
/// How long a client may take to send its whole request, however it
/// spreads the bytes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket path to remove should vm-run panic (the hook cannot reach
/// the `Control` on the main thread's stack).
static SOCKET: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Removes the control socket, if there is one; for the panic hook.
pub fn remove_socket() {
    if let Some(p) = SOCKET.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = std::fs::remove_file(p);
    }
}

/// Everything a request can act on: the board (power button, UART,
/// vCPUs, snapshots) and what the host side knows of the guest.
pub struct Guest {
    pub board: Arc<Board>,
    pub name: String,
    pub tty: String,
    pub console: Arc<Attached>,
    pub reporter: Reporter,
}

struct Shared {
    guest: Guest,
    owner: (Uid, Gid),
    /// Whether `owner`'s group was named (-o user:group) and so may connect.
    group_allowed: bool,
    active: AtomicUsize,
    waiters: Mutex<Vec<UnixStream>>,
}

pub struct Control {
    path: PathBuf,
    listener: Option<UnixListener>,
    owner: (Uid, Gid),
    group_allowed: bool,
    shared: Option<Arc<Shared>>,
}

impl Control {
    /// Binds `dir/name.sock`, mode 0660, owned by `owner` (default: who we
    /// run as). A live guest of the same name is an error; a socket left
    /// by a guest that ended (it refuses connections) is replaced.
    pub fn bind(dir: &Path, name: &str, owner: Option<(Uid, Option<Gid>)>) -> Result<Control> {
        let path = super::socket_path(dir, name);
        let os = |e: io::Error| Error::Os(path.display().to_string(), e);
        super::make_rundir(dir).map_err(|e| Error::Os(dir.display().to_string(), e))?;
        let in_use = || Error::NameInUse(name.to_string());
        match UnixStream::connect(&path) {
            Ok(_) => return Err(in_use()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(&path).map_err(os)?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(os(e)),
        }
        // Nobody but us may connect before the mode is set.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(&path);
        nix::sys::stat::umask(old);
        let listener = match bound {
            Ok(l) => l,
            // Another vm-run bound it between our connect and bind.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(in_use()),
            Err(e) => return Err(os(e)),
        };
        *SOCKET.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.clone());
        let control = Control {
            path: path.clone(),
            listener: Some(listener),
            owner: match owner {
                None => (Uid::effective(), Gid::effective()),
                Some((uid, Some(gid))) => (uid, gid),
                // The user's own group, as chown(1) does with "user:".
                Some((uid, None)) => (
                    uid,
                    nix::unistd::User::from_uid(uid)
                        .ok()
                        .flatten()
                        .map_or_else(Gid::effective, |u| u.gid),
                ),
            },
            group_allowed: owner.is_some_and(|o| o.1.is_some()),
            shared: None,
        };
        // From here `control`'s Drop removes the socket on any error.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).map_err(os)?;
        if owner.is_some() {
            nix::unistd::chown(&path, Some(control.owner.0), Some(control.owner.1))
                .map_err(|e| os(e.into()))?;
        }
        Ok(control)
    }

    /// Serves requests on a thread of its own from now on.
    pub fn serve(&mut self, guest: Guest) -> Result<()> {
        let Some(listener) = self.listener.take() else {
            return Ok(());
        };
        let shared = Arc::new(Shared {
            guest,
            owner: self.owner,
            group_allowed: self.group_allowed,
            active: AtomicUsize::new(0),
            waiters: Mutex::new(Vec::new()),
        });
        self.shared = Some(shared.clone());
        thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    // Abandoned `wait` clients go before they add up to
                    // the descriptor limit, which would stop accept.
                    prune(&shared.waiters);
                    match conn {
                        Ok(stream) => accept(&shared, stream),
                        // EMFILE and friends: wait, do not spin.
                        Err(_) => thread::sleep(Duration::from_millis(100)),
                    }
                }
            })
            .map(|_| ())
            .map_err(|e| Error::Os("control thread".into(), e))
    }

    /// Tells every `wait` client how vm-run ends.
    pub fn finish(&self, exit_status: i32) {
        let Some(shared) = &self.shared else {
            return;
        };
        let waiters =
            std::mem::take(&mut *shared.waiters.lock().unwrap_or_else(|e| e.into_inner()));
        let reply = Reply::Ok(vec![("status".into(), exit_status.to_string())]).encode();
        for mut w in waiters {
            let _ = proto::write_frame(&mut w, &reply);
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        SOCKET.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Drops the waiters whose client has hung up: nobody will read their
/// answer, and each holds a descriptor.
fn prune(waiters: &Mutex<Vec<UnixStream>>) {
    let mut waiters = waiters.lock().unwrap_or_else(|e| e.into_inner());
    if waiters.is_empty() {
        return;
    }
    let gone: Vec<bool> = {
        let mut fds: Vec<PollFd> = waiters
            .iter()
            .map(|w| PollFd::new(w.as_fd(), PollFlags::empty()))
            .collect();
        if poll(&mut fds, PollTimeout::ZERO).is_err() {
            return;
        }
        // A Unix stream socket whose peer closed polls as hung up.
        let hup = PollFlags::POLLHUP | PollFlags::POLLERR;
        fds.iter()
            .map(|f| f.revents().is_some_and(|r| r.intersects(hup)))
            .collect()
    };
    let mut gone = gone.into_iter();
    waiters.retain(|_| !gone.next().unwrap_or(false));
}

/// Reads from `stream` until `until`, however the bytes trickle in: the
/// socket's own timeout bounds one read, not a request.
struct Deadline<'a> {
    stream: &'a UnixStream,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut s = self.stream;
        s.read(buf)
    }
}

/// Answers with an error and hangs up. What the client sent is read
/// first, for at most `linger`: closing a Unix socket with unread data
/// resets the connection, and the client would see ECONNRESET instead of
/// our answer.
fn refuse(mut stream: UnixStream, why: impl std::fmt::Display, linger: Duration) {
    let _ = proto::write_frame(&mut stream, &Reply::error(why).encode());
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut rest = Deadline {
        stream: &stream,
        until: Instant::now() + linger,
    };
    let mut sink = [0u8; 512];
    let mut left = proto::MAX_LEN as usize + 8;
    while left > 0 {
        match rest.read(&mut sink) {
            Ok(n @ 1..) => left = left.saturating_sub(n),
            _ => break,
        }
    }
}

fn accept(shared: &Arc<Shared>, stream: UnixStream) {
    let until = Instant::now() + REQUEST_TIMEOUT;
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    // On the accept thread: a short linger, so nobody can hold it up.
    let linger = Duration::from_millis(100);
    if let Err(why) = permitted(shared, &stream) {
        return refuse(stream, why, linger);
    }
    if shared.active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
        shared.active.fetch_sub(1, Ordering::AcqRel);
        return refuse(stream, "busy, try again", linger);
    }
    let s = shared.clone();
    let spawned = thread::Builder::new()
        .name("control-conn".into())
        .spawn(move || {
            serve_one(&s, stream, until);
            s.active.fetch_sub(1, Ordering::AcqRel);
        });
    if spawned.is_err() {
        shared.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The socket's mode already keeps strangers out; this also covers a
/// socket whose directory or mode someone loosened.
fn permitted(shared: &Shared, stream: &UnixStream) -> std::result::Result<(), &'static str> {
    let cred = getsockopt(stream, PeerCredentials).map_err(|_| "no peer credentials")?;
    let uid = Uid::from_raw(cred.uid());
    let ok = uid.is_root()
        || uid == Uid::effective()
        || uid == shared.owner.0
        || (shared.group_allowed && Gid::from_raw(cred.gid()) == shared.owner.1);
    if ok {
        Ok(())
    } else {
        Err("permission denied")
    }
}

fn serve_one(shared: &Shared, mut stream: UnixStream, until: Instant) {
    let g = &shared.guest;
    let mut within = Deadline {
        stream: &stream,
        until,
    };
    let request = match proto::read_frame(&mut within).and_then(|t| Request::parse(&t)) {
        Ok(r) => r,
        // Gone or silent: nobody to answer.
        Err(ProtoError::Eof | ProtoError::Io(_)) => return,
        Err(e) => return refuse(stream, e, REQUEST_TIMEOUT),
    };
    // What follows the request (vm-send's fd) has the old per-read limit.
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let reply = match request {
        Request::Status => status(shared).reply(),
        Request::Stop => {
            lock(&g.board.pm).press_power_button();
            Reply::ok()
        }
        Request::Kill => {
            let _ = proto::write_frame(&mut stream, &Reply::ok().encode());
            g.reporter.report(Outcome::Stopped);
            return;
        }
        Request::Pause => g
            .board
            .pauser
            .pause()
            .map_or_else(Reply::error, |()| Reply::ok()),
        Request::Unpause => g
            .board
            .pauser
            .resume()
            .map_or_else(Reply::error, |()| Reply::ok()),
        Request::Wait => {
            let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
            prune(&shared.waiters);
            let mut waiters = shared.waiters.lock().unwrap_or_else(|e| e.into_inner());
            if waiters.len() >= MAX_WAITERS {
                drop(waiters);
                return refuse(stream, "too many waiting clients", REQUEST_TIMEOUT);
            }
            waiters.push(stream);
            return;
        }
        Request::Console => return console(g, stream),
        Request::Send | Request::Checkpoint | Request::Migrate => {
            return send(g, stream, request);
        }
    };
    let _ = proto::write_frame(&mut stream, &reply.encode());
}

/// vm-send: pause (or, migrating, let the guest run until the last part),
/// stream the snapshot into the client's fd, then end the guest or let it
/// go on. Whatever fails, the guest resumes: a send that did not finish
/// must not cost the guest.
fn send(g: &Guest, mut stream: UnixStream, request: Request) {
    let keep = request == Request::Checkpoint;
    let reply = |stream: &mut UnixStream, r: Reply| {
        let _ = proto::write_frame(stream, &r.encode());
    };
    reply(&mut stream, Reply::ok());
    let mut out = match receive_fd(&stream) {
        Ok(f) => f,
        Err(e) => return reply(&mut stream, Reply::error(format!("no fd to write to: {e}"))),
    };
    // A guest paused by vm-ctl is sent as it is and stays paused.
    let pauser = &g.board.pauser;
    let was_paused = pauser.is_paused();
    let live = request == Request::Migrate && !was_paused;
    if !was_paused && !live {
        if let Err(e) = pauser.pause() {
            return reply(&mut stream, Reply::error(e));
        }
    }
    let resume = || {
        if was_paused || !pauser.is_paused() {
            Ok(())
        } else {
            pauser.resume()
        }
    };
    let sent = g.board.write_snapshot(&mut out, live);
    drop(out);
    match sent {
        Ok(()) if !keep => {
            reply(&mut stream, Reply::ok());
            g.reporter.report(Outcome::Sent);
        }
        Ok(()) => reply(
            &mut stream,
            resume().map_or_else(Reply::error, |()| Reply::ok()),
        ),
        Err(e) => {
            let _ = resume();
            reply(
                &mut stream,
                Reply::error(format!("send failed, guest resumed: {e}")),
            );
        }
    }
}

/// One fd passed with SCM_RIGHTS, as a File.
fn receive_fd(stream: &UnixStream) -> io::Result<std::fs::File> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(std::os::fd::RawFd);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                for extra in &fds[1..] {
                    // SAFETY: fds the kernel just gave us, owned by nobody else.
                    drop(unsafe { std::fs::File::from_raw_fd(*extra) });
                }
                // SAFETY: as above; the File owns it from here.
                return Ok(unsafe { std::fs::File::from_raw_fd(fd) });
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "no fd passed"))
}

fn status(shared: &Shared) -> Status {
    let g = &shared.guest;
    let (uid, gid) = shared.owner;
    Status {
        pid: std::process::id(),
        vcpus: g.board.conf.vcpus,
        maxmem: memory::size(g.board.mem),
        curmem: memory::resident(g.board.mem),
        tty: g.tty.clone(),
        uid: uid.as_raw(),
        gid: gid.as_raw(),
        state: if g.board.pauser.is_paused() {
            State::Paused
        } else {
            State::Running
        },
        name: g.name.clone(),
    }
}

/// Attaches the client to the serial console until it hangs up: it gets a
/// copy of the output (see console::Attached), its bytes go to the UART.
fn console(g: &Guest, mut stream: UnixStream) {
    let Ok(out) = stream.try_clone() else {
        return;
    };
    let greet = |out: &mut UnixStream| proto::write_frame(out, &Reply::ok().encode());
    let id = match g.console.attach(out, greet) {
        None => {
            let _ = proto::write_frame(&mut stream, &Reply::error("console in use").encode());
            return;
        }
        Some(Err(_)) => return,
        Some(Ok(id)) => id,
    };
    let _ = stream.set_read_timeout(None);
    let mut buf = [0u8; 64];
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let taken = lock(&g.board.com1).enqueue(rest);
            rest = &rest[taken..];
            if taken == 0 {
                // The guest has not drained its FIFO yet: 64 bytes a
                // millisecond is a fast paste, and few wake-ups.
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
    g.console.detach(id);
}
