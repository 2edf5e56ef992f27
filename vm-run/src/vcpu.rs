//! One vCPU thread: KVM_RUN, then dispatch of the exit to the bus, until
//! the guest ends its run. The end is reported, never acted on here.
//! Between two runs a vCPU parks itself when the guest is paused.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use kvm_bindings::{kvm_clock_data, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use crate::bus::Bus;
use crate::error::KvmError;
use crate::error::{Error, Result};
use crate::outcome::{Outcome, Reporter};
use crate::stats::{self, ExitStats, Kind, Target};
use crate::x86::regs;
use crate::x86::state::{StateError, StateResult, VcpuState};

/// The signal that kicks a vCPU thread out of KVM_RUN.
const KICK: libc::c_int = libc::SIGUSR1;

thread_local! {
    /// This thread's kvm_run.immediate_exit, for the kick handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int) {
    // A kick that lands between the pause check and KVM_RUN would be lost;
    // immediate_exit makes that KVM_RUN return at once instead.
    let p = IMMEDIATE_EXIT.with(Cell::get);
    if !p.is_null() {
        // SAFETY: p points into this thread's kvm_run mapping, set by the
        // vCPU thread for as long as it runs (see Vcpu::spawn).
        unsafe { p.write_volatile(1) };
    }
}

/// Installs the kick handler; once, before any vCPU thread starts.
pub fn install_kick_handler() -> Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler only does a
    // volatile store, which is async-signal-safe. No SA_RESTART, so that
    // KVM_RUN returns EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(KICK, &sa, std::ptr::null_mut()) != 0 {
            return Err(Error::Os(
                "sigaction".into(),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// Why a pause, a resume or a snapshot of the vCPUs failed.
#[derive(Debug)]
pub enum PauseError {
    AlreadyPaused,
    NotPaused,
    /// A vCPU has ended, so the guest cannot be saved whole.
    VcpuGone,
    /// The vCPUs did not stop, or did not give their state, in time.
    Timeout(&'static str),
    State(u8, StateError),
    Clock(KvmError),
}

impl std::fmt::Display for PauseError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            PauseError::AlreadyPaused => f.write_str("already paused"),
            PauseError::NotPaused => f.write_str("not paused"),
            PauseError::VcpuGone => f.write_str("the guest is not paused with every vCPU"),
            PauseError::Timeout(what) => write!(f, "the vCPUs did not {what}"),
            PauseError::State(id, e) => write!(f, "vcpu{id}: {e}"),
            PauseError::Clock(e) => write!(f, "{e}"),
        }
    }
}

/// Pauses and resumes every vCPU, and keeps the guest's clock still while
/// paused so that it does not jump forward on resume (as QEMU's stop/cont).
pub struct Pauser {
    vm: Arc<VmFd>,
    vcpus: usize,
    /// The MSRs a snapshot saves (KVM_GET_MSR_INDEX_LIST, read before the
    /// sandbox).
    msr_index: Vec<u32>,
    requested: AtomicBool,
    state: Mutex<PauseState>,
    changed: Condvar,
}

#[derive(Default)]
struct PauseState {
    paused: bool,
    parked: usize,
    /// vCPU threads whose run has ended: they count as parked.
    gone: usize,
    /// The kernel's thread id of each vCPU thread.
    threads: Vec<libc::c_long>,
    clock: Option<kvm_clock_data>,
    /// The host's wall-clock time when `clock` was read (ns since the epoch).
    clock_realtime: u64,
    /// A snapshot in progress: each parked vCPU fills its slot.
    saving: Option<Vec<Option<StateResult<VcpuState>>>>,
    /// Under -v, the exits of the vCPUs that have parked or ended.
    stats: Option<ExitStats>,
    /// The run is over: a vCPU thread ends rather than parks.
    ending: bool,
}

