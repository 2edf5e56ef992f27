//! Assembles one guest (memory, interrupt controllers, devices, vCPUs),
//! starts it, and waits for the first report of its end.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::CpuId;
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::Bus;
use crate::config::Config;
use crate::console::{Attached, Console};
use crate::control::{self, Control};
use crate::devices::reset_control::ResetControl;
use crate::devices::{acpi_pm, debugcon, fw_cfg, i8042, rtc, serial, vmgenid};
use crate::error::{Error, Result};
use crate::memory::{self, GuestMemory};
use crate::memory::{PCI_MMIO_END, PCI_MMIO_START};
use crate::net::tap::{Tap, TapError};
use crate::outcome::{self, Outcome};
use crate::pci::hotplug::{self, Hotplug};
use crate::pci::root::{self, MmioView, PciRoot, PioView};
use crate::snapshot::image::{self, DeviceState, Snapshot};
use crate::snapshot::live;
use crate::snapshot::stream::{Dec, Enc, Reader, Tag, Writer};
use crate::snapshot::{self, DiskRecord, GuestConfig, NicRecord, VmState};
use crate::vcpu::{self, Pauser, Vcpu};
use crate::virtio::net::{self, Net};
use crate::virtio::pci::{Placement, VirtioPci, BAR_SIZE};
use crate::virtio::{block::Block, rng::Rng, VirtioDevice};
use crate::x86::irqchip::GsiRouter;
use crate::x86::{acpi, cpuid, irqchip, msrs, regs};
use crate::{boot, disk, sandbox, signals};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// xAPIC IDs are 8 bits and 0xff is the broadcast ID.
const MAX_VCPUS: usize = 254;

/// A snapshot stream on its way in (vm-receive): its CONF section, read
/// already, and the reader at the section after it.
pub struct Incoming {
    pub config: GuestConfig,
    pub reader: Reader<Box<dyn Read>>,
}

/// Runs the guest to its end. Errors are what kept it from starting.
pub fn run(cfg: &Config) -> Result<Outcome> {
    start(cfg, None)
}

/// Continues a guest from a snapshot stream. Nothing runs until the whole
/// stream has been read and checked.
pub fn receive(cfg: &Config, incoming: Incoming) -> Result<Outcome> {
    start(cfg, Some(incoming))
}

