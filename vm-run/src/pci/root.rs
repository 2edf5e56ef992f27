//! The root bus: a host bridge at 00:00.0, configuration mechanism #1
//! (the address at 0xCF8, the data at 0xCFC) that Linux finds without
//! ECAM, and the window of guest physical addresses where the functions'
//! memory BARs live. Only bus 0 and function 0 of each slot exist.

use crate::devices::BusDevice;
use crate::snapshot::stream::{Dec, Enc, StreamError};

use super::{BarMove, ConfigSpace, PciDevice};

pub const CONFIG_PORT: u16 = 0xcf8;
pub const CONFIG_PORT_LEN: u16 = 8;
pub const SLOTS: usize = 32;
const ENABLE: u32 = 1 << 31;

/// The IOAPIC pin for a slot's INTA#: pins 16-23 are free of ISA
/// devices, so PCI interrupts share a pin only beyond eight slots.
pub fn intx_gsi(slot: usize) -> u32 {
    16 + (slot % 8) as u32
}

struct HostBridge(ConfigSpace);

impl PciDevice for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.0
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.0
    }
    fn bar_read(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
}

pub struct PciRoot {
    slots: Vec<Option<Box<dyn PciDevice>>>,
    address: u32,
    /// Guest physical base of the BAR window: the MMIO bus hands us
    /// offsets into it.
    window_base: u64,
}

impl PciRoot {
    pub fn new(window_base: u64) -> Self {
        let mut slots: Vec<Option<Box<dyn PciDevice>>> = (0..SLOTS).map(|_| None).collect();
        // Red Hat's ID for a generic host bridge: Linux applies no quirks
        // to it, and its sanity check wants a host bridge class.
        let bridge = ConfigSpace::new(0x1b36, 0x0008, (0x06, 0x00, 0x00), 0);
        slots[0] = Some(Box::new(HostBridge(bridge)));
        PciRoot {
            slots,
            address: 0,
            window_base,
        }
    }

    /// Every function's threads stopped (true) or started again (false).
    pub fn quiesce(&mut self, stop: bool) {
        for d in self.slots.iter_mut().flatten() {
            if stop {
                d.quiesce()
            } else {
                d.resume()
            }
        }
    }

