//! vm-run's side of the control socket: bound before the sandbox, served
//! by an accept thread after it, removed on the way out.

use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Gid, Uid};

use super::proto::{self, ProtoError, Reply, Request, State, Status};
use crate::console::Attached;
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::serial::Serial;
use crate::error::{Error, Result};
use crate::memory::{self, GuestMemory};
use crate::outcome::{Outcome, Reporter};
use crate::vcpu::Pauser;

/// Connections served at once; more are told to come back later. Waiters
/// (`wait`) do not count: they hold no thread.
const MAX_CONNECTIONS: usize = 8;
/// How long a client may take to send its request.
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

/// Everything a request can act on.
pub struct Guest {
    pub name: String,
    pub vcpus: u8,
    pub mem: &'static GuestMemory,
    pub tty: String,
    pub pauser: Arc<Pauser>,
    pub power: Arc<Mutex<AcpiPm>>,
    pub serial: Arc<Mutex<Serial>>,
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
    /// by a guest that died is replaced.
    pub fn bind(dir: &Path, name: &str, owner: Option<(Uid, Option<Gid>)>) -> Result<Control> {
        let path = super::socket_path(dir, name);
        let os = |e: io::Error| Error::Os(path.display().to_string(), e);
        super::make_rundir(dir).map_err(|e| Error::Os(dir.display().to_string(), e))?;
        let in_use = || Error::Unavailable(format!("{name}: a guest of this name is running"));
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

fn accept(shared: &Arc<Shared>, mut stream: UnixStream) {
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    if let Err(why) = permitted(shared, &stream) {
        let _ = proto::write_frame(&mut stream, &Reply::error(why).encode());
        return;
    }
    if shared.active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
        shared.active.fetch_sub(1, Ordering::AcqRel);
        let _ = proto::write_frame(&mut stream, &Reply::error("busy, try again").encode());
        return;
    }
    let s = shared.clone();
    let spawned = thread::Builder::new()
        .name("control-conn".into())
        .spawn(move || {
            serve_one(&s, stream);
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

fn serve_one(shared: &Shared, mut stream: UnixStream) {
    let g = &shared.guest;
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let request = match proto::read_frame(&mut stream).and_then(|t| Request::parse(&t)) {
        Ok(r) => r,
        // Gone or silent: nobody to answer.
        Err(ProtoError::Eof | ProtoError::Io(_)) => return,
        Err(e) => {
            let _ = proto::write_frame(&mut stream, &Reply::error(e).encode());
            return;
        }
    };
    let reply = match request {
        Request::Status => status(shared).reply(),
        Request::Stop => {
            g.power
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .press_power_button();
            Reply::ok()
        }
        Request::Kill => {
            let _ = proto::write_frame(&mut stream, &Reply::ok().encode());
            g.reporter.report(Outcome::Stopped);
            return;
        }
        Request::Pause => g.pauser.pause().map_or_else(Reply::error, |()| Reply::ok()),
        Request::Unpause => g
            .pauser
            .resume()
            .map_or_else(Reply::error, |()| Reply::ok()),
        Request::Wait => {
            let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
            shared
                .waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(stream);
            return;
        }
        Request::Console => return console(g, stream),
    };
    let _ = proto::write_frame(&mut stream, &reply.encode());
}

fn status(shared: &Shared) -> Status {
    let g = &shared.guest;
    let (uid, gid) = shared.owner;
    Status {
        pid: std::process::id(),
        vcpus: g.vcpus,
        maxmem: memory::size(g.mem),
        curmem: memory::resident(g.mem),
        tty: g.tty.clone(),
        uid: uid.as_raw(),
        gid: gid.as_raw(),
        state: if g.pauser.is_paused() {
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
    let Some(id) = g.console.attach(out) else {
        let _ = proto::write_frame(&mut stream, &Reply::error("console in use").encode());
        return;
    };
    if proto::write_frame(&mut stream, &Reply::ok().encode()).is_ok() {
        let _ = stream.set_read_timeout(None);
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let taken = g
                    .serial
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .enqueue(rest);
                rest = &rest[taken..];
                if taken == 0 {
                    // The guest has not drained its FIFO yet.
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    g.console.detach(id);
}
