//! PVH boot of an ELF kernel: entered in 32-bit protected mode at the
//! address of its XEN_ELFNOTE_PHYS32_ENTRY note, with EBX pointing at an
//! hvm_start_info that carries the command line, the initrd as module 0,
//! the memory map and the RSDP.

use std::fs::File;

use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress};

use super::{load_cmdline, load_initrd};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::memory::{
    self, GuestMemory, CMDLINE_MAX, CMDLINE_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START,
    PVH_MODLIST_START,
};
use crate::x86::regs::Entry;

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const START_INFO_VERSION: u32 = 1;

pub fn load(mem: &GuestMemory, cfg: &Config, kernel: &mut File, rsdp: u64) -> Result<Entry> {
    let not_kernel = |why: String| Error::Format(cfg.kernel.clone(), why);
    let loaded = Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
        .map_err(|_| not_kernel("ELF file that is not a bootable kernel".into()))?;
    let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
        return Err(not_kernel(
            "ELF kernel without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)".into(),
        ));
    };
    load_cmdline(mem, &cfg.cmdline, CMDLINE_MAX)?;
    let initrd = load_initrd(mem, cfg, loaded.kernel_end, u64::MAX)?;

    let map = memory::e820_map(cfg.mem_size);
    let memmap: Vec<u8> = map
        .iter()
        .flat_map(|(addr, size, typ)| {
            let mut e = addr.to_le_bytes().to_vec();
            e.extend_from_slice(&size.to_le_bytes());
            e.extend_from_slice(&typ.to_le_bytes());
            e.extend_from_slice(&0u32.to_le_bytes());
            e
        })
        .collect();

    // struct hvm_start_info, version 1 (xen/include/public/arch-x86/hvm/start_info.h).
    let mut info = Vec::with_capacity(56);
    info.extend_from_slice(&XEN_HVM_START_MAGIC.to_le_bytes());
    info.extend_from_slice(&START_INFO_VERSION.to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes()); // flags
    info.extend_from_slice(&u32::from(initrd.is_some()).to_le_bytes()); // nr_modules
    info.extend_from_slice(&PVH_MODLIST_START.to_le_bytes());
    info.extend_from_slice(&CMDLINE_START.to_le_bytes());
    info.extend_from_slice(&rsdp.to_le_bytes());
    info.extend_from_slice(&PVH_MEMMAP_START.to_le_bytes());
    info.extend_from_slice(&(map.len() as u32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes()); // reserved

    // struct hvm_modlist_entry for the initrd: paddr, size, cmdline, reserved.
    let module: Vec<u8> = match initrd {
        Some(rd) => [rd.addr, rd.size, 0, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        None => Vec::new(),
    };

    for (bytes, at) in [
        (&info, PVH_INFO_START),
        (&module, PVH_MODLIST_START),
        (&memmap, PVH_MEMMAP_START),
    ] {
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(|e| Error::Setup(format!("PVH start info: {e}")))?;
    }
    Ok(Entry::Pvh {
        rip: entry.0,
        start_info: PVH_INFO_START,
    })
}
