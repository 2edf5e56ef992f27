//! Registers at the kernel's entry point: 64-bit long mode for the Linux
//! boot protocol (identity-mapped, paging on), 32-bit protected mode with
//! paging off for PVH. The GDT and page tables they point to are written
//! into guest memory here too.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::error::{Error, Result};
use crate::memory::{
    GuestMemory, BOOT_STACK_TOP, GDT_START, IDT_START, PDPT_START, PD_START, PML4_START,
};

/// How the kernel is entered.
#[derive(Debug, Clone, Copy)]
pub enum Entry {
    /// Linux's 64-bit boot protocol: RSI holds the zero page.
    Linux64 { rip: u64, zero_page: u64 },
    /// PVH: 32-bit, paging off, EBX holds hvm_start_info.
    Pvh { rip: u64, start_info: u64 },
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// GDT selectors: the boot protocol's __BOOT_CS and __BOOT_DS, then a TSS.
const CODE_SEL: u16 = 2 << 3;
const DATA_SEL: u16 = 3 << 3;
const TSS_SEL: u16 = 4 << 3;

/// A GDT descriptor from its flags (access byte and G/DB/L nibble), base
/// and limit, in the layout the CPU reads.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0xffff)
        | ((limit as u64 & 0xf_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The kvm_segment for a GDT entry, so the hidden part of a segment
/// register matches what a real load from the GDT would give.
fn segment(entry: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: {
            let raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
            if bit(55) == 1 {
                (raw << 12) | 0xfff
            } else {
                raw
            }
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: if bit(47) == 1 { 0 } else { 1 },
        padding: 0,
    }
}

fn gdt(long_mode: bool) -> [u64; 5] {
    let code = if long_mode { 0xa09b } else { 0xc09b };
    [
        0,
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

fn write<T: vm_memory::ByteValued>(mem: &GuestMemory, addr: u64, v: T) -> Result<()> {
    mem.write_obj(v, GuestAddress(addr))
        .map_err(|e| Error::Setup(format!("boot structures at {addr:#x}: {e}")))
}

/// Identity-maps the first 4 GiB with 2 MiB pages: the 64-bit entry needs
/// the kernel, zero page and command line mapped, and the kernel builds its
/// own tables for the rest.
fn write_page_tables(mem: &GuestMemory) -> Result<()> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    write(mem, PML4_START, PDPT_START | PRESENT_RW)?;
    for pd in 0..4u64 {
        let pd_addr = PD_START + pd * 0x1000;
        write(mem, PDPT_START + pd * 8, pd_addr | PRESENT_RW)?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| (((pd << 30) + (i << 21)) | PRESENT_RW | HUGE).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd_addr))
            .map_err(|e| Error::Setup(format!("page tables: {e}")))?;
    }
    Ok(())
}

/// Writes the boot GDT (and page tables for a 64-bit entry) into guest
/// memory; done once, shared by the boot vCPU only.
pub fn write_boot_structures(mem: &GuestMemory, entry: Entry) -> Result<()> {
    let long_mode = matches!(entry, Entry::Linux64 { .. });
    for (i, e) in gdt(long_mode).iter().enumerate() {
        write(mem, GDT_START + 8 * i as u64, *e)?;
    }
    write(mem, IDT_START, 0u64)?;
    if long_mode {
        write_page_tables(mem)?;
    }
    Ok(())
}

pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: Entry) -> Result<()> {
    let long_mode = matches!(entry, Entry::Linux64 { .. });
    let table = gdt(long_mode);
    let mut sregs: kvm_sregs = vcpu
        .get_sregs()
        .map_err(|e| Error::Kvm("KVM_GET_SREGS".into(), e))?;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    let data = segment(table[3], DATA_SEL);
    sregs.cs = segment(table[2], CODE_SEL);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(table[4], TSS_SEL);
    if long_mode {
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
        sregs.cr3 = PML4_START;
        sregs.cr4 = X86_CR4_PAE;
        sregs.efer = EFER_LME | EFER_LMA;
    } else {
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
        sregs.cr4 = 0;
        sregs.efer = 0;
    }
    vcpu.set_sregs(&sregs)
        .map_err(|e| Error::Kvm("KVM_SET_SREGS".into(), e))?;

    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        Entry::Linux64 { rip, zero_page } => {
            regs.rip = rip;
            regs.rsi = zero_page;
            regs.rsp = BOOT_STACK_TOP;
            regs.rbp = BOOT_STACK_TOP;
        }
        Entry::Pvh { rip, start_info } => {
            regs.rip = rip;
            regs.rbx = start_info;
        }
    }
    vcpu.set_regs(&regs)
        .map_err(|e| Error::Kvm("KVM_SET_REGS".into(), e))
}

/// The FPU as after FNINIT, with SSE exceptions masked.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| Error::Kvm("KVM_SET_FPU".into(), e))
}

/// A one-line dump for error reports (-v).
pub fn dump(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => format!(
            "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} \
             rsi={:#x} rdi={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}",
            r.rip,
            r.rsp,
            r.rflags,
            r.rax,
            r.rbx,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            s.cr0,
            s.cr3,
            s.cr4,
            s.efer,
            s.cs.selector
        ),
        _ => "registers unavailable".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_match_the_cpu_layout() {
        // Well-known encodings of flat 64-bit code, flat data and a TSS.
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn segments_decode_their_entry() {
        let cs = segment(gdt_entry(0xa09b, 0, 0xfffff), CODE_SEL);
        assert_eq!((cs.l, cs.db, cs.g, cs.present, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(cs.limit, 0xffff_ffff);
        let cs32 = segment(gdt_entry(0xc09b, 0, 0xfffff), CODE_SEL);
        assert_eq!((cs32.l, cs32.db), (0, 1));
    }
}