    /// The bus for a snapshot: the config address latch, then each
    /// function's state by slot.
    pub fn save(&self, e: &mut Enc) {
        e.u32(self.address);
        let present: Vec<_> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|d| (i, d)))
            .collect();
        e.u8(present.len() as u8);
        for (slot, d) in present {
            e.u8(slot as u8);
            d.save(e);
        }
    }

    /// Puts back a snapshot's bus onto one built with the same functions.
    pub fn restore(&mut self, d: &mut Dec) -> std::result::Result<(), StreamError> {
        self.address = d.u32()?;
        let n = d.u8()?;
        let present = self.slots.iter().filter(|s| s.is_some()).count();
        if usize::from(n) != present {
            return Err(d.bad(format!("{n} PCI functions, this guest has {present}")));
        }
        for _ in 0..n {
            let slot = usize::from(d.u8()?);
            let Some(Some(dev)) = self.slots.get_mut(slot) else {
                return Err(d.bad(format!("no PCI function in slot {slot}")));
            };
            dev.restore(d)?;
        }
        Ok(())
    }

    /// The devices' own state (PCIX), for the functions that keep any:
    /// by slot, each as bytes.
    pub fn save_devices(&self, e: &mut Enc) {
        let states: Vec<(usize, Vec<u8>)> = (self.slots.iter().enumerate())
            .filter_map(|(i, s)| {
                let mut own = Enc::default();
                s.as_ref()?.save_device(&mut own);
                (!own.0.is_empty()).then_some((i, own.0))
            })
            .collect();
        e.u8(states.len() as u8);
        for (slot, state) in states {
            e.u8(slot as u8).bytes(&state);
        }
    }

    pub fn restore_devices(&mut self, d: &mut Dec) -> std::result::Result<(), StreamError> {
        for _ in 0..d.u8()? {
            let slot = usize::from(d.u8()?);
            let state = d.bytes()?;
            let Some(Some(dev)) = self.slots.get_mut(slot) else {
                return Err(d.bad(format!("no PCI function in slot {slot}")));
            };
            let mut own = Dec::new(crate::snapshot::stream::Tag::PciDevices, state);
            dev.restore_device(&mut own)?;
            own.end()?;
        }
        Ok(())
    }

    /// Puts the function in `slot` back as new (the guest ejected it).
    pub fn replug(&mut self, slot: usize) {
        if let Some(Some(d)) = self.slots.get_mut(slot) {
            d.replug();
        }
    }

    /// The next free slot, or None when all 32 are taken.
    pub fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(Option::is_none)
    }

    pub fn insert(&mut self, slot: usize, dev: Box<dyn PciDevice>) {
        debug_assert!(self.slots[slot].is_none());
        self.slots[slot] = Some(dev);
    }

    /// The function the address register selects, and the register offset.
    fn selected(&mut self) -> Option<(&mut Box<dyn PciDevice>, usize)> {
        let a = self.address;
        let (bus, slot, func) = ((a >> 16) & 0xff, (a >> 11) & 0x1f, (a >> 8) & 7);
        if a & ENABLE == 0 || bus != 0 || func != 0 {
            return None;
        }
        let dev = self.slots.get_mut(slot as usize)?.as_mut()?;
        Some((dev, (a & 0xfc) as usize))
    }

    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        match self.selected() {
            Some((dev, reg)) => dev.config_read(reg + offset, data),
            None => data.fill(0xff),
        }
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        let Some((dev, reg)) = self.selected() else {
            return;
        };
        let at = reg + offset;
        let before: Vec<_> = (0..6).map(|b| dev.config().bar_range(b)).collect();
        dev.config_mut().write(at, data);
        let moved: Vec<BarMove> = (0..6)
            .filter_map(|bar| {
                let (old, new) = (before[bar], dev.config().bar_range(bar));
                (old != new).then_some(BarMove {
                    bar,
                    old: old.map(|r| r.0),
                    new: new.map(|r| r.0),
                })
            })
            .collect();
        dev.config_written(at, data.len(), &moved);
    }

    /// The device and BAR that decode guest physical `addr`.
    fn decoder(&mut self, addr: u64) -> Option<(&mut Box<dyn PciDevice>, usize, u64)> {
        self.slots.iter_mut().flatten().find_map(|dev| {
            let bar = (0..6).find_map(|b| {
                let (base, len) = dev.config().bar_range(b)?;
                let off = addr.checked_sub(base)?;
                (off < len).then_some((b, off))
            })?;
            Some((dev, bar.0, bar.1))
        })
    }
}

impl PciRoot {
    pub fn io_read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0..=3 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => self.config_read(offset as usize - 4, data),
            _ => data.fill(0xff),
        }
    }

    pub fn io_write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            // Only a dword write sets the address: Linux's type 1 probe
            // writes a byte to 0xCFB first and expects it ignored.
            0 if data.len() == 4 => {
                self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]])
            }
            4..=7 => self.config_write(offset as usize - 4, data),
            _ => {}
        }
    }

    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        let addr = self.window_base + offset;
        match self.decoder(addr) {
            Some((dev, bar, off)) => dev.bar_read(bar, off, data),
            None => data.fill(0xff),
        }
    }

    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        let addr = self.window_base + offset;
        if let Some((dev, bar, off)) = self.decoder(addr) {
            dev.bar_write(bar, off, data);
        }
    }
}

/// The root on the port bus (config mechanism #1).
pub struct PioView(pub std::sync::Arc<std::sync::Mutex<PciRoot>>);
/// The root on the MMIO bus (the BAR window).
pub struct MmioView(pub std::sync::Arc<std::sync::Mutex<PciRoot>>);

