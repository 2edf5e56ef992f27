//! How a run ends. Whoever sees the end first (a vCPU, a device, the
//! signal thread) reports it here; the main thread acts on the first report.

use std::sync::mpsc::{channel, Receiver, Sender};

use crate::exit;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// ACPI S5, or KVM's system event of the same meaning.
    PowerOff,
    /// i8042 reset, triple fault, or KVM's reset event.
    Reset,
    /// SIGTERM, SIGINT or SIGHUP from the host.
    Signal(i32),
    /// vm-ctl stop -f: ended at once, on purpose.
    Stopped,
    /// vm-send took the guest away (without -k).
    Sent,
    /// Something the VMM cannot continue from; the message names it.
    Failed(String),
}

impl Outcome {
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::PowerOff => exit::OK,
            Outcome::Reset => exit::TEMPFAIL,
            Outcome::Signal(libc::SIGINT) => exit::INTERRUPTED,
            Outcome::Signal(_) | Outcome::Stopped | Outcome::Sent => exit::OK,
            Outcome::Failed(_) => exit::SOFTWARE,
        }
    }
}

/// A cheap, cloneable handle to report the end of the run.
#[derive(Clone)]
pub struct Reporter(Sender<Outcome>);

impl Reporter {
    pub fn report(&self, o: Outcome) {
        // The receiver outlives every sender except during process exit, when
        // a lost report does not matter.
        let _ = self.0.send(o);
    }
}

pub fn channel_pair() -> (Reporter, Receiver<Outcome>) {
    let (tx, rx) = channel();
    (Reporter(tx), rx)
}
