//! The reset control register at port 0xcf9 (Intel's PIIX and ICH):
//! setting bit 2 resets the machine. SeaBIOS reboots through it (after a
//! failed boot, or for a guest's int 0x19), and its fallback, a triple
//! fault by int3, is not something every KVM emulates. The port lies
//! inside the PCI configuration ports 0xcf8-0xcff, so this wraps the PCI
//! root's device there: a byte written at 0xcf9 is ours, anything else
//! is the root's.

use super::BusDevice;
use crate::outcome::{Outcome, Reporter};

/// 0xcf9 as an offset from the PCI configuration ports at 0xcf8.
const OFF_RCR: u64 = 1;
/// RST_CPU: the reset itself (SYS_RST, bit 1, only picks its kind).
const RST_CPU: u8 = 1 << 2;

pub struct ResetControl<D> {
    inner: D,
    reporter: Reporter,
}

impl<D: BusDevice> ResetControl<D> {
    pub fn new(inner: D, reporter: Reporter) -> Self {
        ResetControl { inner, reporter }
    }
}

impl<D: BusDevice> BusDevice for ResetControl<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.inner.read(offset, data)
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (OFF_RCR, [v]) => {
                if v & RST_CPU != 0 {
                    self.reporter.report(Outcome::Reset);
                }
            }
            _ => self.inner.write(offset, data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::channel_pair;

    #[derive(Default)]
    struct Latch(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Latch {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(0x11);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn bit_2_at_0xcf9_resets_and_the_rest_goes_through() {
        let (r, rx) = channel_pair();
        let mut d = ResetControl::new(Latch::default(), r);
        // The PCI config address, a dword at 0xcf8, is not a reset.
        d.write(0, &0x8000_0000u32.to_le_bytes());
        d.write(OFF_RCR, &[0x02]);
        assert!(rx.try_recv().is_err());
        assert_eq!(d.inner.0, [(0, 0x8000_0000u32.to_le_bytes().to_vec())]);
        d.write(OFF_RCR, &[0x06]);
        assert_eq!(rx.try_recv(), Ok(Outcome::Reset));
        let mut b = [0u8; 4];
        d.read(4, &mut b);
        assert_eq!(b, [0x11; 4]);
    }
}
