//! Conventional PCI: the configuration space every function carries, and
//! the trait a device on our bus implements. The bus itself (host bridge,
//! 0xCF8/0xCFC, BAR dispatch) is in root.rs, MSI-X in msix.rs.

pub mod hotplug;
pub mod msix;
pub mod root;

use crate::snapshot::stream::{Dec, Enc, StreamError};

/// Type 0 header registers.
pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION: usize = 0x08;
pub const CLASS_PROG: usize = 0x09;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYS_VENDOR_ID: usize = 0x2c;
pub const SUBSYS_ID: usize = 0x2e;
pub const CAP_PTR: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;

pub const COMMAND_MEMORY: u16 = 1 << 1;
const STATUS_CAP_LIST: u16 = 1 << 4;
const CONFIG_SIZE: usize = 256;
const FIRST_CAP: usize = 0x40;
const BARS: usize = 6;

/// A function's 256-byte configuration space, with a mask of the bits the
/// guest may change: everything else reads back what the device put there.
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    writable: [u8; CONFIG_SIZE],
    /// Sizes of the 32-bit memory BARs; 0 where there is none.
    bar_size: [u32; BARS],
    next_cap: usize,
    last_cap: Option<usize>,
}

impl ConfigSpace {
    /// A type 0 header. `class` is (class, subclass, prog-if).
    pub fn new(vendor: u16, device: u16, class: (u8, u8, u8), revision: u8) -> Self {
        let mut c = ConfigSpace {
            bytes: [0; CONFIG_SIZE],
            writable: [0; CONFIG_SIZE],
            bar_size: [0; BARS],
            next_cap: FIRST_CAP,
            last_cap: None,
        };
        c.set_u16(VENDOR_ID, vendor);
        c.set_u16(DEVICE_ID, device);
        c.bytes[REVISION] = revision;
        c.bytes[CLASS_PROG] = class.2;
        c.bytes[CLASS_PROG + 1] = class.1;
        c.bytes[CLASS_PROG + 2] = class.0;
        // I/O and memory decoding, bus mastering, INTx disable.
        c.writable[COMMAND..COMMAND + 2].copy_from_slice(&0x0407u16.to_le_bytes());
        c.writable[INTERRUPT_LINE] = 0xff;
        c
    }

    pub fn set_subsystem(&mut self, vendor: u16, id: u16) {
        self.set_u16(SUBSYS_VENDOR_ID, vendor);
        self.set_u16(SUBSYS_ID, id);
    }

    /// INTA#, routed to `line` (the GSI the ACPI _PRT names for the slot).
    pub fn set_interrupt(&mut self, line: u8) {
        self.bytes[INTERRUPT_PIN] = 1;
        self.bytes[INTERRUPT_LINE] = line;
    }

    /// A 32-bit non-prefetchable memory BAR of `size` (a power of two of
    /// at least 16 bytes) at `addr`, naturally aligned.
    pub fn set_bar(&mut self, bar: usize, addr: u32, size: u32) {
        debug_assert!(size.is_power_of_two() && size >= 16 && addr.is_multiple_of(size));
        self.bar_size[bar] = size;
        let reg = BAR0 + 4 * bar;
        self.set_u32(reg, addr);
        // The low bits are the type (0: 32-bit memory), and the size shows
        // as the address bits that do not stick when written with ones.
        self.writable[reg..reg + 4].copy_from_slice(&(!(size - 1)).to_le_bytes());
    }

    /// Where memory BAR `bar` is now, if it exists and decoding is on.
    pub fn bar_range(&self, bar: usize) -> Option<(u64, u64)> {
        let size = *self.bar_size.get(bar)?;
        if size == 0 || self.u16_at(COMMAND) & COMMAND_MEMORY == 0 {
            return None;
        }
        let addr = self.u32_at(BAR0 + 4 * bar) & !(size - 1);
        Some((addr.into(), size.into()))
    }

