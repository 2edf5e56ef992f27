//! The state KVM keeps for a guest, taken from a paused one and put back
//! into a new one: each vCPU's (registers, LAPIC, MSRs, pending events)
//! and the VM's (irqchip, PIT, kvmclock). The snapshot stream carries it
//! as VCPU and VMST sections (docs/SNAPSHOT.md).

use std::mem::size_of;

use kvm_bindings::KVM_MAX_MSR_ENTRIES;
use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress};

use crate::clock::realtime_ns;
use crate::error::KvmError;
use crate::memory::GuestMemory;
use crate::snapshot::stream::{Dec, Enc, StreamError, Tag};

/// Plain C structs from kvm-bindings: integers and arrays of integers,
/// for which every bit pattern is a valid value.
///
/// # Safety
/// Only for such types.
unsafe trait Pod: Default {}
// SAFETY: bindgen structs of integers, unions of integers and arrays.
unsafe impl Pod for kvm_regs {}
// SAFETY: as above.
unsafe impl Pod for kvm_sregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_xsave {}
// SAFETY: as above.
unsafe impl Pod for kvm_xcrs {}
// SAFETY: as above.
unsafe impl Pod for kvm_debugregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_lapic_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_mp_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_vcpu_events {}
// SAFETY: as above.
unsafe impl Pod for kvm_irqchip {}
// SAFETY: as above.
unsafe impl Pod for kvm_pit_state2 {}
// SAFETY: as above.
unsafe impl Pod for kvm_clock_data {}

fn as_bytes<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: T is Pod: size_of::<T>() initialised bytes at v.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

fn from_bytes<T: Pod>(d: &Dec, b: &[u8], what: &str) -> Result<T, StreamError> {
    if b.len() != size_of::<T>() {
        return Err(d.bad(format!(
            "{what}: {} bytes, this host's KVM has {}",
            b.len(),
            size_of::<T>()
        )));
    }
    let mut v = T::default();
    // SAFETY: T is Pod, so any bytes are a valid T; the lengths match.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), b.len()) };
    Ok(v)
}

/// What failed while taking or putting back KVM's state.
#[derive(Debug)]
pub enum StateError {
    Kvm(KvmError),
    /// More MSRs than KVM's list type holds.
    Msrs(usize),
    /// This host's KVM refuses an MSR the guest had.
    MsrRefused(u32),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            StateError::Kvm(e) => write!(f, "{e}"),
            StateError::Msrs(n) => write!(f, "{n} MSRs: more than KVM takes"),
            StateError::MsrRefused(idx) => {
                write!(f, "KVM_SET_MSRS: this host refuses MSR {idx:#x}")
            }
        }
    }
}

pub type StateResult<T> = std::result::Result<T, StateError>;

fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> StateError {
    move |e| StateError::Kvm(KvmError(what, e))
}

/// One vCPU, in the order KVM wants it put back (Firecracker's order:
/// MP state and registers first, then the APIC, MSRs and pending events).
pub struct VcpuState {
    mp_state: kvm_mp_state,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    debugregs: kvm_debugregs,
    lapic: kvm_lapic_state,
    msrs: Vec<kvm_msr_entry>,
    events: kvm_vcpu_events,
}

