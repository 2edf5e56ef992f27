//! The machine a guest sees, as one value: the legacy devices on the port
//! bus, the PCI root with its functions, the buses the vCPUs dispatch
//! their exits to, and the disks to flush. `Board::build` makes it the
//! same way for a guest that boots and for one that is received, as vmd
//! builds its devices in one place whether it boots or restores; what
//! differs is only where the state comes from (`snapshot.rs`).
//!
//! Adding a device: a field here, a line in `build`, its description in
//! `acpi.rs`, its state in `snapshot.rs` (save and restore in one order).

pub mod acpi;
pub mod snapshot;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::{fmt, io};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::boot::bios;
use crate::bus::Bus;
use crate::config::Config;
use crate::devices::reset_control::ResetControl;
use crate::devices::serial::{self, Output, Serial};
use crate::devices::{acpi_pm, debugcon, fw_cfg, i8042, rtc, BusDevice};
use crate::disk;
use crate::error::{Error, Result};
use crate::irq::{self, GsiRouter};
use crate::memory::{self, GuestMemory, PCI_MMIO_END, PCI_MMIO_START};
use crate::nic::tap::Tap;
use crate::outcome::Reporter;
use crate::pci::hotplug::{self, Hotplug};
use crate::pci::root::{self, MmioView, PciRoot, PioView};
use crate::snapshot::stream::{Dec, Tag};
use crate::snapshot::GuestConfig;
use crate::vcpu::Pauser;
use crate::virtio::net::{self, Net};
use crate::virtio::pci::{Placement, VirtioPci, BAR_SIZE};
use crate::virtio::{block::Block, rng::Rng, scsi::Scsi, VirtioDevice};
use snapshot::Saved;

pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the board is plugged into on the host side: the outcome channel,
/// the console, the disks (opened by `open_disks`) and the taps vm-net
/// handed over.
pub struct Plugs {
    pub media: Media,
    pub reporter: Reporter,
    /// Where COM1's output goes.
    pub console: Output,
    /// Signalled when the guest drains COM1's receive FIFO.
    pub room: EventFd,
    pub taps: Vec<Tap>,
}

pub struct Board {
    pub vm: Arc<VmFd>,
    pub mem: &'static GuestMemory,
    pub com1: Arc<Mutex<Serial>>,
    pub rtc: Arc<Mutex<rtc::Rtc>>,
    pub pm: Arc<Mutex<acpi_pm::AcpiPm>>,
    pub i8042: Arc<Mutex<i8042::I8042>>,
    pub hotplug: Arc<Mutex<Hotplug>>,
    pub pci: Arc<Mutex<PciRoot>>,
    /// What the vCPUs' port I/O and MMIO exits go to.
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    /// The qcow2 disks, whose cached metadata goes to the file on exit and
    /// before a snapshot.
    pub flushers: Vec<disk::Flusher>,
    /// The PCI slots of the NICs, which ACPI hotplug may replug.
    pub nic_slots: Vec<usize>,
    /// The CD-ROM's PCI slot (-r), after the NICs.
    pub cdrom_slot: Option<usize>,
    /// A BIOS boot's fw_cfg (`boot_firmware`), and the BIOS image, which
    /// a snapshot carries (the receiver maps it again).
    pub fw_cfg: Option<Arc<Mutex<fw_cfg::FwCfg>>>,
    rom: Option<Vec<u8>>,
    /// Parks and resumes the vCPUs, and has them give their state.
    pub pauser: Arc<Pauser>,
    /// What a stream's CONF says of this guest.
    pub conf: GuestConfig,
    /// Whether a snapshot leaves out pages the host never gave the guest
    /// (only where the host does not swap: mincore cannot see swap).
    skip_absent: bool,
    verbose: bool,
}

