//! The client side of the control socket, for vm-ctl and vm-send: one
//! connection to one guest, one request on it.

use std::fmt;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::proto::{self, ProtoError, Reply, Request};

#[derive(Debug)]
pub enum ClientError {
    /// Not a name a guest can have.
    BadName(String, &'static str),
    /// No guest of that name is running.
    NoGuest(String),
    /// The guest's socket is not ours to use.
    Perm(String),
    /// The guest answered with an error, or not in the protocol.
    Refused(String, String),
    /// The guest did not take or answer the request in REQUEST_TIMEOUT.
    TimedOut(String),
    Os(String, io::Error),
}

/// How long a client waits for its connection, for its request to be
/// taken and for the first answer (vm-ctl(8)); vm-run gives a request 5 s
/// and a pause 5 s more. What follows (a console, the end a `wait` waits
/// for, a snapshot being written) is not bounded.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether an I/O error is a socket timeout running out.
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ClientError::BadName(n, why) => write!(f, "{n}: {why}"),
            ClientError::NoGuest(n) => write!(f, "{n}: no such guest running"),
            ClientError::Perm(n) => write!(f, "{n}: permission denied"),
            ClientError::Refused(n, why) => write!(f, "{n}: {why}"),
            ClientError::TimedOut(n) => {
                write!(f, "{n}: no answer in {} s", REQUEST_TIMEOUT.as_secs())
            }
            ClientError::Os(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl ClientError {
    /// sysexits(3), as vm-ctl(8) and vm-send(1) document them.
    pub fn exit_status(&self) -> i32 {
        match self {
            ClientError::BadName(..) => crate::exit::USAGE,
            ClientError::NoGuest(_) | ClientError::Refused(..) | ClientError::TimedOut(_) => {
                crate::exit::UNAVAILABLE
            }
            ClientError::Perm(_) => crate::exit::NOPERM,
            ClientError::Os(..) => crate::exit::OSERR,
        }
    }
}

/// A named guest's control socket, as a client finds it (vm-ctl,
/// vm-send); the server's side is `server::Guest`.
pub struct GuestSocket {
    pub name: String,
    pub path: PathBuf,
}

impl GuestSocket {
    pub fn named(dir: &Path, name: &str) -> Result<GuestSocket, ClientError> {
        crate::config::check_name(name).map_err(|e| ClientError::BadName(name.into(), e))?;
        Ok(GuestSocket {
            name: name.to_string(),
            path: super::socket_path(dir, name),
        })
    }

    /// Connects within REQUEST_TIMEOUT, with the timeout set for reads
    /// and writes. A guest whose listen queue is full (its vm-run wedged)
    /// refuses a non-blocking connect with EAGAIN, and a blocking one
    /// would wait for ever: so the connect is retried until the deadline.
    pub fn connect(&self) -> Result<UnixStream, ClientError> {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        let os = |e: io::Error| ClientError::Os(self.path.display().to_string(), e);
        let addr = UnixAddr::new(&self.path).map_err(|e| os(e.into()))?;
        let until = Instant::now() + REQUEST_TIMEOUT;
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| os(e.into()))?;
        loop {
            match connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr) {
                Ok(()) => break,
                Err(nix::Error::EAGAIN) if Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(nix::Error::EAGAIN) => return Err(ClientError::TimedOut(self.name.clone())),
                Err(nix::Error::ECONNREFUSED) => {
                    // Its vm-run is gone (a sandboxed vm-run cannot
                    // remove its socket): clear it away if we may.
                    remove_stale(&self.path);
                    return Err(ClientError::NoGuest(self.name.clone()));
                }
                Err(nix::Error::ENOENT) => return Err(ClientError::NoGuest(self.name.clone())),
                Err(nix::Error::EACCES | nix::Error::EPERM) => {
                    return Err(ClientError::Perm(self.name.clone()))
                }
                Err(e) => return Err(os(e.into())),
            }
        }
        let s = UnixStream::from(fd);
        s.set_nonblocking(false).map_err(os)?;
        s.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(os)?;
        s.set_write_timeout(Some(REQUEST_TIMEOUT)).map_err(os)?;
        Ok(s)
    }

