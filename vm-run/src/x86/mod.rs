//! x86 specifics: what the vCPUs look like (CPUID, MSRs, registers at entry),
//! the in-kernel interrupt controllers, and the state KVM keeps of them.

pub mod cpuid;
pub mod irqchip;
pub mod msrs;
pub mod regs;
pub mod state;
