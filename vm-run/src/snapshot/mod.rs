//! Snapshots: a guest's whole state as a stream (vm-send writes it,
//! vm-receive reads it). `stream` is the format on the wire; this module
//! says what goes into it and puts it back.

pub mod image;
pub mod live;
pub mod stream;

use std::mem::size_of;

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{VcpuFd, VmFd};

use stream::{Dec, Enc, StreamError, Tag};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;

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

/// What failed while taking or putting back state, for the user.
pub type StateResult<T> = std::result::Result<T, String>;

fn kvm(what: &str) -> impl Fn(kvm_ioctls::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
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
        let msrs = Msrs::from_entries(&self.msrs).map_err(|e| format!("MSRs: {e:?}"))?;
        let n = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if n != self.msrs.len() {
            let idx = self.msrs.get(n).map_or(0, |m| m.index);
            return Err(format!("KVM_SET_MSRS: this host refuses MSR {idx:#x}"));
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
        if n > 4096 {
            return Err(d.bad(format!("{n} MSRs")));
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
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| format!("MSRs: {e:?}"))?;
        let n = fd.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        rest = &rest[(n + 1).min(rest.len())..];
    }
    Ok(out)
}

/// The VM's in-kernel devices and clock.
pub struct VmState {
    chips: [kvm_irqchip; 3],
    pit: kvm_pit_state2,
    clock: kvm_clock_data,
    /// Host wall-clock time when the clock was read, nanoseconds since the
    /// epoch: on restore the guest's clock is brought forward by the time
    /// the snapshot spent in transit or on disk.
    realtime_ns: u64,
}

impl VmState {
    /// `clock` is the guest clock as the pause left it.
    pub fn save(vm: &VmFd, clock: kvm_clock_data, realtime_ns: u64) -> StateResult<VmState> {
        let mut chips = [kvm_irqchip::default(); 3];
        for (c, id) in chips.iter_mut().zip([
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ]) {
            c.chip_id = id;
            vm.get_irqchip(c).map_err(kvm("KVM_GET_IRQCHIP"))?;
        }
        Ok(VmState {
            chips,
            pit: vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?,
            clock,
            realtime_ns,
        })
    }

    pub fn restore(&self, vm: &VmFd) -> StateResult<()> {
        for c in &self.chips {
            vm.set_irqchip(c).map_err(kvm("KVM_SET_IRQCHIP"))?;
        }
        vm.set_pit2(&self.pit).map_err(kvm("KVM_SET_PIT2"))?;
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
        e.bytes(as_bytes(&self.pit))
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
        let pit = from_bytes(&d, pit, "PIT")?;
        let clock = d.bytes()?;
        let clock = from_bytes(&d, clock, "kvmclock")?;
        let realtime_ns = d.u64()?;
        d.end()?;
        for (c, id) in chips.iter().zip([
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ]) {
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

pub fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A disk as the guest had it: vm-receive reopens it by path unless told
/// otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRecord {
    pub path: String,
    pub read_only: bool,
    pub serial: Option<String>,
}

/// A NIC as the guest had it: the receiver attaches a tap of its own and
/// keeps the MAC, which the guest's driver read when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicRecord {
    pub mac: [u8; 6],
}

/// The CONF section: what the receiver needs before it can build the VM.
pub struct GuestConfig {
    pub mem_size: u64,
    pub vcpus: u8,
    /// The CPUID the guest was given (before per-vCPU APIC IDs): the guest
    /// keeps it on the new host, which must support all of it.
    pub cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    pub disks: Vec<DiskRecord>,
    pub nics: Vec<NicRecord>,
}

/// Upper bounds for a CONF section's counts: far above what vm-run makes.
const MAX_CPUID: usize = 512;
const MAX_DISK_RECORDS: usize = 64;
const MAX_NIC_RECORDS: usize = 64;

impl GuestConfig {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u64(self.mem_size).u8(self.vcpus);
        e.u32(self.cpuid.len() as u32);
        for c in &self.cpuid {
            e.u32(c.function)
                .u32(c.index)
                .u32(c.flags)
                .u32(c.eax)
                .u32(c.ebx)
                .u32(c.ecx)
                .u32(c.edx);
        }
        e.u32(self.disks.len() as u32);
        for d in &self.disks {
            e.bytes(d.path.as_bytes())
                .u8(d.read_only.into())
                .bytes(d.serial.as_deref().unwrap_or("").as_bytes());
        }
        e.u32(self.nics.len() as u32);
        for n in &self.nics {
            e.bytes(&n.mac);
        }
        e.0
    }

