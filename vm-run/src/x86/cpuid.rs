//! CPUID: what KVM can virtualize on this host, with a topology of one
//! socket of `n` single-threaded cores, and each vCPU its own APIC ID.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

use crate::error::{Error, Result};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// Leaf 0xb/0x1f level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

pub fn supported(kvm: &Kvm) -> Result<CpuId> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID".into(), e))
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
pub fn for_vcpu(base: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = base.clone();
    let (id, count) = (u32::from(id), u32::from(count));
    let core_bits = width(count);
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (id << 24) | (count << 16) | (8 << 8);
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
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((count - 1) << 26);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = LEVEL_SMT << 8;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = count;
                        e.ecx = (LEVEL_CORE << 8) | 1;
                    }
                    n => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = n;
                    }
                }
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
    }
    cpuid
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
        let base = CpuId::from_entries(&[entry(1, 0), entry(0xb, 0), entry(0xb, 1)]).unwrap();
        let c = for_vcpu(&base, 2, 4);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!((e[2].eax, e[2].ebx, e[2].edx), (2, 4, 2));
    }

    #[test]
    fn widths() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(width), [0, 1, 2, 2, 3, 3, 4]);
    }
}
