//! One connection to one guest's control socket, one request on it.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use vm_run::control::proto::{self, ProtoError, Reply, Request};

use crate::Fail;

pub struct Guest {
    pub name: String,
    pub path: PathBuf,
}

impl Guest {
    pub fn named(dir: &Path, name: &str) -> Result<Guest, Fail> {
        vm_run::config::check_name(name).map_err(|e| Fail::Usage(format!("{name}: {e}")))?;
        Ok(Guest {
            name: name.to_string(),
            path: vm_run::control::socket_path(dir, name),
        })
    }

    pub fn connect(&self) -> Result<UnixStream, Fail> {
        UnixStream::connect(&self.path).map_err(|e| match e.kind() {
            // No socket, or one its guest left behind.
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                Fail::NoGuest(self.name.clone())
            }
            io::ErrorKind::PermissionDenied => Fail::Perm(self.name.clone()),
            _ => Fail::Os(self.path.display().to_string(), e),
        })
    }

    /// Sends `req` on a new connection and returns the reply with the
    /// connection, which some requests go on using.
    pub fn request(&self, req: Request) -> Result<(Reply, UnixStream), Fail> {
        let mut s = self.connect()?;
        let proto_err = |e: ProtoError| match e {
            ProtoError::Eof => Fail::Refused(self.name.clone(), "connection closed".into()),
            e => Fail::Refused(self.name.clone(), e.to_string()),
        };
        let sent = proto::write_frame(&mut s, req.verb());
        // A busy or refusing guest may answer and hang up before it reads
        // our request: its answer is still the one to show.
        let text = match (proto::read_frame(&mut s), sent) {
            (Ok(text), _) => text,
            (Err(_), Err(e)) => return Err(Fail::Os(self.path.display().to_string(), e)),
            (Err(e), Ok(())) => return Err(proto_err(e)),
        };
        let reply = Reply::decode(&text).map_err(proto_err)?;
        match reply {
            Reply::Error(msg) if msg == "permission denied" => Err(Fail::Perm(self.name.clone())),
            Reply::Error(msg) => Err(Fail::Refused(self.name.clone(), msg)),
            ok => Ok((ok, s)),
        }
    }

    /// For `wait`: blocks until vm-run exits. Its exit status, when it
    /// could tell.
    pub fn wait_exit(mut s: UnixStream) -> Option<i32> {
        let text = proto::read_frame(&mut s).ok()?;
        Reply::decode(&text).ok()?.get("status")?.parse().ok()
    }
}

/// Every guest with a socket in `dir`, by name.
pub fn all(dir: &Path) -> Result<Vec<Guest>, Fail> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Fail::Os(dir.display().to_string(), e)),
    };
    let mut guests: Vec<Guest> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let file = e.file_name().into_string().ok()?;
            let name = file.strip_suffix(".sock")?;
            vm_run::config::check_name(name).ok()?;
            Some(Guest {
                name: name.to_string(),
                path: e.path(),
            })
        })
        .collect();
    guests.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(guests)
}