fn lock(r: &std::sync::Mutex<PciRoot>) -> std::sync::MutexGuard<'_, PciRoot> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

impl BusDevice for PioView {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).io_read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).io_write(offset, data)
    }
}

impl BusDevice for MmioView {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).mmio_read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).mmio_write(offset, data)
    }
}

/// What the fuzz target `pci` runs: a guest's config cycles (0xCF8 and
/// 0xCFC-0xCFF) and BAR window accesses, against the host bridge and,
/// where /dev/kvm opens (its irqfds and ioeventfds need a VM), a
/// virtio-rng function in slot 1 with its BAR 0 at the window's base:
/// BAR sizing and moves, capabilities, MSI-X, the virtio configuration
/// access window, the common configuration. Each access is 8 bytes: a
/// kind (bits 0-1: port write, port read, window write, window read;
/// bits 2-3: width 1, 2 or 4), 3 bytes of offset (the port's low 3 bits,
/// or into the window), 4 of data.
#[cfg(any(test, fuzzing))]
pub mod fuzz {
    use std::cell::RefCell;
    use std::sync::{Arc, OnceLock};

    use vm_memory::GuestAddress;

    use super::*;
    use crate::irq::GsiRouter;
    use crate::memory::GuestMemory;
    use crate::virtio::pci::{Placement, VirtioPci};
    use crate::virtio::rng::Rng;

    pub const WINDOW: u64 = 0xc000_0000;

    pub fn accesses(data: &[u8]) {
        run(data);
    }

    /// Inputs a VM serves before a fresh one: closing a VM takes KVM
    /// some 16 ms, which one per input would make most of the run.
    const VM_USES: u32 = 64;

    thread_local! {
        static VM: RefCell<Option<(Arc<kvm_ioctls::VmFd>, u32)>> = const { RefCell::new(None) };
    }

    /// A VM with an irqchip, one per thread, renewed every VM_USES inputs
    /// so that whatever an input leaves registered does not pile up.
    fn vm() -> Option<Arc<kvm_ioctls::VmFd>> {
        VM.with_borrow_mut(|slot| {
            if slot.as_ref().is_none_or(|(_, uses)| *uses >= VM_USES) {
                *slot = None;
                let vm = kvm_ioctls::Kvm::new().ok()?.create_vm().ok()?;
                vm.create_irq_chip().ok()?;
                *slot = Some((Arc::new(vm), 0));
            }
            let (vm, uses) = slot.as_mut()?;
            *uses += 1;
            Some(vm.clone())
        })
    }

