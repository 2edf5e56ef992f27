//! One guest from start to end: the host side (taps, control socket, KVM,
//! memory, console), the board, a kernel booted or a stream received,
//! the vCPUs, the sandbox, then a wait for the first report of its end.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::CpuId;
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::board::snapshot::{self, Saved};
use crate::board::{self, acpi, lock, Board, Plugs};
use crate::config::Config;
use crate::console::{Attached, Console};
use crate::control::{self, Control};
use crate::devices::{rtc, vmgenid};
use crate::error::{Error, Result};
use crate::memory::{self, GuestMemory};
use crate::nic::tap::{Tap, TapError};
use crate::outcome::{self, Outcome, Reporter};
use crate::snapshot::stream::Reader;
use crate::snapshot::{DiskRecord, GuestConfig, NicRecord};
use crate::vcpu::{self, Pauser, Vcpu};
use crate::virtio::net;
use crate::x86::{cpuid, irqchip, msrs, regs};
use crate::{boot, sandbox, signals};

/// xAPIC IDs are 8 bits and 0xff is the broadcast ID.
const MAX_VCPUS: usize = 254;

/// A snapshot stream on its way in (vm-receive): its CONF section, read
/// already, and the reader at the section after it.
pub struct Incoming {
    pub config: GuestConfig,
    pub reader: Reader<Box<dyn Read>>,
}

/// Boots the guest's kernel and runs it to its end. Errors are what kept
/// it from starting.
pub fn run(cfg: &Config) -> Result<Outcome> {
    let mut steps = Steps::new(cfg.verbose);
    let mut host = Host::open(cfg)?;
    host.control = host.bind(cfg)?;
    steps.mark("host");
    let m = Machine::create(cfg)?;
    steps.mark("machine");
    let mem = m.mem;
    let cpuid = cpuid::supported(&m.kvm)?;
    let media = board::open_media(cfg)?;
    let mut board = host.board(cfg, &m, &cpuid, media, None)?;
    steps.mark("board");
    vmgenid::write_new_id(mem)?;
    // A kernel, entered in 64-bit mode (bzImage) or 32-bit (PVH); or a
    // BIOS, which vCPU 0 enters at the reset vector.
    let image = boot::probe(cfg)?;
    // SeaBIOS needs a PIT; a kernel booted directly by default has none
    // (x86/irqchip.rs).
    let pit = cfg.pit.unwrap_or(matches!(image, boot::Image::Bios(_)));
    if pit {
        irqchip::create_pit(&m.vm).map_err(|e| Error::Kvm("KVM_CREATE_PIT2".into(), e))?;
    }
    let entry = match image {
        boot::Image::Kernel => {
            let rsdp = acpi::write_tables(mem, cfg.vcpus, &board.nic_slots)?;
            let entry = boot::load(mem, cfg, rsdp)?;
            regs::write_boot_structures(mem, entry)?;
            steps.mark("kernel loaded");
            Some(entry)
        }
        boot::Image::Bios(image) => {
            board.boot_firmware(cfg, &image)?;
            None
        }
    };
    if cfg.verbose {
        eprintln!(
            "vm-run: {} MiB, {} vCPUs, entry {entry:x?}, PIT {}",
            cfg.mem_size >> 20,
            cfg.vcpus,
            if pit { "on" } else { "off" }
        );
    }
    let vcpus = create_vcpus(
        cfg,
        &m.vm,
        &board,
        &cpuid,
        &host.reporter,
        |id, fd| match entry {
            Some(entry) if id == 0 => regs::setup_boot_vcpu(fd, entry),
            _ => Ok(()),
        },
    )?;
    steps.mark("vCPUs");
    host.enter_sandbox(cfg)?;
    steps.mark("sandbox");
    steps.print();
    host.go(cfg, board, vcpus)
}

