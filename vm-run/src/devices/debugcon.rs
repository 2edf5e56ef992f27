//! QEMU's debug console at port 0x402, where Debian's SeaBIOS prints its
//! log. SeaBIOS writes there only if a read gives back 0xe9. The log goes
//! to stderr under -v and is dropped otherwise: it is the firmware's,
//! not the guest's console.

use std::io::Write;

use super::BusDevice;

pub const PORT: u16 = 0x402;
pub const PORT_LEN: u16 = 1;
/// What QEMU's debugcon answers, so the firmware knows it is there.
const READBACK: u8 = 0xe9;

pub struct Debugcon {
    verbose: bool,
}

impl Debugcon {
    pub fn new(verbose: bool) -> Self {
        Debugcon { verbose }
    }
}

impl BusDevice for Debugcon {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(READBACK);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if self.verbose {
            // A log line lost to a closed stderr is no reason to stop.
            let _ = std::io::stderr().write_all(data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_the_signature() {
        let mut d = Debugcon::new(false);
        let mut b = [0u8];
        d.read(0, &mut b);
        assert_eq!(b[0], READBACK);
        d.write(0, b"dropped");
    }
}
