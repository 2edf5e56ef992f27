//! Linux's x86 boot protocol, 64-bit entry: the kernel's protected-mode
//! part is loaded at 1 MiB and entered at its 64-bit entry point with the
//! zero page (struct boot_params) in RSI.

use std::fs::File;

use linux_loader::bootparam::{boot_e820_entry, boot_params};
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
/// Limits that older boot protocol versions leave unsaid.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
const OLD_CMDLINE_MAX: usize = 256;

pub fn load(mem: &GuestMemory, cfg: &Config, kernel: &mut File, rsdp: u64) -> Result<Entry> {
    let not_kernel = |why: String| Error::Format(cfg.kernel.clone(), why);
    let loaded = BzImage::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
        .map_err(|_| not_kernel("not a bzImage or ELF kernel".into()))?;
    let mut hdr = loaded
        .setup_header
        .ok_or_else(|| not_kernel("bzImage without a setup header".into()))?;
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(not_kernel("kernel has no 64-bit entry point".into()));
    }

    let cmdline_max = if hdr.version >= 0x206 {
        hdr.cmdline_size as usize + 1
    } else {
        OLD_CMDLINE_MAX
    };
    let cmdline_len = load_cmdline(mem, &cfg.cmdline, cmdline_max)?;
    let initrd_max = if hdr.initrd_addr_max != 0 {
        u64::from(hdr.initrd_addr_max)
    } else {
        DEFAULT_INITRD_ADDR_MAX
    };
    let kernel_end = loaded.kernel_load.0 + loaded.kernel_end.max(hdr.init_size.into());
    let initrd = load_initrd(mem, cfg, kernel_end, initrd_max + 1)?;

    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    hdr.cmdline_size = cmdline_len as u32;
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
