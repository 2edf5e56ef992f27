//! Linux's x86 boot protocol, 64-bit entry: the kernel's protected-mode
//! part is loaded at 1 MiB and entered at its 64-bit entry point with the
//! zero page (struct boot_params) in RSI.

use std::fs::File;

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use super::{load_cmdline, load_initrd};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::memory::{self, GuestMemory, CMDLINE_START, HIMEM_START, ZERO_PAGE_START};
use crate::x86::regs::Entry;

const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// xloadflags: the kernel has a 64-bit entry point 0x200 past its start.
const XLF_KERNEL_64: u16 = 1;
const ENTRY_64_OFFSET: u64 = 0x200;
const MIN_VERSION: u16 = 0x20c;

pub fn load(mem: &GuestMemory, cfg: &Config, kernel: &mut File, rsdp: u64) -> Result<Entry> {
    let not_kernel = |why: String| Error::Format(cfg.kernel.clone(), why);
    let loaded = BzImage::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
        .map_err(|_| not_kernel("not a bzImage or ELF kernel".into()))?;
    let mut hdr = loaded
        .setup_header
        .ok_or_else(|| not_kernel("bzImage without a setup header".into()))?;
    // The 64-bit entry point came with protocol 2.12, and with it the
    // header fields read below.
    if hdr.version < MIN_VERSION || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(not_kernel(
            "kernel has no 64-bit entry point (boot protocol before 2.12)".into(),
        ));
    }
    load_cmdline(mem, &cfg.cmdline, hdr.cmdline_size as usize + 1)?;
    let initrd = load_initrd(
        mem,
        cfg,
        footprint_end(&hdr, loaded.kernel_end),
        u64::from(hdr.initrd_addr_max) + 1,
    )?;

    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    if let Some(rd) = initrd {
        hdr.ramdisk_image = rd.addr as u32;
        hdr.ramdisk_size = rd.size as u32;
    }
    let mut params = boot_params {
        hdr,
        acpi_rsdp_addr: rsdp,
        ..Default::default()
    };
    let map = memory::e820_map(cfg.mem_size);
    for (slot, (addr, size, type_)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *type_,
        };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|e| Error::Setup(format!("zero page: {e}")))?;

    Ok(Entry::Linux64 {
        rip: loaded.kernel_load.0 + ENTRY_64_OFFSET,
        zero_page: ZERO_PAGE_START,
    })
}

/// The end of the memory the kernel needs while it boots: it decompresses
/// itself to where it prefers to run (pref_address, or its load address
/// aligned up) and needs init_size bytes from there.
fn footprint_end(hdr: &setup_header, loaded_end: u64) -> u64 {
    let align = u64::from(hdr.kernel_alignment).max(1);
    let run_at = (u64::from(hdr.code32_start).div_ceil(align) * align).max(hdr.pref_address);
    loaded_end.max(run_at.saturating_add(hdr.init_size.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footprint_covers_the_decompressed_kernel() {
        // Debian's 6.1: loaded at 1 MiB, runs at 16 MiB, needs ~50 MiB.
        let hdr = setup_header {
            code32_start: 0x10_0000,
            kernel_alignment: 0x20_0000,
            pref_address: 0x100_0000,
            init_size: 0x300_0000,
            ..Default::default()
        };
        assert_eq!(footprint_end(&hdr, 0xe0_0000), 0x400_0000);
        // A kernel without pref_address runs at its aligned load address.
        let hdr = setup_header {
            code32_start: 0x10_0000,
            kernel_alignment: 0x100_0000,
            init_size: 0x10_0000,
            ..Default::default()
        };
        assert_eq!(footprint_end(&hdr, 0x20_0000), 0x110_0000);
    }
}