    pub fn decode(payload: &[u8]) -> Result<GuestConfig, StreamError> {
        let mut d = Dec::new(Tag::Config, payload);
        let mem_size = d.u64()?;
        let vcpus = d.u8()?;
        if vcpus == 0 || mem_size == 0 || mem_size % 4096 != 0 {
            return Err(d.bad(format!("{vcpus} vCPUs, {mem_size} bytes of memory")));
        }
        let n = d.u32()? as usize;
        if n > MAX_CPUID {
            return Err(d.bad(format!("{n} CPUID entries")));
        }
        let mut cpuid = Vec::with_capacity(n);
        for _ in 0..n {
            cpuid.push(kvm_bindings::kvm_cpuid_entry2 {
                function: d.u32()?,
                index: d.u32()?,
                flags: d.u32()?,
                eax: d.u32()?,
                ebx: d.u32()?,
                ecx: d.u32()?,
                edx: d.u32()?,
                ..Default::default()
            });
        }
        let n = d.u32()? as usize;
        if n > MAX_DISK_RECORDS {
            return Err(d.bad(format!("{n} disks")));
        }
        let text = |d: &mut Dec| -> Result<String, StreamError> {
            let b = d.bytes()?;
            String::from_utf8(b.to_vec()).map_err(|_| d.bad("a disk name is not UTF-8"))
        };
        let mut disks = Vec::with_capacity(n);
        for _ in 0..n {
            let path = text(&mut d)?;
            let read_only = d.u8()? != 0;
            let serial = Some(text(&mut d)?).filter(|s| !s.is_empty());
            disks.push(DiskRecord {
                path,
                read_only,
                serial,
            });
        }
        // Streams before version 3 end here: their guests had no NICs.
        let n = if d.is_empty() { 0 } else { d.u32()? as usize };
        if n > MAX_NIC_RECORDS {
            return Err(d.bad(format!("{n} NICs")));
        }
        let mut nics = Vec::with_capacity(n);
        for _ in 0..n {
            let mac = d
                .bytes()?
                .try_into()
                .map_err(|_| d.bad("a MAC address is not 6 bytes"))?;
            nics.push(NicRecord { mac });
        }
        d.end()?;
        Ok(GuestConfig {
            mem_size,
            vcpus,
            cpuid,
            disks,
            nics,
        })
    }
}

