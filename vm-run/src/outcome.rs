//! How a run ends. Whoever sees the end first (a vCPU, a device, the
//! signal thread) reports it here; the main thread acts on the first report.

use std::sync::mpsc::{channel, Receiver, Sender};

use crate::exit;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// ACPI S5, or KVM's system event of the same meaning.
    PowerOff,
    /// i8042 reset, the reset control register, or KVM's reset event:
    /// the guest asked for it.
    Reset,
    /// The vCPU of this index could not deliver an exception (KVM's
    /// shutdown exit). A PC resets, so this ends as Reset does, but the
    /// guest did not ask for it: a crash that printed nothing, so it is
    /// said on stderr.
    TripleFault(u32),
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
            Outcome::Reset | Outcome::TripleFault(_) => exit::TEMPFAIL,
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