    /// Sends `req` on a new connection and returns the reply with the
    /// connection, which some requests go on using (with no timeout).
    pub fn request(&self, req: Request) -> Result<(Reply, UnixStream), ClientError> {
        let mut s = self.connect()?;
        let sent = proto::write_frame(&mut s, req.verb());
        // A busy or refusing guest may answer and hang up before it reads
        // our request: its answer is still the one to show.
        let reply = match (self.reply(&mut s), sent) {
            (Ok(r), _) => r,
            (Err(_), Err(e)) if timed_out(&e) => {
                return Err(ClientError::TimedOut(self.name.clone()))
            }
            (Err(_), Err(e)) => return Err(ClientError::Os(self.path.display().to_string(), e)),
            (Err(e), Ok(())) => return Err(e),
        };
        self.unbounded(&s)?;
        Ok((reply, s))
    }

    /// Lifts the connection's timeouts, for what has no time limit.
    fn unbounded(&self, s: &UnixStream) -> Result<(), ClientError> {
        let os = |e| ClientError::Os(self.path.display().to_string(), e);
        s.set_read_timeout(None).map_err(os)?;
        s.set_write_timeout(None).map_err(os)
    }

    /// Reads one reply; an `error` reply is an Err.
    pub fn reply(&self, s: &mut UnixStream) -> Result<Reply, ClientError> {
        let refused = |why: String| ClientError::Refused(self.name.clone(), why);
        let text = proto::read_frame(s).map_err(|e| match e {
            ProtoError::Eof => refused("connection closed".into()),
            ProtoError::Io(e) if timed_out(&e) => ClientError::TimedOut(self.name.clone()),
            e => refused(e.to_string()),
        })?;
        match Reply::decode(&text).map_err(|e| refused(e.to_string()))? {
            Reply::Error(msg) if msg == "permission denied" => {
                Err(ClientError::Perm(self.name.clone()))
            }
            Reply::Error(msg) => Err(refused(msg)),
            ok => Ok(ok),
        }
    }

    /// Sends the wait request, whose reply comes only when the guest ends.
    pub fn wait_request(&self) -> Result<UnixStream, ClientError> {
        let mut s = self.connect()?;
        proto::write_frame(&mut s, Request::Wait.verb()).map_err(|e| {
            if timed_out(&e) {
                ClientError::TimedOut(self.name.clone())
            } else {
                ClientError::Os(self.path.display().to_string(), e)
            }
        })?;
        self.unbounded(&s)?;
        Ok(s)
    }

    /// Blocks until vm-run exits; its exit status, when it could tell.
    pub fn wait_exit(mut s: UnixStream) -> Option<i32> {
        let text = proto::read_frame(&mut s).ok()?;
        Reply::decode(&text).ok()?.get("status")?.parse().ok()
    }
}

/// A socket must be this old before a refused connect counts as stale: a
/// vm-run binds before it listens, and in between connects are refused.
const STALE_AFTER: Duration = Duration::from_secs(1);

/// Removes the socket at `path` that refused a connection, unless it is
/// new (see STALE_AFTER) or not ours to remove: that is not an error, the
/// next vm-run of its name replaces it.
fn remove_stale(path: &Path) {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return;
    };
    let changed =
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(m.ctime()).unwrap_or(0));
    let old = SystemTime::now()
        .duration_since(changed)
        .is_ok_and(|age| age > STALE_AFTER);
    if old && m.file_type().is_socket() {
        let _ = std::fs::remove_file(path);
    }
}

/// Every guest with a socket in `dir`, by name.
pub fn all(dir: &Path) -> Result<Vec<GuestSocket>, ClientError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ClientError::Os(dir.display().to_string(), e)),
    };
    let mut guests: Vec<GuestSocket> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let file = e.file_name().into_string().ok()?;
            let name = file.strip_suffix(".sock")?;
            crate::config::check_name(name).ok()?;
            Some(GuestSocket {
                name: name.to_string(),
                path: e.path(),
            })
        })
        .collect();
    guests.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(guests)
}
