//! CPUID: what KVM can virtualize on this host, with a topology of one
//! socket of `n` single-threaded cores, and each vCPU its own APIC ID.

use kvm_bindings::{
    kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm};

use crate::error::{Error, Result};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;

const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// Leaf 0xb/0x1f level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// KVM's supported set, plus the TSC-deadline timer, which KVM emulates
/// in its LAPIC but leaves out of that set. Without it Linux calibrates
/// the LAPIC timer against the PIT, and under nested virtualization that
/// calibration fails and the guest falls back to slower PIT broadcasts.
pub fn supported(kvm: &Kvm) -> Result<CpuId> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID".into(), e))?;
    if kvm.check_extension(Cap::TscDeadlineTimer) {
        for e in cpuid.as_mut_slice() {
            if e.function == LEAF_FEATURES {
                e.ecx |= ECX_TSC_DEADLINE;
            }
        }
    }
    Ok(cpuid)
}

/// Bits needed to number `n` things (x86's "mask width").
fn width(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// The CPUID table for vCPU `id` of `count`.
pub fn for_vcpu(base: &CpuId, id: u8, count: u8) -> Result<CpuId> {
    let (id, count) = (u32::from(id), u32::from(count));
    let core_bits = width(count);
    // "Addressable IDs" in a package: the next power of two.
    let ids = 1u32 << core_bits;
    let mut entries: Vec<kvm_cpuid_entry2> = Vec::with_capacity(base.as_slice().len() + 6);
    let mut topology_leaves = Vec::new();
    for e in base.as_slice() {
        let mut e = *e;
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (id << 24) | (ids.min(255) << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                // Cores per package, and who shares the cache: only the L3
                // is shared between cores.
                let level = (e.eax >> 5) & 7;
                let sharing = if level >= 3 { (ids - 1).min(0xfff) } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | (((ids - 1) & 0x3f) << 26);
            }
            // KVM leaves these for the VMM to fill: written below.
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                if !topology_leaves.contains(&e.function) {
                    topology_leaves.push(e.function);
                }
                continue;
            }
            LEAF_AMD_SIZE => {
                e.ecx = (core_bits << 12) | (count - 1);
            }
            LEAF_AMD_EXT_APIC => {
                e.eax = id;
                e.ebx = id & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
        entries.push(e);
    }
    for function in topology_leaves {
        // SMT level (one thread per core), core level (all vCPUs), end.
        let levels = [(0, 1, LEVEL_SMT), (core_bits, count, LEVEL_CORE), (0, 0, 0)];
        for (index, (shift, n, kind)) in levels.into_iter().enumerate() {
            entries.push(kvm_cpuid_entry2 {
                function,
                index: index as u32,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                eax: shift,
                ebx: n,
                ecx: (kind << 8) | index as u32,
                edx: id,
                ..Default::default()
            });
        }
    }
    CpuId::from_entries(&entries).map_err(|e| Error::Setup(format!("CPUID table: {e:?}")))
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

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn topology_names_each_vcpu() {
        // KVM gives leaf 0xb as one zeroed subleaf for the VMM to fill.
        let base = CpuId::from_entries(&[entry(1, 0), entry(0xb, 0)]).unwrap();
        let c = for_vcpu(&base, 2, 3).unwrap();
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 2, "APIC ID");
        assert_eq!((e[0].ebx >> 16) & 0xff, 4, "addressable IDs");
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        let topo: Vec<_> = e.iter().filter(|e| e.function == 0xb).collect();
        assert_eq!(topo.len(), 3);
        // SMT: 1 thread; core: 3 vCPUs, 2 bits of APIC ID; then the end.
        assert_eq!(
            (topo[0].eax, topo[0].ebx, (topo[0].ecx >> 8) & 0xff),
            (0, 1, 1)
        );
        assert_eq!(
            (topo[1].eax, topo[1].ebx, (topo[1].ecx >> 8) & 0xff),
            (2, 3, 2)
        );
        assert_eq!((topo[2].ecx >> 8) & 0xff, 0);
        assert!(topo.iter().all(|t| t.edx == 2));
    }

    #[test]
    fn widths() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(width), [0, 1, 2, 2, 3, 3, 4]);
    }
}