impl Pauser {
    pub fn new(vm: Arc<VmFd>, vcpus: usize, msr_index: Vec<u32>) -> Self {
        Pauser {
            vm,
            vcpus,
            msr_index,
            requested: AtomicBool::new(false),
            state: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PauseState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Returns once every vCPU is parked.
    pub fn pause(&self) -> std::result::Result<(), PauseError> {
        self.park_all(Duration::from_secs(5))?;
        let mut st = self.lock();
        st.clock = self.vm.get_clock().ok();
        st.clock_realtime = crate::clock::realtime_ns();
        Ok(())
    }

    /// Gets every vCPU out of KVM_RUN before the process exits, so that
    /// the kernel tears the VM down with no vCPU in guest mode. Nested
    /// under TCG, exiting with a vCPU inside the guest has been seen to
    /// hang the host kernel. Each vCPU thread then closes its vCPU and
    /// ends, so that the VM can go before the process's memory does
    /// (vm.rs, `close_vm`).
    /// Under -v it then prints the vCPUs' exits (merged as they ended).
    pub fn stop_all(&self) {
        const LIMIT: Duration = Duration::from_millis(500);
        self.lock().ending = true;
        // Wakes the vCPUs a pause has parked; kicks those in KVM_RUN.
        self.changed.notify_all();
        let _ = self.park_all(LIMIT);
        let st = self.lock();
        drop(
            self.changed
                .wait_timeout_while(st, LIMIT, |st| st.gone < self.vcpus),
        );
        if let Some(s) = self.lock().stats.take() {
            eprint!("{}", s.table());
        }
    }

    /// Adds a vCPU's exit counts to the guest's; under the state lock.
    fn merge_stats(st: &mut PauseState, mine: &mut Option<Box<ExitStats>>) {
        if let Some(mine) = mine {
            st.stats
                .get_or_insert_with(ExitStats::default)
                .merge_from(mine);
        }
    }

    fn park_all(&self, limit: Duration) -> std::result::Result<(), PauseError> {
        let mut st = self.lock();
        if st.paused {
            return Err(PauseError::AlreadyPaused);
        }
        st.paused = true;
        self.requested.store(true, Ordering::SeqCst);
        // tgkill, not pthread_kill (musl's is tkill, which names no
        // process): the sandbox lets vm-run signal its own threads only.
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        for t in &st.threads {
            // SAFETY: a vCPU thread leaves this list (gone(), under this
            // lock) before it exits, so every thread id here is ours.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, *t, KICK) };
        }
        let (mut st, wait) = self
            .changed
            .wait_timeout_while(st, limit, |st| st.parked + st.gone < self.vcpus)
            .unwrap_or_else(|e| e.into_inner());
        if wait.timed_out() {
            st.paused = false;
            self.requested.store(false, Ordering::SeqCst);
            self.changed.notify_all();
            return Err(PauseError::Timeout("stop"));
        }
        Ok(())
    }

    /// The guest clock as the pause found it; None when not paused.
    /// When the pause read the guest clock, on the host's wall clock: a
    /// snapshot's clock is brought forward from then, not from whenever
    /// its state was saved.
    pub fn paused_at(&self) -> u64 {
        self.lock().clock_realtime
    }

    pub fn clock(&self) -> Option<kvm_clock_data> {
        self.lock().clock
    }

    /// Every vCPU's state, taken by the vCPU threads themselves while
    /// parked (a VcpuFd belongs to its thread). Only while paused.
    pub fn save_vcpus(&self) -> std::result::Result<Vec<VcpuState>, PauseError> {
        let mut st = self.lock();
        if !st.paused || st.gone > 0 {
            return Err(PauseError::VcpuGone);
        }
        st.saving = Some((0..self.vcpus).map(|_| None).collect());
        self.changed.notify_all();
        let (mut st, wait) = self
            .changed
            .wait_timeout_while(st, Duration::from_secs(5), |st| {
                !st.saving
                    .as_ref()
                    .is_some_and(|s| s.iter().all(Option::is_some))
            })
            .unwrap_or_else(|e| e.into_inner());
        if wait.timed_out() {
            st.saving = None;
            return Err(PauseError::Timeout("give their state"));
        }
        st.saving
            .take()
            .unwrap_or_default()
            .into_iter()
            .zip(0u8..)
            .map(|(s, id)| match s {
                Some(Ok(state)) => Ok(state),
                Some(Err(e)) => Err(PauseError::State(id, e)),
                None => Err(PauseError::Timeout("give their state")),
            })
            .collect()
    }

    pub fn resume(&self) -> std::result::Result<(), PauseError> {
        let mut st = self.lock();
        if !st.paused {
            return Err(PauseError::NotPaused);
        }
        if let Some(mut clock) = st.clock.take() {
            // Without flags KVM sets the clock to exactly this value: the
            // guest sees no time pass while it was paused.
            clock.flags = 0;
            self.vm
                .set_clock(&clock)
                .map_err(|e| PauseError::Clock(KvmError("KVM_SET_CLOCK", e)))?;
        }
        st.paused = false;
        self.requested.store(false, Ordering::SeqCst);
        self.changed.notify_all();
        Ok(())
    }

    fn register(&self) {
        let me = thread_id();
        self.lock().threads.push(me);
    }

    /// Called by a vCPU thread whose run has ended, before it exits: it
    /// must not be signalled once it is gone.
    fn gone(&self, stats: &mut Option<Box<ExitStats>>) {
        let me = thread_id();
        let mut st = self.lock();
        Self::merge_stats(&mut st, stats);
        st.threads.retain(|t| *t != me);
        st.gone += 1;
        self.changed.notify_all();
    }

    /// Called by a vCPU thread between two runs; false when the run is
    /// over and the thread is to end.
    fn park_if_paused(&self, id: usize, fd: &VcpuFd, stats: &mut Option<Box<ExitStats>>) -> bool {
        if !self.requested.load(Ordering::SeqCst) {
            return true;
        }
        let mut st = self.lock();
        if st.ending {
            return false;
        }
        if !st.paused {
            return true;
        }
        Self::merge_stats(&mut st, stats);
        st.parked += 1;
        self.changed.notify_all();
        // Tells the guest kernel its clock stood still on purpose, so its
        // soft-lockup watchdog does not fire on resume. Fails harmlessly
        // if the guest does not use kvmclock.
        let _ = fd.kvmclock_ctrl();
        while st.paused {
            if st.ending {
                st.parked -= 1;
                return false;
            }
            if let Some(slot) = st.saving.as_mut().and_then(|s| s.get_mut(id)) {
                if slot.is_none() {
                    *slot = Some(VcpuState::save(fd, &self.msr_index));
                    self.changed.notify_all();
                }
            }
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.parked -= 1;
        true
    }
}

/// The calling thread's id, as tgkill takes it.
fn thread_id() -> libc::c_long {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// The element size of the port I/O exit in `run`, or `len` (one access)
/// if it does not divide the data.
fn io_size(run: *const kvm_bindings::kvm_run, len: usize) -> usize {
    // SAFETY: `run` is this vCPU's kvm_run mapping, alive as long as its
    // VcpuFd; the exit just returned was KVM_EXIT_IO, so `io` is the
    // union member KVM filled in.
    let size = usize::from(unsafe { (*run).__bindgen_anon_1.io.size });
    if size == 0 || !len.is_multiple_of(size) {
        len.max(1)
    } else {
        size
    }
}

pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub reporter: Reporter,
    pub pauser: Arc<Pauser>,
    pub verbose: bool,
}

/// Which line of the -v table an exit counts on.
fn classify(exit: &VcpuExit) -> (Kind, Target) {
    match exit {
        VcpuExit::IoIn(port, _) => (Kind::IoIn, Target::Port(*port)),
        VcpuExit::IoOut(port, _) => (Kind::IoOut, Target::Port(*port)),
        VcpuExit::MmioRead(addr, _) => (Kind::MmioRead, Target::Mmio(*addr)),
        VcpuExit::MmioWrite(addr, _) => (Kind::MmioWrite, Target::Mmio(*addr)),
        VcpuExit::Shutdown => (Kind::Shutdown, Target::None),
        VcpuExit::SystemEvent(..) => (Kind::SystemEvent, Target::None),
        VcpuExit::InternalError => (Kind::InternalError, Target::None),
        _ => (Kind::Other, Target::None),
    }
}

impl Vcpu {
    pub fn spawn(self) -> Result<()> {
        thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || {
                let mut me = self;
                let exit_flag: *mut u8 = &mut me.fd.get_kvm_run().immediate_exit;
                IMMEDIATE_EXIT.with(|p| p.set(exit_flag));
                me.pauser.register();
                // Only under -v: the 128 KiB of port counters, and a
                // clock read per exit.
                let mut stats = me.verbose.then(Box::<ExitStats>::default);
                let outcome = me.run(&mut stats);
                let Vcpu {
                    fd,
                    pauser,
                    reporter,
                    ..
                } = me;
                // The kick handler must not write to kvm_run once it is
                // unmapped, which dropping the fd does (closing the vCPU).
                IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
                drop(fd);
                pauser.gone(&mut stats);
                reporter.report(outcome);
            })
            .map(|_| ())
            .map_err(|e| Error::Os("vCPU thread".into(), e))
    }

    fn run(&mut self, stats: &mut Option<Box<ExitStats>>) -> Outcome {
        let kvm_run: *const kvm_bindings::kvm_run = self.fd.get_kvm_run();
        loop {
            if !self.pauser.park_if_paused(self.id.into(), &self.fd, stats) {
                // The run is already over: this outcome goes unheard.
                return Outcome::Stopped;
            }
            let entered = if stats.is_some() { stats::now_ns() } else { 0 };
            let result = self.fd.run();
            if let Some(s) = stats.as_mut() {
                let exited = stats::now_ns();
                let (kind, target) = match &result {
                    Ok(exit) => classify(exit),
                    Err(e) if e.errno() == libc::EINTR => (Kind::Kick, Target::None),
                    Err(e) if e.errno() == libc::EAGAIN => (Kind::Again, Target::None),
                    Err(_) => (Kind::Other, Target::None),
                };
                s.ran(entered, exited, kind, target);
            }
            let exit = match result {
                Ok(exit) => exit,
                Err(e) if e.errno() == libc::EINTR => {
                    self.fd.set_kvm_immediate_exit(0);
                    continue;
                }
                Err(e) if e.errno() == libc::EAGAIN => continue,
                Err(e) => {
                    let e = std::io::Error::from_raw_os_error(e.errno());
                    return self.failed(format!("KVM_RUN: {e}"));
                }
            };
            match exit {
                // String I/O (`rep insb`, as SeaBIOS reads fw_cfg) comes
                // as count elements of size bytes: each is an access.
                VcpuExit::IoIn(port, data) => {
                    let size = io_size(kvm_run, data.len());
                    data.chunks_mut(size)
                        .for_each(|d| self.pio.read(port.into(), d))
                }
                VcpuExit::IoOut(port, data) => {
                    let size = io_size(kvm_run, data.len());
                    data.chunks(size)
                        .for_each(|d| self.pio.write(port.into(), d))
                }
                VcpuExit::MmioRead(addr, data) => self.mmio.read(addr, data),
                VcpuExit::MmioWrite(addr, data) => self.mmio.write(addr, data),
                // A triple fault: vmd, like a PC, treats it as a reset.
                // (KVM on AMD has already put the vCPU through INIT, so
                // its registers would tell nothing.)
                VcpuExit::Shutdown => return Outcome::TripleFault(self.id.into()),
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