impl Board {
    /// Builds every device, in the state `saved` holds or at power-on.
    /// A device that can interrupt is given its line here (`irq`), so
    /// none of them reaches for the irqchip itself. The disks are opened
    /// here, after the stream has been read whole.
    pub fn build(
        cfg: &Config,
        vm: &Arc<VmFd>,
        mem: &'static GuestMemory,
        pauser: Arc<Pauser>,
        conf: GuestConfig,
        plugs: Plugs,
        saved: Option<&Saved>,
    ) -> Result<Board> {
        let Plugs {
            media,
            reporter,
            console,
            room,
            taps,
        } = plugs;
        let com1_irq =
            EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Os("eventfd".into(), e))?;
        vm.register_irqfd(&com1_irq, serial::COM1_IRQ)
            .map_err(|e| Error::Kvm("KVM_IRQFD".into(), e))?;
        let com1 = match saved {
            None => Serial::new(com1_irq, room, console),
            Some(s) => Serial::from_state(com1_irq, room, console, &s.serial),
        };
        let i8042 = i8042::I8042::new(reporter.clone());
        let resets = reporter.clone();
        let rtc_vm = vm.clone();
        let mut rtc = rtc::Rtc::new(
            cfg.mem_size,
            memory::low_ram_end(cfg.mem_size),
            Box::new(rtc::host_clock),
            Box::new(move || {
                let _ = irq::pulse(&rtc_vm, rtc::IRQ);
            }),
        );
        if let Some(state) = saved.and_then(|s| s.rtc.as_ref()) {
            rtc.restore(state);
        }
        let sci_vm = vm.clone();
        let mut pm = acpi_pm::AcpiPm::new(
            reporter,
            Box::new(move |on| {
                // Fails only if the irqchip is gone, and then so is the guest.
                let _ = sci_vm.set_irq_line(acpi_pm::SCI_IRQ, on);
            }),
        );
        if let Some(s) = saved {
            pm.restore(s.pm);
        }
        let nic_slots = nic_slots(cfg);
        let flushers = media.disks.iter().filter_map(|d| d.flusher()).collect();
        let cdrom_slot = media
            .cdrom
            .as_ref()
            .map(|_| nic_slots.len() + cfg.disks.len() + 1);
        let pci = pci_functions(cfg, vm, mem, media, taps, saved)?;
        let pci = Arc::new(Mutex::new(pci));
        let hp_vm = vm.clone();
        let hotplug = Hotplug::new(
            pci.clone(),
            &nic_slots,
            Box::new(move || {
                let _ = irq::pulse(&hp_vm, hotplug::GSI);
            }),
        );

        let board = Board {
            vm: vm.clone(),
            mem,
            com1: Arc::new(Mutex::new(com1)),
            rtc: Arc::new(Mutex::new(rtc)),
            pm: Arc::new(Mutex::new(pm)),
            i8042: Arc::new(Mutex::new(i8042)),
            hotplug: Arc::new(Mutex::new(hotplug)),
            pci,
            pio: Arc::default(),
            mmio: Arc::default(),
            flushers,
            nic_slots,
            cdrom_slot,
            fw_cfg: None,
            rom: None,
            pauser,
            conf,
            skip_absent: !memory::host_swaps(),
            verbose: cfg.verbose,
        };
        Ok(board.wire(resets))
    }

    /// Puts every device on its bus, at the addresses the ACPI tables
    /// (acpi.rs) give the guest. `resets` hears of a reset through 0xcf9.
    fn wire(mut self, resets: Reporter) -> Board {
        fn on(bus: &mut Bus, base: u16, len: u16, dev: Arc<Mutex<impl BusDevice + 'static>>) {
            bus.insert(base.into(), len.into(), dev);
        }
        let mut pio = Bus::default();
        on(
            &mut pio,
            serial::COM1_BASE,
            serial::PORT_LEN,
            self.com1.clone(),
        );
        on(
            &mut pio,
            i8042::PORT_BASE,
            i8042::PORT_LEN,
            self.i8042.clone(),
        );
        on(&mut pio, rtc::PORT_BASE, rtc::PORT_LEN, self.rtc.clone());
        on(
            &mut pio,
            acpi_pm::PORT_BASE,
            acpi_pm::PORT_LEN,
            self.pm.clone(),
        );
        // 0xcf9, inside the config ports, is the reset control register.
        let config = ResetControl::new(PioView(self.pci.clone()), resets);
        on(
            &mut pio,
            root::CONFIG_PORT,
            root::CONFIG_PORT_LEN,
            Arc::new(Mutex::new(config)),
        );
        on(
            &mut pio,
            hotplug::PORT_BASE,
            hotplug::PORT_LEN,
            self.hotplug.clone(),
        );
        let mut mmio = Bus::default();
        mmio.insert(
            PCI_MMIO_START,
            PCI_MMIO_END - PCI_MMIO_START,
            Arc::new(Mutex::new(MmioView(self.pci.clone()))),
        );
        (self.pio, self.mmio) = (Arc::new(pio), Arc::new(mmio));
        self
    }

    /// Boots `image`, a BIOS, rather than a kernel: maps it, and adds the
    /// fw_cfg device that describes this board to it and SeaBIOS's debug
    /// port. Before any vCPU exists (the buses are still the board's own).
    pub fn boot_firmware(&mut self, cfg: &Config, image: &[u8]) -> Result<()> {
        bios::map(&self.vm, self.mem, image, true)?;
        self.add_fw_cfg(cfg, image)
    }

    /// The firmware's devices on the port bus, fw_cfg describing this
    /// board; the image is kept for a snapshot.
    fn add_fw_cfg(&mut self, cfg: &Config, image: &[u8]) -> Result<()> {
        let slots = bios::BootSlots {
            disks: (1..=cfg.disks.len()).collect(),
            cdrom: self.cdrom_slot,
        };
        let mut fw = bios::fw_cfg(cfg, self.mem, &slots)?;
        // The machine the BIOS hands on is the one a kernel booted
        // directly sees: the same tables, installed by the BIOS.
        let t = acpi::firmware_tables(cfg.vcpus, &self.nic_slots);
        fw.add_file(acpi::FILE_TABLES, t.tables);
        fw.add_file(acpi::FILE_RSDP, t.rsdp);
        fw.add_file(acpi::FILE_LOADER, t.loader);
        let fw = Arc::new(Mutex::new(fw));
        let pio = Arc::get_mut(&mut self.pio)
            .ok_or_else(|| Error::Setup("the port bus is already in use".into()))?;
        pio.insert(
            fw_cfg::PORT_BASE.into(),
            fw_cfg::PORT_LEN.into(),
            fw.clone(),
        );
        pio.insert(
            debugcon::PORT.into(),
            debugcon::PORT_LEN.into(),
            Arc::new(Mutex::new(debugcon::Debugcon::new(self.verbose))),
        );
        self.fw_cfg = Some(fw);
        self.rom = Some(image.to_vec());
        self.conf.firmware = true;
        Ok(())
    }

    /// A received BIOS-booted guest's firmware: the ROM mapped again (the
    /// copy below 1 MiB came with memory) and fw_cfg as the guest left it.
    pub fn restore_firmware(&mut self, cfg: &Config, image: &[u8], fw_state: &[u8]) -> Result<()> {
        bios::map(&self.vm, self.mem, image, false)?;
        self.add_fw_cfg(cfg, image)?;
        if let Some(fw) = &self.fw_cfg {
            let mut d = Dec::new(Tag::FwCfg, fw_state);
            lock(fw)
                .restore(&mut d)
                .and_then(|()| d.end())
                .map_err(|e| Error::Snapshot(e.to_string()))?;
        }
        Ok(())
    }

    /// Writes out what vm-run caches of its qcow2 disks. The guest's own
    /// flushes make its data durable; this keeps an image whose guest
    /// never flushed (vm-run killed by a signal, a guest without flush)
    /// free of leaked clusters.
    pub fn flush_disks(&self) -> std::result::Result<(), FlushError> {
        self.flushers
            .iter()
            .try_for_each(|f| f.flush().map_err(|e| FlushError(f.path().to_path_buf(), e)))
    }
}

