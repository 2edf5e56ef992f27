//! The ACPI PM1 event and control registers (fixed hardware), at the ports
//! the FADT names. A write of SLP_TYP=S5 with SLP_EN to PM1 control is the
//! guest powering off.

use super::BusDevice;
use crate::outcome::{Outcome, Reporter};

pub const PM1_EVT_BLK: u16 = 0x600;
pub const PM1_EVT_LEN: u8 = 4;
pub const PM1_CNT_BLK: u16 = 0x604;
pub const PM1_CNT_LEN: u8 = 2;
/// The SLP_TYP value for S5 (soft off), as \_S5 in the DSDT says.
pub const SLP_TYP_S5: u8 = 5;

/// Both blocks as one device: status (2 bytes), enable (2), control (2).
pub const PORT_BASE: u16 = PM1_EVT_BLK;
pub const PORT_LEN: u16 = PM1_EVT_LEN as u16 + PM1_CNT_LEN as u16;

const OFF_STS: u64 = 0;
const OFF_EN: u64 = 2;
const OFF_CNT: u64 = 4;
const CNT_SCI_EN: u16 = 1;
const CNT_SLP_EN: u16 = 1 << 13;
const CNT_SLP_TYP_SHIFT: u16 = 10;

pub struct AcpiPm {
    status: u16,
    enable: u16,
    control: u16,
    reporter: Reporter,
}

impl AcpiPm {
    pub fn new(reporter: Reporter) -> Self {
        AcpiPm {
            status: 0,
            enable: 0,
            // Already in ACPI mode: there is no SMI handshake to make.
            control: CNT_SCI_EN,
            reporter,
        }
    }

    fn register(&mut self, offset: u64) -> Option<(&mut u16, u64)> {
        match offset {
            OFF_STS..=1 => Some((&mut self.status, offset - OFF_STS)),
            OFF_EN..=3 => Some((&mut self.enable, offset - OFF_EN)),
            OFF_CNT..=5 => Some((&mut self.control, offset - OFF_CNT)),
            _ => None,
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match self.register(offset + i as u64) {
                Some((reg, byte)) => reg.to_le_bytes()[byte as usize],
                None => 0,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let off = offset + i as u64;
            let Some((reg, byte)) = self.register(off) else {
                continue;
            };
            let mut bytes = reg.to_le_bytes();
            if off < OFF_EN {
                // Status bits are cleared by writing ones.
                bytes[byte as usize] &= !*b;
            } else {
                bytes[byte as usize] = *b;
            }
            *reg = u16::from_le_bytes(bytes);
        }
        if offset + data.len() as u64 > OFF_CNT && self.control & CNT_SLP_EN != 0 {
            let typ = (self.control >> CNT_SLP_TYP_SHIFT) & 7;
            self.control &= !CNT_SLP_EN;
            if typ == u16::from(SLP_TYP_S5) {
                self.reporter.report(Outcome::PowerOff);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::channel_pair;

    #[test]
    fn s5_powers_off() {
        let (r, rx) = channel_pair();
        let mut pm = AcpiPm::new(r);
        let mut cnt = [0u8; 2];
        pm.read(OFF_CNT, &mut cnt);
        assert_eq!(u16::from_le_bytes(cnt) & CNT_SCI_EN, CNT_SCI_EN);
        // Sleep type S3 with SLP_EN: not a power-off.
        pm.write(OFF_CNT, &((3 << 10) | CNT_SLP_EN).to_le_bytes());
        assert!(rx.try_recv().is_err());
        pm.write(
            OFF_CNT,
            &((5 << 10) | CNT_SLP_EN | CNT_SCI_EN).to_le_bytes(),
        );
        assert_eq!(rx.try_recv(), Ok(Outcome::PowerOff));
    }

    #[test]
    fn status_is_write_one_to_clear() {
        let (r, _rx) = channel_pair();
        let mut pm = AcpiPm::new(r);
        pm.status = 0x0101;
        pm.write(OFF_STS, &[0x01, 0x00]);
        assert_eq!(pm.status, 0x0100);
        pm.write(OFF_EN, &[0xff, 0x00]);
        assert_eq!(pm.enable, 0xff);
    }
}
