//! One vCPU thread: KVM_RUN, then dispatch of the exit to the bus, until
//! the guest ends its run. The end is reported, never acted on here.

use std::sync::Arc;
use std::thread;

use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::bus::Bus;
use crate::error::{Error, Result};
use crate::outcome::{Outcome, Reporter};
use crate::x86::regs;

pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub reporter: Reporter,
    pub verbose: bool,
}

impl Vcpu {
    pub fn spawn(self) -> Result<()> {
        thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || {
                let mut me = self;
                let outcome = me.run();
                me.reporter.report(outcome);
            })
            .map(|_| ())
            .map_err(|e| Error::Os("vCPU thread".into(), e))
    }

    fn run(&mut self) -> Outcome {
        loop {
            let exit = match self.fd.run() {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => {
                    let e = std::io::Error::from_raw_os_error(e.errno());
                    return self.failed(format!("KVM_RUN: {e}"));
                }
            };
            match exit {
                VcpuExit::IoIn(port, data) => self.pio.read(port.into(), data),
                VcpuExit::IoOut(port, data) => self.pio.write(port.into(), data),
                VcpuExit::MmioRead(addr, data) => self.mmio.read(addr, data),
                VcpuExit::MmioWrite(addr, data) => self.mmio.write(addr, data),
                // A triple fault: vmd, like a PC, treats it as a reset.
                VcpuExit::Shutdown => return Outcome::Reset,
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => return Outcome::PowerOff,
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _) => return Outcome::Reset,
                VcpuExit::InternalError => {
                    return self.failed("KVM internal error (emulation failure)".into())
                }
                VcpuExit::FailEntry(reason, cpu) => {
                    return self.failed(format!(
                        "KVM entry failure (reason {reason:#x}, host cpu {cpu})"
                    ))
                }
                other => {
                    let what = format!("unexpected exit {other:?}");
                    return self.failed(what);
                }
            }
        }
    }

    fn failed(&self, what: String) -> Outcome {
        let regs = if self.verbose {
            format!(": {}", regs::dump(&self.fd))
        } else {
            String::new()
        };
        Outcome::Failed(format!("vcpu{}: {what}{regs}", self.id))
    }
}