fn start(cfg: &Config, incoming: Option<Incoming>) -> Result<Outcome> {
    signals::block()?;
    // Before vm-run opens anything: a number in VM_NET_FDS or -n that is
    // not open must not name one of our own files by then.
    let mut taps = open_taps(cfg)?;
    // First, so that a second guest of the same name fails before it
    // takes anything else (disk locks, memory).
    let rundir = match &cfg.name {
        Some(_) => Some(control::rundir().map_err(Error::Unavailable)?),
        None => None,
    };
    let receiving = incoming.is_some();
    let bind = || match (&cfg.name, &rundir) {
        (Some(name), Some(dir)) => Control::bind(dir, name, cfg.owner).map(Some),
        _ => Ok(None),
    };
    // A received guest binds its name once the stream is in (see below).
    let mut control = if receiving { None } else { bind()? };
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
    irqchip::create(&vm)?;
    // Guest memory must outlive every vCPU, and vCPUs run until the
    // process exits: it is never unmapped.
    let mem: &'static GuestMemory = Box::leak(Box::new(memory::create(cfg.mem_size)?));
    memory::register(&vm, mem, false)
        .map_err(|e| Error::Kvm("KVM_SET_USER_MEMORY_REGION".into(), e))?;

    let host_cpuid = cpuid::supported(&kvm)?;
    // A BIOS boot's fw_cfg (boot/bios.rs); None for a kernel or a receive.
    let mut firmware = None;
    let (entry, loaded, base_cpuid) = match incoming {
        None => {
            vmgenid::write_new_id(mem)?;
            match boot::probe(cfg)? {
                boot::Image::Kernel => {
                    let rsdp = acpi::write_tables(mem, cfg.vcpus, &nic_slots(cfg))?;
                    let entry = boot::load(mem, cfg, rsdp)?;
                    regs::write_boot_structures(mem, entry)?;
                    (Some(entry), None, host_cpuid)
                }
                boot::Image::Bios(image) => {
                    // vCPU 0 starts at the reset vector: no entry.
                    firmware = Some(firmware_setup(cfg, &vm, mem, &image)?);
                    (None, None, host_cpuid)
                }
            }
        }
        Some(mut inc) => {
            let missing = snapshot::missing_cpu_features(&inc.config.cpuid, host_cpuid.as_slice());
            if !missing.is_empty() {
                return Err(Error::Unavailable(format!(
                    "snapshot: this host's CPU lacks {}",
                    missing.join(" ")
                )));
            }
            let loaded = image::load(&mut inc.reader, mem, cfg.vcpus.into())
                .map_err(|e| Error::Snapshot(e.to_string()))?;
            if loaded.rtc.is_some() {
                // This guest may be one of many clones of the snapshot (a
                // version 3 one: older guests have no vmgenid page).
                vmgenid::write_new_id(mem)?;
            }
            let base = CpuId::from_entries(&inc.config.cpuid)
                .map_err(|e| Error::Snapshot(format!("CPUID: {e:?}")))?;
            (None, Some(loaded), base)
        }
    };
    if receiving {
        // The guest it continues may be on this host, ending now that the
        // stream is written: give it a moment to let go of its name and
        // its disks.
        control = patiently(bind)?;
    }
    if cfg.verbose {
        eprintln!(
            "vm-run: {} MiB, {} vCPUs, entry {entry:x?}",
            cfg.mem_size >> 20,
            cfg.vcpus
        );
    }

    let (reporter, ends) = outcome::channel_pair();
    let mut console = Console::open(cfg.console)?;
    let eventfd = || EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Os("eventfd".into(), e));
    let (com1_irq, room) = (eventfd()?, eventfd()?);
    vm.register_irqfd(&com1_irq, serial::COM1_IRQ)
        .map_err(|e| Error::Kvm("KVM_IRQFD".into(), e))?;
    let attached = Arc::new(Attached::default());
    let output = console
        .take_output(attached.clone())
        .ok_or_else(|| Error::Setup("console output taken twice".into()))?;
    let room_reader = room
        .try_clone()
        .map_err(|e| Error::Os("eventfd".into(), e))?;
    let com1 = match &loaded {
        None => serial::Serial::new(com1_irq, room, output),
        Some(l) => serial::Serial::from_state(com1_irq, room, output, &l.devices.serial)
            .ok_or_else(|| Error::Snapshot("UART state does not fit".into()))?,
    };
    let com1 = Arc::new(Mutex::new(com1));

    let mut pio = Bus::default();
    pio.insert(
        serial::COM1_BASE.into(),
        serial::PORT_LEN.into(),
        com1.clone(),
    );
    pio.insert(
        i8042::PORT_BASE.into(),
        i8042::PORT_LEN.into(),
        Arc::new(Mutex::new(i8042::I8042::new(reporter.clone()))),
    );
    let rtc_vm = vm.clone();
    let mut rtc = rtc::Rtc::new(
        cfg.mem_size,
        memory::low_ram_end(cfg.mem_size),
        Box::new(rtc::host_clock),
        Box::new(move || {
            let _ = irqchip::pulse(&rtc_vm, rtc::IRQ);
        }),
    );
    if let Some(s) = loaded.as_ref().and_then(|l| l.rtc.as_ref()) {
        rtc.set_state(s)
            .ok_or_else(|| Error::Snapshot("RTC state does not fit".into()))?;
    }
    let rtc = Arc::new(Mutex::new(rtc));
    pio.insert(rtc::PORT_BASE.into(), rtc::PORT_LEN.into(), rtc.clone());
    let sci_vm = vm.clone();
    let power = Arc::new(Mutex::new(acpi_pm::AcpiPm::new(
        reporter.clone(),
        Box::new(move |on| {
            // Fails only if the irqchip is gone, and then so is the guest.
            let _ = sci_vm.set_irq_line(acpi_pm::SCI_IRQ, on);
        }),
    )));
    pio.insert(
        acpi_pm::PORT_BASE.into(),
        acpi_pm::PORT_LEN.into(),
        power.clone(),
    );
    if let Some(fw) = firmware {
        pio.insert(
            fw_cfg::PORT_BASE.into(),
            fw_cfg::PORT_LEN.into(),
            Arc::new(Mutex::new(fw)),
        );
        pio.insert(
            debugcon::PORT.into(),
            debugcon::PORT_LEN.into(),
            Arc::new(Mutex::new(debugcon::Debugcon::new(cfg.verbose))),
        );
    }
    let mut mmio = Bus::default();
    let (pci, flushers) = if receiving {
        patiently(|| pci_devices(cfg, &vm, mem, &mut taps))?
    } else {
        pci_devices(cfg, &vm, mem, &mut taps)?
    };
    let flushers = Arc::new(flushers);
    let pci = Arc::new(Mutex::new(pci));
    let pci_root = pci.clone();
    // 0xcf9, inside the config ports, is the reset control register.
    pio.insert(
        root::CONFIG_PORT.into(),
        root::CONFIG_PORT_LEN.into(),
        Arc::new(Mutex::new(ResetControl::new(
            PioView(pci.clone()),
            reporter.clone(),
        ))),
    );
    let hp_vm = vm.clone();
    let hotplug = Arc::new(Mutex::new(Hotplug::new(
        pci.clone(),
        &nic_slots(cfg),
        Box::new(move || {
            let _ = irqchip::pulse(&hp_vm, hotplug::GSI);
        }),
    )));
    pio.insert(
        hotplug::PORT_BASE.into(),
        hotplug::PORT_LEN.into(),
        hotplug.clone(),
    );
    mmio.insert(
        PCI_MMIO_START,
        PCI_MMIO_END - PCI_MMIO_START,
        Arc::new(Mutex::new(MmioView(pci))),
    );
    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));

    if let Some(l) = &loaded {
        let mut d = Dec::new(Tag::Devices, &l.devices.pci);
        lock(&pci_root)
            .restore(&mut d)
            .and_then(|()| d.end())
            .map_err(|e| Error::Snapshot(e.to_string()))?;
        lock(&power).set_registers(l.devices.acpi_pm);
        l.vm.restore(&vm).map_err(Error::Snapshot)?;
    }
    let msr_index = kvm
        .get_msr_index_list()
        .map_err(|e| Error::Kvm("KVM_GET_MSR_INDEX_LIST".into(), e))?
        .as_slice()
        .to_vec();
    let pauser = Arc::new(Pauser::new(vm.clone(), cfg.vcpus.into(), msr_index));
    vcpu::install_kick_handler()?;
    let mut vcpus = Vec::with_capacity(cfg.vcpus.into());
    for id in 0..cfg.vcpus {
        let fd = vm
            .create_vcpu(id.into())
            .map_err(|e| Error::Kvm("KVM_CREATE_VCPU".into(), e))?;
        fd.set_cpuid2(&cpuid::for_vcpu(&base_cpuid, id, cfg.vcpus)?)
            .map_err(|e| Error::Kvm("KVM_SET_CPUID2".into(), e))?;
        msrs::setup(&fd)?;
        regs::setup_fpu(&fd)?;
        irqchip::setup_lapic(&fd)?;
        match (&loaded, entry) {
            (Some(l), _) => l.vcpus[usize::from(id)]
                .restore(&fd, mem)
                .map_err(|e| Error::Snapshot(format!("vcpu{id}: {e}")))?,
            (None, Some(entry)) if id == 0 => regs::setup_boot_vcpu(&fd, entry)?,
            _ => {}
        }
        vcpus.push(Vcpu {
            id,
            fd,
            pio: pio.clone(),
            mmio: mmio.clone(),
            reporter: reporter.clone(),
            pauser: pauser.clone(),
            verbose: cfg.verbose,
        });
    }

    // The devices go on, and may interrupt, once the vCPUs and the
    // irqchip hold their state.
    if loaded.is_some() {
        lock(&pci_root).quiesce(false);
    }
    if loaded.as_ref().is_some_and(|l| l.rtc.is_some()) {
        vmgenid::notify(&vm)?;
        lock(&rtc).resend_irq();
    }
    // A NIC to get a new MAC: the guest is asked to let go of it, and it
    // comes back new (pci/hotplug.rs).
    for (slot, nic) in nic_slots(cfg).into_iter().zip(&cfg.nics) {
        if nic.renew.is_some() {
            lock(&hotplug).replug(slot);
        }
    }
    // Everything is open and mapped: from here on the guest could be
    // hostile, so vm-run gives up what it no longer needs.
    let landlocked = sandbox::enter(rundir.as_deref())?;
    if cfg.verbose && !landlocked {
        eprintln!("vm-run: landlock is not (fully) available on this kernel");
    }
    signals::spawn_waiter(reporter.clone())?;
    let guest_config = GuestConfig {
        mem_size: cfg.mem_size,
        vcpus: cfg.vcpus,
        cpuid: base_cpuid.as_slice().to_vec(),
        disks: cfg
            .disks
            .iter()
            .map(|d| DiskRecord {
                path: d.path.display().to_string(),
                read_only: d.read_only,
                serial: d.serial.clone(),
            })
            .collect(),
        nics: (nic_macs(cfg).into_iter().zip(&cfg.nics))
            .map(|(mac, nic)| NicRecord {
                mac: nic.renew.unwrap_or(mac),
            })
            .collect(),
    };
    let skip_absent = !memory::host_swaps();
    let snap_vm = vm.clone();
    let (snap_pauser, snap_com1, snap_power) = (pauser.clone(), com1.clone(), power.clone());
    let snap_rtc = rtc.clone();
    let snap_flushers = flushers.clone();
    let snap_hotplug = hotplug.clone();
    let verbose = cfg.verbose;
    // `live`: the guest runs; memory goes in pre-copy rounds, and the
    // guest is paused only for the last of it (vm-send -l). Otherwise the
    // caller has paused it.
    let write_snapshot =
        move |out: &mut dyn Write, live: bool| -> std::result::Result<(), String> {
            let err = |e: std::io::Error| e.to_string();
            // CONF names the MACs the NICs have after their replug.
            if lock(&snap_hotplug).pending() {
                return Err("a NIC is being plugged back with a new MAC: try again".into());
            }
            let mut w = Writer::new(out).map_err(err)?;
            w.section(Tag::Config, &[&guest_config.encode()])
                .map_err(err)?;
            let log = if live {
                let (log, rest) = precopy(&mut w, &snap_vm, mem, skip_absent)?;
                snap_pauser.pause()?;
                Some((log, rest, std::time::Instant::now()))
            } else {
                None
            };
            let clock = snap_pauser.clock().ok_or("the guest is not paused")?;
            // The device threads stop after their current request, so that
            // queues and memory hold still; they go on afterwards in any case
            // (a guest that ends after the send does not mind).
            let mut pci = lock(&pci_root);
            pci.quiesce(true);
            let written = (|| {
                // The receiving vm-run reopens the disks: what vm-run caches
                // of a qcow2 image must be in the file first.
                flush_disks(&snap_flushers)?;
                let mut pci_state = Enc::default();
                pci.save(&mut pci_state);
                let snap = Snapshot {
                    devices: DeviceState {
                        serial: lock(&snap_com1).state(),
                        acpi_pm: lock(&snap_power).registers(),
                        pci: pci_state.0,
                    },
                    rtc: Some(lock(&snap_rtc).state()),
                    vcpus: snap_pauser.save_vcpus()?,
                    vm: VmState::save(&snap_vm, clock, snap_pauser.paused_at())?,
                };
                snap.write_state(&mut w).map_err(err)?;
                let last = match &log {
                    Some((log, rest, _)) => {
                        let mut last = log.take()?;
                        live::merge(&mut last, rest);
                        image::write_dirty(&mut w, mem, &last, true).map_err(err)?;
                        live::pages(&last)
                    }
                    None => {
                        image::write_memory(&mut w, mem, skip_absent, true).map_err(err)?;
                        0
                    }
                };
                w.finish().map_err(err)?;
                if let (Some((_, _, paused)), true) = (&log, verbose) {
                    // What a live migration is judged by (make bench reads it).
                    eprintln!(
                    "vm-run: migrated: paused {:.1} ms for the last {last} pages and the devices",
                    paused.elapsed().as_secs_f64() * 1000.0
                );
                }
                Ok(())
            })();
            pci.quiesce(false);
            written
        };
    if let (Some(c), Some(name)) = (control.as_mut(), &cfg.name) {
        c.serve(control::Guest {
            snapshot: Box::new(write_snapshot),
            name: name.clone(),
            vcpus: cfg.vcpus,
            mem,
            tty: console.tty().unwrap_or("-").to_string(),
            pauser: pauser.clone(),
            power,
            serial: com1.clone(),
            console: attached,
            reporter: reporter.clone(),
        })?;
    }
    console.spawn_input(com1, room_reader)?;
    rtc::spawn_ticker(rtc).map_err(|e| Error::Os("spawn rtc thread".into(), e))?;
    for v in vcpus {
        v.spawn()?;
    }
    // Every thread holds a reporter, so this waits until one reports.
    let outcome = ends
        .recv()
        .unwrap_or_else(|_| Outcome::Failed("every vCPU thread is gone".into()));
    pauser.stop_all();
    if let Err(e) = flush_disks(&flushers) {
        eprintln!("vm-run: {e}");
    }
    crate::console::restore_terminal();
    if let Some(c) = control {
        c.finish(outcome.exit_status());
        // Dropping it removes the socket.
    }
    // vCPU threads may still be in KVM_RUN: the process exit ends them.
    Ok(outcome)
}