/// With -v, when each step of the start-up ended (ms from exec), for
/// one line before the guest runs.
struct Steps(Option<Vec<(&'static str, f64)>>);

impl Steps {
    fn new(verbose: bool) -> Steps {
        Steps(verbose.then(Vec::new))
    }

    fn mark(&mut self, step: &'static str) {
        if let Some(v) = &mut self.0 {
            v.push((step, crate::stats::ms_since_start()));
        }
    }

    fn print(&self) {
        if let Some(v) = &self.0 {
            let steps: Vec<String> = v.iter().map(|(s, ms)| format!("{s} {ms:.1}")).collect();
            eprintln!("vm-run: start-up (ms from exec): {}", steps.join(", "));
        }
    }
}

/// Continues a guest from a snapshot stream. Nothing runs until the whole
/// stream has been read and checked, and no file is opened before that.
pub fn receive(cfg: &Config, mut incoming: Incoming) -> Result<Outcome> {
    let mut host = Host::open(cfg)?;
    let m = Machine::create(cfg)?;
    let mem = m.mem;
    let host_cpuid = cpuid::supported(&m.kvm)?;
    let missing = cpuid::missing_cpu_features(&incoming.config.cpuid, host_cpuid.as_slice());
    if !missing.is_empty() {
        return Err(Error::Unavailable(format!(
            "snapshot: this host's CPU lacks {}",
            missing.join(" ")
        )));
    }
    let saved = snapshot::read(&mut incoming.reader, mem, &incoming.config)
        .map_err(|e| Error::Snapshot(e.to_string()))?;
    let cpuid = CpuId::from_entries(&incoming.config.cpuid)
        .map_err(|e| Error::Snapshot(format!("CPUID: {e:?}")))?;
    // The guest it continues may be on this host, ending now that the
    // stream is written: give it a moment to let go of its name and its
    // disks.
    host.control = patiently(|| host.bind(cfg))?;
    let media = patiently(|| board::open_media(cfg))?;
    let mut board = host.board(cfg, &m, &cpuid, media, Some(&saved))?;
    board.restore(cfg, &saved)?;
    let vcpus = create_vcpus(cfg, &m.vm, &board, &cpuid, &host.reporter, |id, fd| {
        saved.vcpus[usize::from(id)]
            .restore(fd, mem)
            .map_err(|e| Error::Snapshot(format!("vcpu{id}: {e}")))
    })?;
    // Before the device threads start: every thread inherits it.
    host.enter_sandbox(cfg)?;
    board.resume_restored(&saved)?;
    host.go(cfg, board, vcpus)
}

/// What a guest has of the host besides KVM: its taps, its control socket
/// and run directory, its console.
struct Host {
    /// What the vCPU threads, the devices and the signal thread report
    /// the guest's end to, and where the main thread waits for it.
    reporter: Reporter,
    ends: Receiver<Outcome>,
    taps: Vec<Tap>,
    rundir: Option<PathBuf>,
    control: Option<Control>,
    console: Console,
    attached: Arc<Attached>,
    room_reader: Option<EventFd>,
    /// What the VM's descriptor becomes when the VM is closed (close_vm);
    /// None where /dev/null cannot be opened, and the VM goes at exit.
    null: Option<File>,
}

impl Host {
    fn open(cfg: &Config) -> Result<Host> {
        signals::block()?;
        // Before vm-run opens anything: a number in VM_NET_FDS or -n that
        // is not open must not name one of our own files by then.
        let taps = open_taps(cfg)?;
        let rundir = match &cfg.name {
            Some(_) => Some(control::rundir().map_err(Error::Unavailable)?),
            None => None,
        };
        let (reporter, ends) = outcome::channel_pair();
        Ok(Host {
            reporter,
            ends,
            taps,
            rundir,
            control: None,
            console: Console::open(cfg.console)?,
            attached: Arc::new(Attached::default()),
            room_reader: None,
            null: File::open("/dev/null").ok(),
        })
    }

    /// The control socket of a named guest; a second guest of the same
    /// name fails here, before it takes anything else.
    fn bind(&self, cfg: &Config) -> Result<Option<Control>> {
        match (&cfg.name, &self.rundir) {
            (Some(name), Some(dir)) => Control::bind(dir, name, cfg.owner).map(Some),
            _ => Ok(None),
        }
    }

    /// The board, plugged into the host side.
    fn board(
        &mut self,
        cfg: &Config,
        m: &Machine,
        cpuid: &CpuId,
        media: board::Media,
        saved: Option<&Saved>,
    ) -> Result<Board> {
        let eventfd =
            || EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Os("eventfd".into(), e));
        let room = eventfd()?;
        self.room_reader = Some(
            room.try_clone()
                .map_err(|e| Error::Os("eventfd".into(), e))?,
        );
        let console = self
            .console
            .take_output(self.attached.clone())
            .ok_or_else(|| Error::Setup("console output taken twice".into()))?;
        // The MSRs a snapshot saves, read before the sandbox.
        let msr_index = (m.kvm.get_msr_index_list())
            .map_err(|e| Error::Kvm("KVM_GET_MSR_INDEX_LIST".into(), e))?
            .as_slice()
            .to_vec();
        let pauser = Arc::new(Pauser::new(m.vm.clone(), cfg.vcpus.into(), msr_index));
        let plugs = Plugs {
            media,
            reporter: self.reporter.clone(),
            console,
            room,
            taps: std::mem::take(&mut self.taps),
        };
        let conf = guest_config(cfg, cpuid);
        Board::build(cfg, &m.vm, m.mem, pauser, conf, plugs, saved)
    }

    /// Everything is open and mapped: from here on the guest could be
    /// hostile, so vm-run gives up what it no longer needs. No thread has
    /// been started yet, so every one inherits the sandbox.
    fn enter_sandbox(&self, cfg: &Config) -> Result<()> {
        let landlocked = sandbox::enter(self.rundir.as_deref())?;
        if cfg.verbose && !landlocked {
            eprintln!("vm-run: landlock is not (fully) available on this kernel");
        }
        Ok(())
    }

    /// Starts the threads, runs the guest, and ends it on the first
    /// outcome reported.
    fn go(mut self, cfg: &Config, board: Board, vcpus: Vec<Vcpu>) -> Result<Outcome> {
        // A NIC to get a new MAC: the guest is asked to let go of it, and
        // it comes back new (pci/hotplug.rs).
        for (slot, nic) in board.nic_slots.iter().zip(&cfg.nics) {
            if nic.renew.is_some() {
                lock(&board.hotplug).replug(*slot);
            }
        }
        signals::spawn_waiter(self.reporter.clone())?;
        let board = Arc::new(board);
        if let (Some(c), Some(name)) = (self.control.as_mut(), &cfg.name) {
            c.serve(control::Guest {
                board: board.clone(),
                name: name.clone(),
                tty: self.console.tty().unwrap_or("-").to_string(),
                console: self.attached.clone(),
                reporter: self.reporter.clone(),
            })?;
        }
        let room = self
            .room_reader
            .take()
            .ok_or_else(|| Error::Setup("console room taken twice".into()))?;
        self.console.spawn_input(board.com1.clone(), room)?;
        self.console.spawn_output()?;
        rtc::spawn_ticker(board.rtc.clone())
            .map_err(|e| Error::Os("spawn rtc thread".into(), e))?;
        for v in vcpus {
            v.spawn()?;
        }
        // Every thread holds a reporter, so this waits until one reports.
        let outcome = self
            .ends
            .recv()
            .unwrap_or_else(|_| Outcome::Failed("every vCPU thread is gone".into()));
        board.pauser.stop_all();
        if let Err(e) = board.flush_disks() {
            eprintln!("vm-run: {e}");
        }
        self.console.drain(Duration::from_secs(2));
        crate::console::restore_terminal();
        if let Some(c) = self.control {
            c.finish(outcome.exit_status());
            // Dropping it removes the socket.
        }
        // The VM goes before the process's memory does: closed at exit,
        // KVM's MMU notifier on that memory would cost the exit one more
        // SRCU grace period (docs/BENCHMARKS.md, "Start-up and exit").
        // The vCPUs closed theirs as they ended (Pauser::stop_all); the
        // disks are flushed, so no device needs KVM any more.
        if let Some(null) = &self.null {
            let t = crate::stats::now_ns();
            close_vm(&board.vm, board.mem, null);
            if cfg.verbose {
                eprintln!(
                    "vm-run: the VM closed in {:.3} ms, {:.3} ms after start",
                    (crate::stats::now_ns() - t) as f64 / 1e6,
                    crate::stats::ms_since_start()
                );
            }
        }
        // A vCPU thread that did not stop in time ends with the process.
        Ok(outcome)
    }
}

/// KVM's side of a guest: the VM with its in-kernel irqchip, and guest
/// memory registered. The PIT comes later, once vm-run knows what boots
/// (or from the stream, x86/state.rs).
struct Machine {
    kvm: Kvm,
    vm: Arc<VmFd>,
    mem: &'static GuestMemory,
}

impl Machine {
    fn create(cfg: &Config) -> Result<Machine> {
        let kvm = Kvm::new().map_err(|e| Error::Kvm("/dev/kvm".into(), e))?;
        let max = kvm.get_max_vcpus().min(MAX_VCPUS);
        if usize::from(cfg.vcpus) > max {
            return Err(Error::Unavailable(format!(
                "-c {}: KVM on this host allows at most {max} vCPUs",
                cfg.vcpus
            )));
        }
        let vm = Arc::new(
            kvm.create_vm()
                .map_err(|e| Error::Kvm("KVM_CREATE_VM".into(), e))?,
        );
        // Guest memory must outlive every vCPU, and vCPUs run until the
        // process exits: it is never unmapped.
        let mem: &'static GuestMemory =
            Box::leak(Box::new(memory::create(cfg.mem_size, &cfg.mem_words())?));
        // Before the irqchip: a memory slot added after it waits ~6 ms for
        // the kernel (docs/BENCHMARKS.md, "Start-up and exit").
        memory::register(&vm, mem, false)
            .map_err(|e| Error::Kvm("KVM_SET_USER_MEMORY_REGION".into(), e))?;
        irqchip::create(&vm)?;
        Ok(Machine { kvm, vm, mem })
    }
}

/// Every vCPU with its CPUID, MSRs, FPU and LAPIC; `start` then gives
/// each its state (the boot entry, or a stream's).
fn create_vcpus(
    cfg: &Config,
    vm: &VmFd,
    board: &Board,
    cpuid: &CpuId,
    reporter: &Reporter,
    start: impl Fn(u8, &kvm_ioctls::VcpuFd) -> Result<()>,
) -> Result<Vec<Vcpu>> {
    vcpu::install_kick_handler()?;
    (0..cfg.vcpus)
        .map(|id| {
            let fd = vm
                .create_vcpu(id.into())
                .map_err(|e| Error::Kvm("KVM_CREATE_VCPU".into(), e))?;
            fd.set_cpuid2(&cpuid::for_vcpu(cpuid, id, cfg.vcpus)?)
                .map_err(|e| Error::Kvm("KVM_SET_CPUID2".into(), e))?;
            msrs::setup(&fd)?;
            regs::setup_fpu(&fd)?;
            irqchip::setup_lapic(&fd)?;
            start(id, &fd)?;
            Ok(Vcpu {
                id,
                fd,
                pio: board.pio.clone(),
                mmio: board.mmio.clone(),
                reporter: reporter.clone(),
                pauser: board.pauser.clone(),
                verbose: cfg.verbose,
            })
        })
        .collect()
}

/// What a stream's CONF says of this guest: its size, CPUID, disks and
/// the MACs its NICs have (after a replug, the new one).
fn guest_config(cfg: &Config, cpuid: &CpuId) -> GuestConfig {
    GuestConfig {
        mem_size: cfg.mem_size,
        vcpus: cfg.vcpus,
        cpuid: cpuid.as_slice().to_vec(),
        disks: cfg
            .disks
            .iter()
            .map(|d| DiskRecord {
                path: d.path.display().to_string(),
                read_only: d.read_only,
                serial: d.serial.clone(),
            })
            .collect(),
        nics: (board::nic_macs(cfg).into_iter().zip(&cfg.nics))
            .map(|(mac, nic)| NicRecord {
                mac: nic.renew.unwrap_or(mac),
            })
            .collect(),
        // Board::boot_firmware says otherwise.
        firmware: false,
        cdrom: cfg.cdrom.as_ref().map(|p| p.display().to_string()),
    }
}

/// Closes the VM, which KVM then tears down, while every holder of its
/// `VmFd` may still use it: the descriptor's number is made /dev/null's in
/// one step, so it is never free for another file to take, and a late
/// call on it (the RTC's tick, a control command) fails with ENOTTY.
///
/// The RAM's memory slots are deleted first. KVM frees what the
/// irqchip's devices replaced on its I/O bus after an SRCU grace period
/// of its own pace (`call_srcu`, in recent kernels such as this host's
/// 6.18), and tearing a VM down waits for those (`srcu_barrier`): some
/// 10 ms for a guest that lived less than that. A slot's deletion waits
/// for an expedited grace period, which ends those too, in well under a
/// millisecond (docs/BENCHMARKS.md, "Start-up and exit").
fn close_vm(vm: &VmFd, mem: &GuestMemory, null: &File) {
    for slot in 0..vm_memory::GuestMemoryBackend::num_regions(mem) as u32 {
        let gone = kvm_bindings::kvm_userspace_memory_region {
            slot,
            ..Default::default()
        };
        // SAFETY: a size of 0 deletes the slot: KVM lets go of the
        // memory, which stays mapped for vm-run's own threads.
        let _ = unsafe { vm.set_user_memory_region(gone) };
    }
    // SAFETY: dup3 replaces the file behind the VM's number atomically;
    // that number stays open (on /dev/null) for the VmFd that owns it.
    unsafe { libc::dup3(null.as_raw_fd(), vm.as_raw_fd(), libc::O_CLOEXEC) };
}

/// Retries `f` while what it needs is held by another vm-run, for up to
/// five seconds.
fn patiently<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match f() {
            Err(Error::Locked(_) | Error::NameInUse(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            r => return r,
        }
    }
}

/// The taps vm-net (or -n) gave us, checked and taken over.
fn open_taps(cfg: &Config) -> Result<Vec<Tap>> {
    cfg.nics
        .iter()
        .map(|spec| {
            let what = || PathBuf::from(format!("fd {}", spec.fd));
            Tap::from_fd(spec.fd, net::HDR_LEN).map_err(|e| match e {
                TapError::NotOpen(_, e) => Error::Open(what(), e),
                TapError::NotTap(_, why) => Error::Format(what(), why),
                TapError::Setup(_, call, e) => Error::Os(format!("fd {}: {call}", spec.fd), e),
            })
        })
        .collect()
}
