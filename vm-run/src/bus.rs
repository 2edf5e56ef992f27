//! Port I/O and MMIO dispatch: an address goes to the device whose range
//! holds it, with the offset into that range. Reads of nothing give all
//! ones, as an ISA bus with no device does; writes to nothing are dropped.

use std::sync::{Arc, Mutex};

use crate::devices::BusDevice;

pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Default)]
pub struct Bus {
    /// Sorted by base; ranges do not overlap.
    ranges: Vec<(u64, u64, SharedDevice)>,
}

impl Bus {
    /// Adds a device on [base, base + len). Overlaps are a programming
    /// error in the fixed board layout, caught by the tests.
    pub fn insert(&mut self, base: u64, len: u64, dev: SharedDevice) {
        debug_assert!(!self
            .ranges
            .iter()
            .any(|(b, l, _)| base < b + l && *b < base + len));
        let at = self.ranges.partition_point(|(b, _, _)| *b < base);
        self.ranges.insert(at, (base, len, dev));
    }

    fn find(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let i = self.ranges.partition_point(|(b, _, _)| *b <= addr);
        let (base, len, dev) = self.ranges.get(i.checked_sub(1)?)?;
        (addr - base < *len).then_some((dev, addr - base))
    }

    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((dev, off)) => lock(dev).read(off, data),
            None => data.fill(0xff),
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some((dev, off)) = self.find(addr) {
            lock(dev).write(off, data);
        }
    }
}

/// A device whose lock was poisoned panicked mid-access; with
/// panic=abort that cannot happen, so take the lock regardless.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn dispatch_by_range() {
        let mut bus = Bus::default();
        bus.insert(0x3f8, 8, Arc::new(Mutex::new(Echo(10))));
        bus.insert(0x60, 5, Arc::new(Mutex::new(Echo(20))));
        let mut b = [0u8];
        bus.read(0x3f9, &mut b);
        assert_eq!(b[0], 11);
        bus.read(0x64, &mut b);
        assert_eq!(b[0], 24);
        bus.read(0x65, &mut b);
        assert_eq!(b[0], 0xff);
        bus.read(0x3f7, &mut b);
        assert_eq!(b[0], 0xff);
        bus.write(0x60, &[1]);
        bus.read(0x60, &mut b);
        assert_eq!(b[0], 1);
    }
}
