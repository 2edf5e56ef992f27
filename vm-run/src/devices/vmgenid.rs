//! The ACPI Virtual Machine Generation ID (Microsoft's "vmgenid", as QEMU
//! and Firecracker offer it): 16 random bytes in guest memory that change
//! whenever the guest may have been duplicated, so that it reseeds its
//! RNG (Linux's drivers/virt/vmgenid.c: "crng reseeded due to virtual
//! machine fork") and drops what must not be shared between clones.
//!
//! The DSDT describes the ID as the device `\_SB.VGEN` (_CID
//! "VM_Gen_Counter", which Linux matches once ACPICA uppercases it, and
//! Windows by the same name in _DDN) whose `ADDR` package holds its guest
//! physical address. The change is announced with Notify(VGEN, 0x80) from
//! a Generic Event Device (ACPI0013, Linux's evged.c): an edge on its
//! interrupt makes the kernel run `_EVT`, so no register or SCI handshake
//! is needed. vm-run writes a new ID at boot and on every vm-receive, before
//! any vCPU runs, then pulses that interrupt.

use acpi_tables::aml::{Device, Name, Package};
use acpi_tables::Aml;
use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress};

use crate::error::{Error, Result};
use crate::memory::{GuestMemory, VMGENID_ADDR};

/// The ID's size (the spec's 128-bit GUID).
pub const ID_LEN: usize = 16;
/// The GED's interrupt: an ISA IRQ no PC device takes (10 and 11 are the
/// free ones), edge-triggered and active high as ISA IRQs are by default,
/// so the MADT needs no override for it.
pub const GSI: u32 = 11;
/// ACPI's "device-specific" notification, which the vmgenid drivers wait for.
pub const NOTIFY_CHANGED: u8 = 0x80;

/// The device, for the DSDT's `\_SB` scope (the GED that notifies it is
/// acpi.rs's).
pub fn aml() -> Vec<u8> {
    let (hid, cid) = (
        Name::new("_HID".into(), &"VMRUNGID"),
        Name::new("_CID".into(), &"VM_Gen_Counter"),
    );
    let ddn = Name::new("_DDN".into(), &"VM_Gen_Counter");
    let (lo, hi) = (VMGENID_ADDR as u32, (VMGENID_ADDR >> 32) as u32);
    let addr = Name::new("ADDR".into(), &Package::new(vec![&lo, &hi]));
    let mut out = Vec::new();
    Device::new("VGEN".into(), vec![&hid, &cid, &ddn, &addr]).to_aml_bytes(&mut out);
    out
}

/// Writes a fresh random ID where `ADDR` says it is; returns it.
pub fn write_new_id(mem: &GuestMemory) -> Result<[u8; ID_LEN]> {
    let mut id = [0u8; ID_LEN];
    // The system call, as virtio/rng.rs makes it: a call to libc's
    // wrapper jumped to address 0 in the static musl build.
    // SAFETY: getrandom writes at most ID_LEN bytes into id.
    let n = unsafe { libc::syscall(libc::SYS_getrandom, id.as_mut_ptr(), ID_LEN, 0) };
    if n != ID_LEN as libc::c_long {
        return Err(Error::Os(
            "getrandom (vmgenid)".into(),
            std::io::Error::last_os_error(),
        ));
    }
    mem.write_slice(&id, GuestAddress(VMGENID_ADDR))
        .map_err(|e| Error::Setup(format!("vmgenid at {VMGENID_ADDR:#x}: {e}")))?;
    Ok(id)
}

/// Tells the guest its ID changed: an edge on the GED's interrupt. Only
/// once the vCPUs' LAPICs are restored, or their state would wipe it.
pub fn notify(vm: &VmFd) -> Result<()> {
    crate::irq::pulse(vm, GSI).map_err(|e| Error::Kvm("KVM_IRQ_LINE (vmgenid)".into(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn aml_names_what_linux_looks_for() {
        let a = aml();
        let has = |s: &[u8]| a.windows(s.len()).any(|w| w == s);
        assert!(has(b"VM_Gen_Counter\0") && has(b"ADDR"));
        // ADDR: a package of two integers, the low half (a DWORD) and the
        // high one (zero).
        assert!(has(b"ADDR\x12"), "{a:x?}");
        let mut addr = vec![0x02, 0x0c];
        addr.extend_from_slice(&(VMGENID_ADDR as u32).to_le_bytes());
        addr.push(0x00);
        assert!(has(&addr), "{a:x?}");
    }

    #[test]
    fn each_id_is_new() {
        let mem: GuestMemory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let a = write_new_id(&mem).unwrap();
        let mut seen = [0u8; ID_LEN];
        mem.read_slice(&mut seen, GuestAddress(VMGENID_ADDR))
            .unwrap();
        assert_eq!(a, seen);
        assert_ne!(write_new_id(&mem).unwrap(), a);
    }
}
