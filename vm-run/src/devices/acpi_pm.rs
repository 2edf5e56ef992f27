//! The ACPI PM1 event and control registers (fixed hardware), at the ports
//! the FADT names. A write of SLP_TYP=S5 with SLP_EN to PM1 control is the
//! guest powering off. The fixed-feature power button lives here too:
//! pressing it sets PWRBTN_STS, and the SCI is raised while a status bit
//! the guest enabled is set (a level interrupt, as on real chipsets).

use super::BusDevice;
use crate::outcome::{Outcome, Reporter};
use crate::snapshot::stream::{Dec, Enc, StreamError};

pub const PM1_EVT_BLK: u16 = 0x600;
pub const PM1_EVT_LEN: u8 = 4;
pub const PM1_CNT_BLK: u16 = 0x604;
pub const PM1_CNT_LEN: u8 = 2;
/// The SLP_TYP value for S5 (soft off), as \_S5 in the DSDT says.
pub const SLP_TYP_S5: u8 = 5;
/// The SCI is ISA IRQ 9 on PCs.
pub const SCI_IRQ: u32 = 9;

/// Both blocks as one device: status (2 bytes), enable (2), control (2).
pub const PORT_BASE: u16 = PM1_EVT_BLK;
pub const PORT_LEN: u16 = PM1_EVT_LEN as u16 + PM1_CNT_LEN as u16;

const OFF_STS: u64 = 0;
const OFF_EN: u64 = 2;
const OFF_CNT: u64 = 4;
const CNT_SCI_EN: u16 = 1;
const CNT_SLP_EN: u16 = 1 << 13;
const CNT_SLP_TYP_SHIFT: u16 = 10;
/// PWRBTN_STS in PM1 status, PWRBTN_EN in PM1 enable.
const PWRBTN: u16 = 1 << 8;

/// Drives the SCI line: true raises it, false lowers it.
pub type Sci = Box<dyn Fn(bool) + Send>;

/// The registers a snapshot keeps: status, enable, control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmState([u16; 3]);

pub struct AcpiPm {
    status: u16,
    enable: u16,
    control: u16,
    reporter: Reporter,
    sci: Sci,
    sci_level: bool,
}

impl AcpiPm {
    pub fn new(reporter: Reporter, sci: Sci) -> Self {
        AcpiPm {
            status: 0,
            enable: 0,
            // Already in ACPI mode: there is no SMI handshake to make.
            control: CNT_SCI_EN,
            reporter,
            sci,
            sci_level: false,
        }
    }

    /// Status, enable and control: the DEVS section's part after the UART.
    pub fn save(&self, e: &mut Enc) {
        e.u16(self.status).u16(self.enable).u16(self.control);
    }

    pub fn load(d: &mut Dec) -> Result<PmState, StreamError> {
        Ok(PmState([d.u16()?, d.u16()?, d.u16()?]))
    }

    /// Puts saved registers back; the SCI follows them.
    pub fn restore(&mut self, PmState([status, enable, control]): PmState) {
        (self.status, self.enable, self.control) = (status, enable, control);
        self.update_sci();
    }

    /// What vm-ctl stop does. The guest decides what the press means (a
    /// guest without a handler ignores it, as on a PC).
    pub fn press_power_button(&mut self) {
        self.status |= PWRBTN;
        self.update_sci();
    }

    fn update_sci(&mut self) {
        let level = self.status & self.enable != 0 && self.control & CNT_SCI_EN != 0;
        if level != self.sci_level {
            self.sci_level = level;
            (self.sci)(level);
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
        self.update_sci();
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
    use std::sync::{Arc, Mutex};

    fn pm() -> (
        AcpiPm,
        std::sync::mpsc::Receiver<Outcome>,
        Arc<Mutex<Vec<bool>>>,
    ) {
        let (r, rx) = channel_pair();
        let levels = Arc::new(Mutex::new(Vec::new()));
        let l = levels.clone();
        let pm = AcpiPm::new(r, Box::new(move |on| l.lock().unwrap().push(on)));
        (pm, rx, levels)
    }

    #[test]
    fn power_button_raises_sci_until_acknowledged() {
        let (mut pm, rx, levels) = pm();
        // Not enabled by the guest: status is set, the line stays low.
        pm.press_power_button();
        assert!(levels.lock().unwrap().is_empty());
        let mut sts = [0u8; 2];
        pm.read(OFF_STS, &mut sts);
        assert_eq!(u16::from_le_bytes(sts), PWRBTN);
        // The guest enables the event: the pending press raises the SCI.
        pm.write(OFF_EN, &PWRBTN.to_le_bytes());
        assert_eq!(*levels.lock().unwrap(), [true]);
        // Write-one-to-clear acknowledges it and lowers the line.
        pm.write(OFF_STS, &PWRBTN.to_le_bytes());
        assert_eq!(*levels.lock().unwrap(), [true, false]);
        pm.press_power_button();
        assert_eq!(*levels.lock().unwrap(), [true, false, true]);
        assert!(rx.try_recv().is_err(), "a press is not a power-off");
    }

    #[test]
    fn s5_powers_off() {
        let (mut pm, rx, _) = pm();
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
        let (mut pm, _rx, _) = pm();
        pm.status = 0x0101;
        pm.write(OFF_STS, &[0x01, 0x00]);
        assert_eq!(pm.status, 0x0100);
        pm.write(OFF_EN, &[0xff, 0x00]);
        assert_eq!(pm.enable, 0xff);
    }

    #[test]
    fn save_and_restore_round_trip() {
        let (mut old, _rx, levels) = pm();
        old.write(OFF_EN, &PWRBTN.to_le_bytes());
        old.press_power_button();
        let mut e = Enc::default();
        old.save(&mut e);
        let (mut fresh, _rx2, fresh_levels) = pm();
        let mut d = Dec::new(crate::snapshot::stream::Tag::Devices, &e.0);
        fresh.restore(AcpiPm::load(&mut d).unwrap());
        d.end().unwrap();
        let regs = |p: &AcpiPm| [p.status, p.enable, p.control];
        assert_eq!(regs(&fresh), regs(&old));
        assert_eq!(*levels.lock().unwrap(), [true]);
        assert_eq!(
            *fresh_levels.lock().unwrap(),
            [true],
            "a pending SCI is raised again"
        );
    }
}
