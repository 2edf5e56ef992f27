//! The control socket: how vm-ctl (and later vm-send) reach one running
//! guest without a daemon. `vm-run -N name` listens on
//! `$VM_RUNDIR/name.sock`; each connection carries one request of the
//! protocol in `proto` and is served on a thread of its own, so a client
//! that stalls or sends garbage holds up nobody else, least of all the guest.

pub mod client;
pub mod proto;
mod server;

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub use server::{remove_socket, Control, Guest};

/// Where control sockets live: $VM_RUNDIR, else /run/vm for root and
/// $XDG_RUNTIME_DIR/vm for everybody else (as systemd gives users).
pub fn rundir() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("VM_RUNDIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/run/vm"));
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => Ok(Path::new(&d).join("vm")),
        None => Err("neither VM_RUNDIR nor XDG_RUNTIME_DIR is set".into()),
    }
}

pub fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// Creates the run directory if it is missing. It is world-searchable so
/// that guests of several owners can share it: each socket's own mode is
/// what keeps other users out.
pub fn make_rundir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}
