//! KVM's in-kernel interrupt controllers (PIC, IOAPIC, LAPICs) and PIT:
//! they are faster than anything in user space and save no state we would
//! have to keep ourselves. The PIT only for guests that need one: KVM
//! takes 15 to 20 ms to tear it down at exit (docs/BENCHMARKS.md,
//! "Start-up and exit").

use kvm_bindings::{kvm_pit_config, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{VcpuFd, VmFd};

use crate::error::{Error, Result};
use crate::memory::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

pub fn create(vm: &VmFd) -> Result<()> {
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(|e| Error::Kvm("KVM_SET_IDENTITY_MAP_ADDR".into(), e))?;
    vm.set_tss_address(KVM_TSS_ADDR)
        .map_err(|e| Error::Kvm("KVM_SET_TSS_ADDR".into(), e))?;
    vm.create_irq_chip()
        .map_err(|e| Error::Kvm("KVM_CREATE_IRQCHIP".into(), e))
}

/// The i8254 PIT, after the irqchip (its IRQ 0 goes there). SeaBIOS
/// counts time with it; Linux on KVM does not (kvmclock gives it the TSC's
/// rate, the LAPIC's TSC-deadline mode its timer), nor does the tiny
/// guest.
pub fn create_pit(vm: &VmFd) -> std::result::Result<(), kvm_ioctls::Error> {
    // The dummy speaker port keeps port 0x61 in the kernel as well.
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
}

/// Wires LINT0 to the PIC (ExtINT) and LINT1 to NMI, as a PC's firmware
/// leaves them, so the guest gets PIC interrupts before it sets up the
/// IOAPIC.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| Error::Kvm("KVM_GET_LAPIC".into(), e))?;
    let set_mode = |regs: &mut [std::os::raw::c_char], offset: usize, mode: u32| {
        let mut b = [0u8; 4];
        for (i, x) in b.iter_mut().enumerate() {
            *x = regs[offset + i] as u8;
        }
        let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
        for (i, x) in v.to_le_bytes().iter().enumerate() {
            regs[offset + i] = *x as std::os::raw::c_char;
        }
    };
    set_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
        .map_err(|e| Error::Kvm("KVM_SET_LAPIC".into(), e))
}
