//! Just enough of the PS/2 controller (i8042) for a guest to reset the
//! machine through it: command 0xFE on port 0x64 pulses the reset line.
//! There is no keyboard behind it; the status register says so by never
//! having output ready.

use super::BusDevice;
use crate::outcome::{Outcome, Reporter};

/// Data port 0x60 and command/status port 0x64, as one range.
pub const PORT_BASE: u16 = 0x60;
pub const PORT_LEN: u16 = 5;
const OFF_COMMAND: u64 = 4;
const CMD_RESET: u8 = 0xfe;

pub struct I8042 {
    reporter: Reporter,
}

impl I8042 {
    pub fn new(reporter: Reporter) -> Self {
        I8042 { reporter }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: input buffer empty (commands are accepted at once),
        // output buffer empty (nothing to read).
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == OFF_COMMAND && data.first() == Some(&CMD_RESET) {
            self.reporter.report(Outcome::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::channel_pair;

    #[test]
    fn reset_command() {
        let (r, rx) = channel_pair();
        let mut k = I8042::new(r);
        k.write(0, &[CMD_RESET]);
        assert!(
            rx.try_recv().is_err(),
            "0xfe on the data port is not a reset"
        );
        k.write(OFF_COMMAND, &[CMD_RESET]);
        assert_eq!(rx.try_recv(), Ok(Outcome::Reset));
    }
}