/// Firmware boot: the BIOS mapped and the fw_cfg device that describes
/// this guest to it. The disks take the slots from 1 on (pci_devices);
/// the CD-ROM has none yet.
fn firmware_setup(
    cfg: &Config,
    vm: &VmFd,
    mem: &'static GuestMemory,
    image: &[u8],
) -> Result<fw_cfg::FwCfg> {
    let slots = boot::bios::BootSlots {
        disks: (1..=cfg.disks.len()).collect(),
        cdrom: None,
    };
    boot::bios::setup(cfg, vm, mem, image, &slots, &nic_slots(cfg))
}

/// Retries `f` while what it needs is held by another vm-run, for up to
/// five seconds.
fn patiently<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match f() {
            Err(Error::Locked(_) | Error::NameInUse(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            r => return r,
        }
    }
}

/// Pre-copy rounds that bound a live migration's final pause: at most
/// this many after the first, until a round finds at most `SMALL` pages.
const PRECOPY_ROUNDS: usize = 8;
const SMALL: usize = 256;

/// A live migration's pre-copy: all of memory while the guest runs, then
/// rounds of what it wrote meanwhile, until little is left. Returns the
/// log (still on) and the pages written since the last round sent.
fn precopy<'a, W: Write>(
    w: &mut Writer<W>,
    vm: &'a VmFd,
    mem: &'static GuestMemory,
    skip_absent: bool,
) -> std::result::Result<(live::DirtyLog<'a>, live::Dirty), String> {
    let err = |e: std::io::Error| e.to_string();
    let log = live::DirtyLog::start(vm, mem)?;
    image::write_memory(w, mem, skip_absent, false).map_err(err)?;
    for _ in 0..PRECOPY_ROUNDS {
        let dirty = log.take()?;
        if live::pages(&dirty) <= SMALL {
            return Ok((log, dirty));
        }
        image::write_dirty(w, mem, &dirty, false).map_err(err)?;
    }
    let dirty = log.take()?;
    Ok((log, dirty))
}

