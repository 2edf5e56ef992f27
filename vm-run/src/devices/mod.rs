//! Emulated devices, one per file. A device answers reads and writes at
//! offsets into its own range of ports (or MMIO), and raises interrupts or
//! reports the end of the run through handles given to it; it knows nothing
//! of vCPUs.

pub mod acpi_pm;
pub mod debugcon;
pub mod fw_cfg;
pub mod i8042;
pub mod reset_control;
pub mod rtc;
pub mod serial;
pub mod vmgenid;

/// A device on the port I/O or MMIO bus.
pub trait BusDevice: Send {
    /// Fills `data` from the register at `offset` within the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` to the register at `offset` within the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}