    /// Appends a capability whose body (after the ID and next pointer) is
    /// `body`, with `writable` masking its body bytes; returns its offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> usize {
        let at = self.next_cap;
        let len = 2 + body.len();
        debug_assert!(at + len <= CONFIG_SIZE && writable.len() <= body.len());
        self.bytes[at] = id;
        self.bytes[at + 2..at + len].copy_from_slice(body);
        self.writable[at + 2..at + 2 + writable.len()].copy_from_slice(writable);
        match self.last_cap {
            Some(prev) => self.bytes[prev + 1] = at as u8,
            None => {
                self.bytes[CAP_PTR] = at as u8;
                let status = self.u16_at(STATUS) | STATUS_CAP_LIST;
                self.set_u16(STATUS, status);
            }
        }
        self.last_cap = Some(at);
        self.next_cap = (at + len + 3) & !3;
        at
    }

    /// A config read of 1, 2 or 4 bytes; out of range reads as ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.bytes.get(offset + i).copied().unwrap_or(0xff);
        }
    }

    /// A config write, bit by bit through the mask.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = offset + i;
            if at >= CONFIG_SIZE {
                break;
            }
            let mask = self.writable[at];
            self.bytes[at] = (self.bytes[at] & !mask) | (b & mask);
        }
    }

    /// The whole configuration space, for a snapshot.
    pub fn raw(&self) -> &[u8] {
        &self.bytes
    }

    /// Puts back a snapshot's configuration space: only into a function
    /// of the same vendor, device and size.
    pub fn set_raw(&mut self, b: &[u8]) -> std::result::Result<(), String> {
        if b.len() != CONFIG_SIZE || b[..4] != self.bytes[..4] {
            return Err("a different PCI function".into());
        }
        self.bytes.copy_from_slice(b);
        Ok(())
    }

    pub fn u16_at(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    pub fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ])
    }

    pub fn set_u16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    pub fn set_u32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
}

/// A PCI function on the root bus.
pub trait PciDevice: Send {
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;
    /// A config read; devices with registers that read through to
    /// something else override it.
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data)
    }
    /// The guest wrote `len` bytes of config space at `offset`; `moved`
    /// lists the memory BARs whose placement changed as (bar, old, new).
    fn config_written(&mut self, _offset: usize, _len: usize, _moved: &[BarMove]) {}
    /// An access to memory BAR `bar` at `offset` into it.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// Stops the function's own threads, so that its state holds still
    /// while a snapshot is taken; `resume` starts them again.
    fn quiesce(&mut self) {}
    fn resume(&mut self) {}
    /// The guest ejected the function (hotplug.rs): it is to look as if
    /// just plugged in, power-on state and the device's next identity.
    fn replug(&mut self) {}
    /// The function's state for a snapshot (while quiesced): by default
    /// its configuration space.
    fn save(&self, e: &mut Enc) {
        e.bytes(self.config().raw());
    }
    fn restore(&mut self, d: &mut Dec) -> std::result::Result<(), StreamError> {
        let b = d.bytes()?;
        self.config_mut().set_raw(b).map_err(|e| d.bad(e))
    }
    /// What the device behind the function keeps beyond `save`'s (a
    /// stream's PCIX section, version 5); nothing by default.
    fn save_device(&self, _e: &mut Enc) {}
    fn restore_device(&mut self, _d: &mut Dec) -> std::result::Result<(), StreamError> {
        Ok(())
    }
}

/// A BAR that the guest placed elsewhere or switched on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMove {
    pub bar: usize,
    pub old: Option<u64>,
    pub new: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(c: &ConfigSpace, at: usize) -> u32 {
        let mut b = [0; 4];
        c.read(at, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut c = ConfigSpace::new(0x1af4, 0x1042, (1, 0, 0), 1);
        c.set_bar(0, 0xc000_0000, 0x8000);
        c.write(BAR0, &u32::MAX.to_le_bytes());
        assert_eq!(read32(&c, BAR0), 0xffff_8000);
        c.write(BAR0, &0xc001_0000u32.to_le_bytes());
        assert_eq!(c.bar_range(0), None, "decoding is off");
        c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(c.bar_range(0), Some((0xc001_0000, 0x8000)));
        // Unimplemented BARs stay zero, read-only registers stay put.
        c.write(BAR0 + 4, &u32::MAX.to_le_bytes());
        assert_eq!(read32(&c, BAR0 + 4), 0);
        c.write(VENDOR_ID, &[0, 0]);
        assert_eq!(c.u16_at(VENDOR_ID), 0x1af4);
    }

    #[test]
    fn capabilities_are_chained() {
        let mut c = ConfigSpace::new(1, 2, (0xff, 0, 0), 0);
        let a = c.add_capability(0x09, &[1, 2, 3], &[]);
        let b = c.add_capability(0x11, &[0; 10], &[0, 0xc0]);
        assert_eq!((a, b), (0x40, 0x48));
        assert_eq!(c.bytes[CAP_PTR] as usize, a);
        assert_eq!(c.bytes[a + 1] as usize, b);
        assert_eq!(c.bytes[b + 1], 0);
        assert_ne!(c.u16_at(STATUS) & STATUS_CAP_LIST, 0);
        c.write(b + 2, &[0xff, 0xff]);
        assert_eq!(c.u16_at(b + 2), 0xc000);
        let mut out = [0; 4];
        c.read(0xfe, &mut out);
        assert_eq!(out, [0, 0, 0xff, 0xff]);
    }
}