    /// The function in slot 1, with a GSI routing table of its own.
    fn virtio_rng() -> Option<VirtioPci> {
        static MEM: OnceLock<GuestMemory> = OnceLock::new();
        let mem = MEM.get_or_init(|| {
            GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)])
                .expect("1 MiB of anonymous memory")
        });
        let router = Arc::new(GsiRouter::new(vm()?));
        let at = Placement {
            bar0: WINDOW as u32,
            gsi: intx_gsi(1),
        };
        VirtioPci::new(Box::<Rng>::default(), at, router, mem).ok()
    }

    /// Runs the accesses; returns what each read gave.
    fn run(data: &[u8]) -> Vec<u32> {
        let mut root = PciRoot::new(WINDOW);
        if let Some(f) = virtio_rng() {
            root.insert(1, Box::new(f));
        }
        let mut reads = Vec::new();
        for op in data.chunks_exact(8) {
            let width = 1 << ((op[0] >> 2) % 3);
            let offset = u64::from(u32::from_le_bytes([op[1], op[2], op[3], 0]));
            let value = &op[4..4 + width];
            let mut buf = [0u8; 4];
            match op[0] & 3 {
                0 => root.io_write(offset % 8, value),
                1 => root.io_read(offset % 8, &mut buf[..width]),
                2 => root.mmio_write(offset, value),
                _ => root.mmio_read(offset, &mut buf[..width]),
            }
            if op[0] & 1 != 0 {
                reads.push(u32::from_le_bytes(buf));
            }
        }
        // Memory decoding off takes the function's kicks off the VM (its
        // ioeventfds), for the next input; then its threads stop.
        root.io_write(
            0,
            &(ENABLE | 1 << 11 | crate::pci::COMMAND as u32).to_le_bytes(),
        );
        root.io_write(4, &[0, 0]);
        root.quiesce(true);
        reads
    }

    /// Config cycles: the address of `slot`'s register `reg`, then a
    /// read or write of `width` bytes at `reg`'s low bits.
    fn config(slot: u32, reg: u32, write: Option<u32>, width: usize) -> Vec<u8> {
        let addr = 1u32 << 31 | slot << 11 | (reg & 0xfc);
        let mut v = vec![0b1000, 0, 0, 0];
        v.extend_from_slice(&addr.to_le_bytes());
        let w = match width {
            1 => 0,
            2 => 1,
            _ => 2,
        };
        v.extend_from_slice(&[
            w << 2 | u8::from(write.is_none()),
            4 + (reg & 3) as u8,
            0,
            0,
        ]);
        v.extend_from_slice(&write.unwrap_or(0).to_le_bytes());
        v
    }

    /// A BAR window access at `offset`.
    fn window(offset: u32, write: Option<u32>, width: usize) -> Vec<u8> {
        let w = match width {
            1 => 0,
            2 => 1,
            _ => 2,
        };
        let mut v = vec![w << 2 | if write.is_some() { 2 } else { 3 }];
        v.extend_from_slice(&offset.to_le_bytes()[..3]);
        v.extend_from_slice(&write.unwrap_or(0).to_le_bytes());
        v
    }

    const MSIX_CAP: u32 = 0x84;
    const PCI_CFG_CAP: u32 = 0x90;

    /// The seeds of vm-run/fuzz/corpus/pci: what Linux and SeaBIOS do
    /// to the bus, and the reads the test below checks.
    pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        let c = config;
        let enable = [c(1, 0x04, Some(0x0406), 2)].concat();
        vec![
            (
                "probe",
                [
                    c(0, 0, None, 4),
                    c(1, 0, None, 4),
                    c(5, 0, None, 4),
                    c(1, 0x0a, None, 2),
                ]
                .concat(),
            ),
            (
                "size_bar0",
                [
                    c(1, 0x10, Some(u32::MAX), 4),
                    c(1, 0x10, None, 4),
                    c(1, 0x10, Some(WINDOW as u32), 4),
                ]
                .concat(),
            ),
            (
                "capabilities",
                [
                    c(1, 0x06, None, 2),
                    c(1, 0x34, None, 1),
                    c(1, MSIX_CAP, None, 1),
                    c(1, PCI_CFG_CAP, None, 1),
                ]
                .concat(),
            ),
            (
                "virtio_init",
                [
                    enable.clone(),
                    window(0x14, Some(3), 1),
                    window(0x08, Some(1), 4),
                    window(0x0c, Some(1), 4),
                    window(0x14, Some(11), 1),
                    window(0x14, None, 1),
                    window(0x16, Some(0), 2),
                    window(0x18, None, 2),
                ]
                .concat(),
            ),
            (
                "move_bar0",
                [
                    enable.clone(),
                    c(1, 0x10, Some(WINDOW as u32 + 0x10_0000), 4),
                    window(0x10_0014, None, 1),
                    window(0x14, None, 1),
                ]
                .concat(),
            ),
            (
                "msix_enable",
                [
                    enable.clone(),
                    c(1, MSIX_CAP + 2, Some(0x8000), 2),
                    window(0x4000, Some(0xfee0_0000), 4),
                    window(0x4008, Some(0x41), 4),
                    window(0x400c, Some(0), 4),
                    c(1, MSIX_CAP + 2, None, 2),
                ]
                .concat(),
            ),
            (
                "pci_cfg_access",
                [
                    enable.clone(),
                    c(1, PCI_CFG_CAP + 4, Some(0), 1),
                    c(1, PCI_CFG_CAP + 8, Some(0x14), 4),
                    c(1, PCI_CFG_CAP + 12, Some(1), 4),
                    c(1, PCI_CFG_CAP + 16, Some(1), 1),
                    window(0x14, None, 1),
                ]
                .concat(),
            ),
            (
                "byte_address_write",
                // Linux's type 1 probe: a byte at 0xCFB sets no address.
                [
                    vec![0, 3, 0, 0, 0x80, 0, 0, 0],
                    vec![0b0101, 4, 0, 0, 0, 0, 0, 0],
                ]
                .concat(),
            ),
        ]
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::virtio::fuzz::support;

        #[test]
        fn seeds_read_as_intended() {
            let have_kvm = virtio_rng().is_some();
            for (name, data) in seeds() {
                let reads = run(&data);
                let want: Vec<u32> = match name {
                    "probe" if have_kvm => vec![0x0008_1b36, 0x1044_1af4, u32::MAX, 0xff00],
                    "probe" => vec![0x0008_1b36, u32::MAX, u32::MAX, 0xffff],
                    "size_bar0" if have_kvm => vec![!(crate::virtio::pci::BAR_SIZE - 1)],
                    "capabilities" if have_kvm => vec![0x10, 0x40, 0x11, 0x09],
                    // ACKNOWLEDGE | DRIVER | FEATURES_OK; queue 0 of 1024.
                    "virtio_init" => vec![11, 64],
                    // The function answers at its new place only.
                    "move_bar0" => vec![0, 0xff],
                    "msix_enable" => vec![0x8001],
                    // The window's write of 1 reached the status.
                    "pci_cfg_access" => vec![1],
                    "byte_address_write" => vec![0xffff],
                    _ => continue,
                };
                if have_kvm || name == "probe" || name == "byte_address_write" {
                    assert_eq!(reads, want, "{name}");
                }
            }
        }

        /// Found by the fuzzer: an access below a BAR's base underflowed
        /// (a panic wherever overflow checks are on).
        #[test]
        fn an_access_below_a_bar_is_nobody_s() {
            struct Bars(ConfigSpace);
            impl PciDevice for Bars {
                fn config(&self) -> &ConfigSpace {
                    &self.0
                }
                fn config_mut(&mut self) -> &mut ConfigSpace {
                    &mut self.0
                }
                fn bar_read(&mut self, _: usize, _: u64, data: &mut [u8]) {
                    data.fill(0x5a);
                }
                fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
            }
            let mut c = ConfigSpace::new(0x1af4, 0x1044, (0xff, 0, 0), 0);
            c.set_bar(0, WINDOW as u32 + 0x10_0000, 0x1000);
            c.set_u16(crate::pci::COMMAND, crate::pci::COMMAND_MEMORY);
            let mut root = PciRoot::new(WINDOW);
            root.insert(1, Box::new(Bars(c)));
            let mut b = [0u8; 4];
            root.mmio_read(0x10, &mut b);
            assert_eq!(b, [0xff; 4]);
            root.mmio_read(0x10_0010, &mut b);
            assert_eq!(b, [0x5a; 4]);
        }

        #[test]
        fn random_guests_do_not_crash_the_pci_bus() {
            for data in support::inputs(0x3c6e_f372_fe94_f82b, 200, 512, &seeds()) {
                accesses(&data);
            }
        }

        #[test]
        fn pci_corpus_is_current() {
            support::corpus_is_current("pci", &seeds());
        }

        #[test]
        #[ignore]
        fn write_seeds() {
            support::write_corpus("pci", &seeds());
        }
    }
}
