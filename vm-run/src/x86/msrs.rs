//! The MSRs Linux expects a boot loader to have left in a known state.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

use crate::error::{Error, Result};

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_TSC: u32 = 0x10;
const MISC_ENABLE_FAST_STRING: u64 = 1;

pub fn setup(vcpu: &VcpuFd) -> Result<()> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        // Every vCPU's TSC written at once: KVM then keeps them in step,
        // and the guest does not find them unsynchronized and distrust
        // its TSC.
        (MSR_IA32_TSC, 0),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs =
        Msrs::from_entries(&entries).map_err(|e| Error::Setup(format!("MSR list: {e:?}")))?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|e| Error::Kvm("KVM_SET_MSRS".into(), e))?;
    if set != entries.len() {
        // KVM stops at the first MSR it refuses.
        let msr = entries.get(set).map_or(0, |e| e.index);
        return Err(Error::Setup(format!("KVM_SET_MSRS: MSR {msr:#x} refused")));
    }
    Ok(())
}
