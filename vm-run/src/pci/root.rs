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
                (addr >= base && addr - base < len).then_some((b, addr - base))
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
