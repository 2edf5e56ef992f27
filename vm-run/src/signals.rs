//! Host signals that end the run: SIGTERM (a service manager stopping us),
//! SIGINT, SIGHUP and SIGQUIT. They are blocked in every thread and taken by one
//! thread with sigwait, so no handler runs in the middle of a vCPU exit.

use nix::sys::signal::{SigSet, Signal};

use crate::error::{Error, Result};
use crate::outcome::{Outcome, Reporter};

fn set() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        s.add(sig);
    }
    s
}

/// Blocks the signals in the calling thread and every thread it starts
/// after this; call it before starting any.
pub fn block() -> Result<()> {
    set()
        .thread_block()
        .map_err(|e| Error::Os("sigprocmask".into(), e.into()))
}

pub fn spawn_waiter(reporter: Reporter) -> Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let s = set();
            loop {
                if let Ok(sig) = s.wait() {
                    reporter.report(Outcome::Signal(sig as i32));
                }
            }
        })
        .map(|_| ())
        .map_err(|e| Error::Os("signal thread".into(), e))
}
