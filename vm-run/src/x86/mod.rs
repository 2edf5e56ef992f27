//! x86 specifics: what the vCPUs look like (CPUID, MSRs, registers at entry),
//! the interrupt controllers, and the ACPI tables that describe it all.

pub mod acpi;
pub mod cpuid;
pub mod irqchip;
pub mod msrs;
pub mod regs;