/// CPU features the guest was given that this host's KVM cannot give, by
/// name where the name is well known: such a guest would crash on its
/// first use of one.
pub fn missing_cpu_features(
    guest: &[kvm_bindings::kvm_cpuid_entry2],
    host: &[kvm_bindings::kvm_cpuid_entry2],
) -> Vec<String> {
    // (leaf, subleaf, register index: 0 eax .. 3 edx, bit, name)
    const NAMES: &[(u32, u32, usize, u32, &str)] = &[
        (1, 0, 2, 0, "sse3"),
        (1, 0, 2, 9, "ssse3"),
        (1, 0, 2, 12, "fma"),
        (1, 0, 2, 19, "sse4_1"),
        (1, 0, 2, 20, "sse4_2"),
        (1, 0, 2, 22, "movbe"),
        (1, 0, 2, 23, "popcnt"),
        (1, 0, 2, 25, "aes"),
        (1, 0, 2, 26, "xsave"),
        (1, 0, 2, 28, "avx"),
        (1, 0, 2, 29, "f16c"),
        (1, 0, 2, 30, "rdrand"),
        (1, 0, 3, 25, "sse"),
        (1, 0, 3, 26, "sse2"),
        (7, 0, 1, 3, "bmi1"),
        (7, 0, 1, 5, "avx2"),
        (7, 0, 1, 8, "bmi2"),
        (7, 0, 1, 16, "avx512f"),
        (7, 0, 1, 18, "rdseed"),
        (7, 0, 1, 19, "adx"),
        (7, 0, 1, 29, "sha_ni"),
        (7, 0, 2, 9, "vaes"),
        (7, 0, 2, 10, "vpclmulqdq"),
        (0x8000_0001, 0, 2, 5, "abm"),
    ];
    // Leaves whose bits are features (not sizes, IDs or topology).
    const FEATURE_LEAVES: &[(u32, u32, usize)] = &[
        (1, 0, 2),
        (1, 0, 3),
        (7, 0, 1),
        (7, 0, 2),
        (7, 0, 3),
        (0xd, 1, 0),
        (0x8000_0001, 0, 2),
        (0x8000_0001, 0, 3),
    ];
    // Bits the VMM sets itself or that say nothing of the CPU: the
    // hypervisor bit and OSXSAVE/APIC-ID-derived bits.
    const IGNORED: &[(u32, u32, usize, u32)] = &[(1, 0, 2, 27), (1, 0, 2, 31)];
    let reg = |e: &kvm_bindings::kvm_cpuid_entry2, r: usize| [e.eax, e.ebx, e.ecx, e.edx][r];
    let find = |t: &[kvm_bindings::kvm_cpuid_entry2], leaf, sub| {
        t.iter()
            .find(|e| e.function == leaf && (e.index == sub || leaf != 7 && leaf != 0xd))
            .copied()
    };
    let mut missing = Vec::new();
    for &(leaf, sub, r) in FEATURE_LEAVES {
        let Some(g) = find(guest, leaf, sub) else {
            continue;
        };
        let h = find(host, leaf, sub).map_or(0, |h| reg(&h, r));
        let lacking = reg(&g, r) & !h;
        for bit in 0..32 {
            if lacking & (1 << bit) == 0 || IGNORED.contains(&(leaf, sub, r, bit)) {
                continue;
            }
            let name = NAMES
                .iter()
                .find(|n| (n.0, n.1, n.2, n.3) == (leaf, sub, r, bit))
                .map_or_else(
                    || {
                        format!(
                            "CPUID.{leaf:#x}.{sub}:{}[{bit}]",
                            ["eax", "ebx", "ecx", "edx"][r]
                        )
                    },
                    |n| n.4.to_string(),
                );
            missing.push(name);
        }
    }
    missing
}

/// Pages a MEM section carries at most.
pub const MEM_RUN_PAGES: usize = 256;
pub const PAGE: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    fn config(nics: Vec<NicRecord>) -> GuestConfig {
        GuestConfig {
            mem_size: 64 << 20,
            vcpus: 2,
            cpuid: Vec::new(),
            disks: vec![DiskRecord {
                path: "/var/vm/web.qcow2".into(),
                read_only: false,
                serial: Some("web0".into()),
            }],
            nics,
        }
    }

    #[test]
    fn conf_keeps_the_nics_and_reads_streams_from_before_them() {
        let macs = [[0xfe, 0xe1, 0xba, 0, 0, 1], [0xfe, 0xe1, 0xba, 0, 0, 2]];
        let c = config(macs.iter().map(|&mac| NicRecord { mac }).collect());
        let back = GuestConfig::decode(&c.encode()).expect("decode");
        assert_eq!(back.nics, c.nics);
        assert_eq!(back.disks, c.disks);
        // Version 2 wrote no NIC count at all.
        let mut v2 = config(Vec::new()).encode();
        v2.truncate(v2.len() - 4);
        assert!(GuestConfig::decode(&v2).expect("v2").nics.is_empty());
        // A MAC of the wrong length, or a NIC count past the end.
        let mut bad = config(Vec::new()).encode();
        bad.truncate(bad.len() - 4);
        bad.extend(1u32.to_le_bytes());
        bad.extend(5u32.to_le_bytes());
        bad.extend([1, 2, 3, 4, 5]);
        assert!(GuestConfig::decode(&bad).is_err());
        let mut bad = config(Vec::new()).encode();
        bad.truncate(bad.len() - 4);
        bad.extend(1000u32.to_le_bytes());
        assert!(GuestConfig::decode(&bad).is_err());
    }
}