/// A qcow2 disk whose cached metadata could not be written out.
#[derive(Debug)]
pub struct FlushError(pub PathBuf, pub io::Error);

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.0.display(),
            crate::error::strip_os(&self.1)
        )
    }
}

/// The guest's images, opened and locked before the board is built.
pub struct Media {
    pub disks: Vec<Box<dyn disk::Disk>>,
    pub cdrom: Option<Scsi>,
}

/// The disks in the order given and the CD-ROM, each locked; an image
/// another vm-run still holds is `Error::Locked`, which a receiver waits
/// out.
pub fn open_media(cfg: &Config) -> Result<Media> {
    Ok(Media {
        disks: cfg.disks.iter().map(disk::open).collect::<Result<_>>()?,
        cdrom: cfg.cdrom.as_deref().map(Scsi::open).transpose()?,
    })
}

/// The PCI slot of each NIC: after the disks, from slot 1 (pci_functions).
fn nic_slots(cfg: &Config) -> Vec<usize> {
    (0..cfg.nics.len())
        .map(|i| 1 + cfg.disks.len() + i)
        .collect()
}

/// The MAC of each NIC: the one asked for, or the guest's stable one.
pub fn nic_macs(cfg: &Config) -> Vec<[u8; 6]> {
    (cfg.nics.iter().enumerate())
        .map(|(i, nic)| {
            nic.lladdr
                .unwrap_or_else(|| net::default_mac(cfg.name.as_deref(), i))
        })
        .collect()
}

/// The PCI bus: the disks in the order given (vda, vdb, ...), then the
/// NICs, then the CD-ROM, then the RNG, one slot each from slot 1.
fn pci_functions(
    cfg: &Config,
    vm: &Arc<VmFd>,
    mem: &'static GuestMemory,
    media: Media,
    taps: Vec<Tap>,
    saved: Option<&Saved>,
) -> Result<PciRoot> {
    let router = Arc::new(GsiRouter::new(vm.clone()));
    let mut pci = PciRoot::new(PCI_MMIO_START);
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for (i, (disk, spec)) in media.disks.into_iter().zip(&cfg.disks).enumerate() {
        // A restored guest's driver set up as many queues as the stream
        // says (disks take the slots from 1, as in nic_slots).
        let queues = match saved {
            Some(s) => s
                .device_state(1 + i)
                .and_then(Block::saved_queues)
                .map_err(|e| Error::Snapshot(e.to_string()))?,
            None => spec.queues.unwrap_or(u16::from(cfg.vcpus)),
        };
        devices.push(Box::new(Block::new(
            disk,
            spec.read_only,
            spec.serial.clone(),
            queues,
        )));
    }
    for ((nic, tap), mac) in cfg.nics.iter().zip(taps).zip(nic_macs(cfg)) {
        let name = format!("virtio-net {}", tap.name());
        devices.push(Box::new(
            Net::new(Box::new(tap), name, mac, nic.lease.clone()).renew_mac(nic.renew),
        ));
    }
    if let Some(cdrom) = media.cdrom {
        devices.push(Box::new(cdrom));
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
    Ok(pci)
}