impl VcpuState {
    /// `msr_index` is KVM's list of MSRs to save; those this vCPU cannot
    /// read are left out.
    pub fn save(fd: &VcpuFd, msr_index: &[u32]) -> StateResult<VcpuState> {
        Ok(VcpuState {
            mp_state: fd.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?,
            regs: fd.get_regs().map_err(kvm("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            xsave: fd.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?,
            xcrs: fd.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
            debugregs: fd.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?,
            lapic: fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
            msrs: read_msrs(fd, msr_index)?,
            events: fd.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
        })
    }

    /// Puts the state back on `fd`; `mem` is the guest's memory, already
    /// restored.
    pub fn restore(&self, fd: &VcpuFd, mem: &GuestMemory) -> StateResult<()> {
        self.drop_pv_eoi_hint(mem);
        fd.set_mp_state(self.mp_state)
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        fd.set_regs(&self.regs).map_err(kvm("KVM_SET_REGS"))?;
        fd.set_sregs(&self.sregs).map_err(kvm("KVM_SET_SREGS"))?;
        // SAFETY: kvm_xsave is the legacy 4 KiB area this vCPU gave.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&self.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&self.debugregs)
            .map_err(kvm("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&self.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        let msrs = Msrs::from_entries(&self.msrs).map_err(|_| StateError::Msrs(self.msrs.len()))?;
        let n = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if n != self.msrs.len() {
            let idx = self.msrs.get(n).map_or(0, |m| m.index);
            return Err(StateError::MsrRefused(idx));
        }
        fd.set_vcpu_events(&self.events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }

    /// KVM's paravirtual EOI: when KVM injects an interrupt it may set a
    /// flag in guest memory that lets the guest skip the APIC EOI, and
    /// then watches for the guest clearing it. The watch is KVM state no
    /// ioctl saves: a guest paused between the two would, once received,
    /// clear the flag unwatched, and that vector would stay in service
    /// for ever (a NIC whose receive interrupts stop). Cleared here, the
    /// flag makes the guest do a real EOI, which is always right.
    fn drop_pv_eoi_hint(&self, mem: &GuestMemory) {
        const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
        const KVM_MSR_ENABLED: u64 = 1;
        let Some(m) = self.msrs.iter().find(|m| m.index == MSR_KVM_PV_EOI_EN) else {
            return;
        };
        if m.data & KVM_MSR_ENABLED == 0 {
            return;
        }
        let at = GuestAddress(m.data & !KVM_MSR_ENABLED);
        // An address outside memory is the guest's error; KVM ignores it.
        if let Ok(flag) = mem.read_obj::<u8>(at) {
            let _ = mem.write_obj(flag & !1, at);
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.bytes(as_bytes(&self.mp_state))
            .bytes(as_bytes(&self.regs))
            .bytes(as_bytes(&self.sregs))
            .bytes(as_bytes(&self.xsave))
            .bytes(as_bytes(&self.xcrs))
            .bytes(as_bytes(&self.debugregs))
            .bytes(as_bytes(&self.lapic))
            .bytes(as_bytes(&self.events))
            .u32(self.msrs.len() as u32);
        for m in &self.msrs {
            e.u32(m.index).u64(m.data);
        }
        e.0
    }

    pub fn decode(payload: &[u8]) -> Result<VcpuState, StreamError> {
        let mut d = Dec::new(Tag::Vcpu, payload);
        let mut field = |what| {
            let b = d.bytes()?;
            Ok::<_, StreamError>((b, what))
        };
        let (mp, regs, sregs, xsave, xcrs, dbg, lapic, events) = (
            field("MP state")?,
            field("registers")?,
            field("special registers")?,
            field("XSAVE area")?,
            field("XCRs")?,
            field("debug registers")?,
            field("local APIC")?,
            field("events")?,
        );
        let n = d.u32()? as usize;
        if n > KVM_MAX_MSR_ENTRIES {
            return Err(d.bad(format!(
                "{n} MSRs, more than KVM takes ({KVM_MAX_MSR_ENTRIES})"
            )));
        }
        let mut msrs = Vec::with_capacity(n);
        for _ in 0..n {
            msrs.push(kvm_msr_entry {
                index: d.u32()?,
                data: d.u64()?,
                ..Default::default()
            });
        }
        d.end()?;
        Ok(VcpuState {
            mp_state: from_bytes(&d, mp.0, mp.1)?,
            regs: from_bytes(&d, regs.0, regs.1)?,
            sregs: from_bytes(&d, sregs.0, sregs.1)?,
            xsave: from_bytes(&d, xsave.0, xsave.1)?,
            xcrs: from_bytes(&d, xcrs.0, xcrs.1)?,
            debugregs: from_bytes(&d, dbg.0, dbg.1)?,
            lapic: from_bytes(&d, lapic.0, lapic.1)?,
            events: from_bytes(&d, events.0, events.1)?,
            msrs,
        })
    }
}

/// Reads every MSR of `index` this vCPU has, skipping those it refuses
/// (KVM stops a batch at the first one it cannot read).
fn read_msrs(fd: &VcpuFd, index: &[u32]) -> StateResult<Vec<kvm_msr_entry>> {
    let mut out = Vec::with_capacity(index.len());
    let mut rest = index;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&i| kvm_msr_entry {
                index: i,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| StateError::Msrs(entries.len()))?;
        let n = fd.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        rest = &rest[(n + 1).min(rest.len())..];
    }
    Ok(out)
}

/// The VM's in-kernel devices and clock.
pub struct VmState {
    chips: [kvm_irqchip; 3],
    /// None for a guest without a PIT (irqchip.rs); in the stream an
    /// empty field (docs/SNAPSHOT.md), which streams from before vm-run
    /// left the PIT out never have.
    pit: Option<kvm_pit_state2>,
    clock: kvm_clock_data,
    /// Host wall-clock time when the clock was read, nanoseconds since the
    /// epoch: on restore the guest's clock is brought forward by the time
    /// the snapshot spent in transit or on disk.
    realtime_ns: u64,
}

/// The in-kernel irqchip's three chips, in the order the state keeps them.
const IRQCHIPS: [u32; 3] = [
    KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQCHIP_IOAPIC,
];

impl VmState {
    /// `clock` is the guest clock as the pause left it.
    pub fn save(vm: &VmFd, clock: kvm_clock_data, realtime_ns: u64) -> StateResult<VmState> {
        let mut chips = [kvm_irqchip::default(); 3];
        for (c, id) in chips.iter_mut().zip(IRQCHIPS) {
            c.chip_id = id;
            vm.get_irqchip(c).map_err(kvm("KVM_GET_IRQCHIP"))?;
        }
        let pit = match vm.get_pit2() {
            Ok(pit) => Some(pit),
            // KVM's answer for a VM without a PIT.
            Err(e) if e.errno() == libc::ENXIO => None,
            Err(e) => return Err(kvm("KVM_GET_PIT2")(e)),
        };
        Ok(VmState {
            chips,
            pit,
            clock,
            realtime_ns,
        })
    }

    pub fn restore(&self, vm: &VmFd) -> StateResult<()> {
        for c in &self.chips {
            vm.set_irqchip(c).map_err(kvm("KVM_SET_IRQCHIP"))?;
        }
        if let Some(pit) = &self.pit {
            // The new VM has none yet: a guest keeps the PIT it had.
            super::irqchip::create_pit(vm).map_err(kvm("KVM_CREATE_PIT2"))?;
            vm.set_pit2(pit).map_err(kvm("KVM_SET_PIT2"))?;
        }
        let mut clock = self.clock;
        clock.clock += realtime_ns().saturating_sub(self.realtime_ns);
        clock.flags = 0;
        vm.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        for c in &self.chips {
            e.bytes(as_bytes(c));
        }
        e.bytes(self.pit.as_ref().map_or(&[][..], |p| as_bytes(p)))
            .bytes(as_bytes(&self.clock))
            .u64(self.realtime_ns);
        e.0
    }

    pub fn decode(payload: &[u8]) -> Result<VmState, StreamError> {
        let mut d = Dec::new(Tag::Vm, payload);
        let chip = |d: &mut Dec| {
            let b = d.bytes()?;
            let c: kvm_irqchip = from_bytes(d, b, "interrupt controller")?;
            Ok::<_, StreamError>(c)
        };
        let chips = [chip(&mut d)?, chip(&mut d)?, chip(&mut d)?];
        let pit = d.bytes()?;
        let pit = match pit.is_empty() {
            true => None,
            false => Some(from_bytes(&d, pit, "PIT")?),
        };
        let clock = d.bytes()?;
        let clock = from_bytes(&d, clock, "kvmclock")?;
        let realtime_ns = d.u64()?;
        d.end()?;
        for (c, id) in chips.iter().zip(IRQCHIPS) {
            if c.chip_id != id {
                return Err(d.bad("interrupt controllers out of order"));
            }
        }
        Ok(VmState {
            chips,
            pit,
            clock,
            realtime_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_state(pit: Option<kvm_pit_state2>) -> VmState {
        let mut chips = [kvm_irqchip::default(); 3];
        for (c, id) in chips.iter_mut().zip(IRQCHIPS) {
            c.chip_id = id;
        }
        VmState {
            chips,
            pit,
            clock: kvm_clock_data {
                clock: 123_456_789,
                ..Default::default()
            },
            realtime_ns: 1_700_000_000_000_000_000,
        }
    }

    #[test]
    fn vm_state_round_trips_with_and_without_a_pit() {
        let mut pit = kvm_pit_state2::default();
        pit.channels[0].count = 0x1234;
        pit.channels[2].mode = 3;
        pit.flags = 1;
        for state in [vm_state(Some(pit)), vm_state(None)] {
            let bytes = state.encode();
            let back = VmState::decode(&bytes).expect("decodes");
            assert_eq!(back.pit.is_some(), state.pit.is_some());
            assert_eq!(
                back.pit
                    .map(|p| (p.channels[0].count, p.channels[2].mode, p.flags)),
                state
                    .pit
                    .map(|p| (p.channels[0].count, p.channels[2].mode, p.flags))
            );
            assert_eq!(
                (back.clock.clock, back.realtime_ns),
                (123_456_789, state.realtime_ns)
            );
            assert_eq!(back.encode(), bytes);
        }
        // Without a PIT the field is there, empty: 4 bytes of length less
        // than the PIT's own.
        let with = vm_state(Some(pit)).encode().len();
        let without = vm_state(None).encode().len();
        assert_eq!(with - without, size_of::<kvm_pit_state2>());
    }

    #[test]
    fn a_pit_of_the_wrong_size_is_refused() {
        let mut e = Enc::default();
        for c in &vm_state(None).chips {
            e.bytes(as_bytes(c));
        }
        e.bytes(&[0; 7])
            .bytes(as_bytes(&kvm_clock_data::default()))
            .u64(0);
        assert!(VmState::decode(&e.0).is_err());
    }
}
