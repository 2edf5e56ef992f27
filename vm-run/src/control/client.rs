//! The client side of the control socket, for vm-ctl and vm-send: one
//! connection to one guest, one request on it.

use std::fmt;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

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
    Os(String, io::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ClientError::BadName(n, why) => write!(f, "{n}: {why}"),
            ClientError::NoGuest(n) => write!(f, "{n}: no such guest running"),
            ClientError::Perm(n) => write!(f, "{n}: permission denied"),
            ClientError::Refused(n, why) => write!(f, "{n}: {why}"),
            ClientError::Os(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl ClientError {
    /// sysexits(3), as vm-ctl(8) and vm-send(1) document them.
    pub fn exit_status(&self) -> i32 {
        match self {
            ClientError::BadName(..) => crate::exit::USAGE,
            ClientError::NoGuest(_) | ClientError::Refused(..) => crate::exit::UNAVAILABLE,
            ClientError::Perm(_) => crate::exit::NOPERM,
            ClientError::Os(..) => crate::exit::OSERR,
        }
    }
}

pub struct Guest {
    pub name: String,
    pub path: PathBuf,
}

impl Guest {
    pub fn named(dir: &Path, name: &str) -> Result<Guest, ClientError> {
        crate::config::check_name(name).map_err(|e| ClientError::BadName(name.into(), e))?;
        Ok(Guest {
            name: name.to_string(),
            path: super::socket_path(dir, name),
        })
    }

    pub fn connect(&self) -> Result<UnixStream, ClientError> {
        UnixStream::connect(&self.path).map_err(|e| match e.kind() {
            // No socket, or one its guest left behind.
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::NoGuest(self.name.clone())
            }
            io::ErrorKind::PermissionDenied => ClientError::Perm(self.name.clone()),
            _ => ClientError::Os(self.path.display().to_string(), e),
        })
    }

    /// Sends `req` on a new connection and returns the reply with the
    /// connection, which some requests go on using.
    pub fn request(&self, req: Request) -> Result<(Reply, UnixStream), ClientError> {
        let mut s = self.connect()?;
        let sent = proto::write_frame(&mut s, req.verb());
        // A busy or refusing guest may answer and hang up before it reads
        // our request: its answer is still the one to show.
        let reply = match (self.reply(&mut s), sent) {
            (Ok(r), _) => r,
            (Err(_), Err(e)) => return Err(ClientError::Os(self.path.display().to_string(), e)),
            (Err(e), Ok(())) => return Err(e),
        };
        Ok((reply, s))
    }

    /// Reads one reply; an `error` reply is an Err.
    pub fn reply(&self, s: &mut UnixStream) -> Result<Reply, ClientError> {
        let refused = |why: String| ClientError::Refused(self.name.clone(), why);
        let text = proto::read_frame(s).map_err(|e| match e {
            ProtoError::Eof => refused("connection closed".into()),
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
        proto::write_frame(&mut s, Request::Wait.verb())
            .map_err(|e| ClientError::Os(self.path.display().to_string(), e))?;
        Ok(s)
    }

    /// Blocks until vm-run exits; its exit status, when it could tell.
    pub fn wait_exit(mut s: UnixStream) -> Option<i32> {
        let text = proto::read_frame(&mut s).ok()?;
        Reply::decode(&text).ok()?.get("status")?.parse().ok()
    }
}

/// Every guest with a socket in `dir`, by name.
pub fn all(dir: &Path) -> Result<Vec<Guest>, ClientError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ClientError::Os(dir.display().to_string(), e)),
    };
    let mut guests: Vec<Guest> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let file = e.file_name().into_string().ok()?;
            let name = file.strip_suffix(".sock")?;
            crate::config::check_name(name).ok()?;
            Some(Guest {
                name: name.to_string(),
                path: e.path(),
            })
        })
        .collect();
    guests.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(guests)
}