/// Writes out what vm-run caches of its qcow2 disks. The guest's own
/// flushes make its data durable; this keeps an image whose guest never
/// flushed (vm-run killed by a signal, a guest without flush) free of
/// leaked clusters.
fn flush_disks(flushers: &[disk::Flusher]) -> std::result::Result<(), String> {
    for f in flushers {
        f.flush()
            .map_err(|e| format!("{}: {}", f.path().display(), crate::error::strip_os(&e)))?;
    }
    Ok(())
}

/// The PCI slot of each NIC: after the disks, from slot 1 (pci_devices).
fn nic_slots(cfg: &Config) -> Vec<usize> {
    (0..cfg.nics.len())
        .map(|i| 1 + cfg.disks.len() + i)
        .collect()
}

/// The MAC of each NIC: the one asked for, or the guest's stable one.
fn nic_macs(cfg: &Config) -> Vec<[u8; 6]> {
    (cfg.nics.iter().enumerate())
        .map(|(i, nic)| {
            nic.lladdr
                .unwrap_or_else(|| net::default_mac(cfg.name.as_deref(), i))
        })
        .collect()
}

/// The PCI bus: the disks in the order given (vda, vdb, ...), then the
/// NICs, then the RNG, one slot each from slot 1; and the disks that need
/// a flush on exit. The taps are taken only once the disks are open, so
/// that a try that finds a disk still locked can be made again.
fn pci_devices(
    cfg: &Config,
    vm: &Arc<VmFd>,
    mem: &'static GuestMemory,
    taps: &mut Vec<Tap>,
) -> Result<(PciRoot, Vec<disk::Flusher>)> {
    let router = Arc::new(GsiRouter::new(vm.clone()));
    let mut pci = PciRoot::new(PCI_MMIO_START);
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    let mut flushers = Vec::new();
    for spec in &cfg.disks {
        let disk = disk::open(spec)?;
        flushers.extend(disk.flusher());
        devices.push(Box::new(Block::new(
            disk,
            spec.read_only,
            spec.serial.clone(),
        )));
    }
    for ((nic, tap), mac) in cfg.nics.iter().zip(taps.drain(..)).zip(nic_macs(cfg)) {
        let name = format!("virtio-net {}", tap.name());
        devices.push(Box::new(
            Net::new(Box::new(tap), name, mac, nic.lease.clone()).renew_mac(nic.renew),
        ));
    }
    devices.push(Box::<Rng>::default());
    for dev in devices {
        let slot = pci
            .free_slot()
            .ok_or_else(|| Error::Setup("out of PCI slots".into()))?;
        let at = Placement {
            bar0: (PCI_MMIO_START + slot as u64 * u64::from(BAR_SIZE)) as u32,
            gsi: root::intx_gsi(slot),
        };
        pci.insert(
            slot,
            Box::new(VirtioPci::new(dev, at, router.clone(), mem)?),
        );
    }
    router.install()?;
    Ok((pci, flushers))
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
