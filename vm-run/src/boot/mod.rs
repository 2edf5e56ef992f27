//! Loading a kernel, its initrd and command line into guest memory, and
//! telling the boot vCPU where to start; or a BIOS (bios.rs). The format
//! is read from the file's contents, never its name: an ELF image boots
//! through its PVH entry note, a file with a Linux setup header is a
//! bzImage, and anything else must be a BIOS image.

pub mod bios;
mod bzimage;
mod pvh;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use vm_memory::{Bytes, GuestAddress};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::memory::{self, GuestMemory, CMDLINE_MAX, CMDLINE_START, HIMEM_START};
use crate::x86::regs::Entry;

/// Where the initrd landed.
#[derive(Debug, Clone, Copy)]
pub struct Initrd {
    pub addr: u64,
    pub size: u64,
}

/// What -b (or the default BIOS) names.
pub enum Image {
    Kernel,
    Bios(Vec<u8>),
}

/// Where a bzImage keeps its "HdrS" magic (the Linux boot protocol).
const BZIMAGE_MAGIC_AT: u64 = 0x202;

/// Reads enough of the boot file to tell a kernel from a BIOS, and the
/// whole of a BIOS. The options that only a kernel takes (-i, -a) are
/// refused with a BIOS, and -B with a kernel.
pub fn probe(cfg: &Config) -> Result<Image> {
    let path = &cfg.kernel;
    let (mut f, len) = open(path).map_err(|e| match e {
        Error::Open(p, io)
            if cfg.firmware.default_bios && io.kind() == std::io::ErrorKind::NotFound =>
        {
            Error::Open(p, std::io::Error::new(io.kind(), bios::MISSING))
        }
        e => e,
    })?;
    let mut head = [0u8; 4];
    let is_elf = f.read_exact(&mut head).is_ok() && head == *b"\x7fELF";
    let is_bzimage = !is_elf
        && f.seek(SeekFrom::Start(BZIMAGE_MAGIC_AT)).is_ok()
        && f.read_exact(&mut head).is_ok()
        && head == *b"HdrS";
    if is_elf || is_bzimage {
        if cfg.firmware.boot_device.is_some() {
            return Err(Error::Usage(format!(
                "-B: {} is a kernel; only a BIOS boots from a device",
                path.display()
            )));
        }
        return Ok(Image::Kernel);
    }
    let image = bios::read(path, &mut f, len)?;
    if cfg.initrd.is_some() || cfg.firmware.cmdline_given {
        return Err(Error::Usage(format!(
            "{}: a BIOS takes no {} (they are for a kernel)",
            path.display(),
            if cfg.initrd.is_some() { "-i" } else { "-a" }
        )));
    }
    Ok(Image::Bios(image))
}

pub fn load(mem: &GuestMemory, cfg: &Config, rsdp: u64) -> Result<Entry> {
    let (mut kernel, len) = open(&cfg.kernel)?;
    if len > cfg.mem_size.saturating_sub(HIMEM_START) {
        return Err(Error::Usage(format!(
            "{}: kernel of {} KiB does not fit in {} MiB of guest memory",
            cfg.kernel.display(),
            len >> 10,
            cfg.mem_size >> 20
        )));
    }
    let mut magic = [0u8; 4];
    let is_elf = kernel.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF";
    kernel
        .seek(SeekFrom::Start(0))
        .map_err(|e| Error::Open(cfg.kernel.clone(), e))?;
    if is_elf {
        pvh::load(mem, cfg, &mut kernel, rsdp)
    } else {
        bzimage::load(mem, cfg, &mut kernel, rsdp)
    }
}

/// Opens a file named on the command line; returns it and its length.
/// Only files and block devices: a FIFO would block the open with no
/// signal handled yet, a directory or a device is no kernel (65).
fn open(path: &Path) -> Result<(File, u64)> {
    let f = vm_img::open_regular(path, false).map_err(crate::disk::from_img)?;
    let meta = f.metadata().map_err(|e| Error::Open(path.into(), e))?;
    Ok((f, meta.len()))
}

/// Writes the command line (at most `max` bytes with its NUL) for the
/// kernel to find.
fn load_cmdline(mem: &GuestMemory, cmdline: &str, max: usize) -> Result<()> {
    let max = max.min(CMDLINE_MAX);
    let bad = |why: String| Error::Usage(format!("-a: {why}"));
    let mut cl = Cmdline::new(max).map_err(|e| bad(e.to_string()))?;
    cl.insert_str(cmdline).map_err(|e| match e {
        linux_loader::cmdline::Error::TooLarge => {
            bad(format!("longer than the kernel's {} bytes", max - 1))
        }
        e => bad(e.to_string()),
    })?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl)
        .map_err(|e| Error::Setup(format!("command line: {e}")))
}

/// Loads the initrd page-aligned as high as it may go, below `max_end`
/// and above the kernel.
fn load_initrd(
    mem: &GuestMemory,
    cfg: &Config,
    kernel_end: u64,
    max_end: u64,
) -> Result<Option<Initrd>> {
    let Some(path) = &cfg.initrd else {
        return Ok(None);
    };
    let (mut f, size) = open(path)?;
    let top = memory::low_ram_end(cfg.mem_size).min(max_end);
    let addr = top.checked_sub(size).map(|a| a & !0xfff);
    let Some(addr) = addr.filter(|a| *a >= kernel_end) else {
        return Err(Error::Usage(format!(
            "{}: initrd of {} KiB does not fit in {} MiB of guest memory with the kernel",
            path.display(),
            size >> 10,
            cfg.mem_size >> 20
        )));
    };
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|e| match e {
            vm_memory::GuestMemoryError::IOError(io) => Error::Open(path.clone(), io),
            e => Error::Setup(format!("{}: {e}", path.display())),
        })?;
    Ok(Some(Initrd { addr, size }))
}
