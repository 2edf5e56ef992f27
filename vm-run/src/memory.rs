//! The guest's physical address space: where RAM is, where the holes are,
//! and where the boot structures live. Everything that places something in
//! guest memory takes its address from here.

use std::sync::OnceLock;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use vm_memory::bitmap::{AtomicBitmap, NewBitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use crate::error::{Error, Result};

/// Each region carries a bitmap of the pages that vm-run's devices wrote
/// (vm-memory marks its own writes; the devices mark what they write
/// through raw pointers): KVM's dirty log sees only the vCPUs' writes, and
/// live migration (vm-send -l) needs both.
pub type GuestMemory = GuestMemoryMmap<AtomicBitmap>;

/// Real-mode boot structures, all below the EBDA.
pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x530;
/// PVH start_info, its module list (the initrd) and its memory map.
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6040;
pub const PVH_MEMMAP_START: u64 = 0x6080;
/// The zero page (struct boot_params) of the Linux boot protocol.
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Identity-mapped page tables for the 64-bit entry: PML4, PDPT, 4 PDs.
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 0x10000;
/// The VM generation ID (devices/vmgenid.rs): 16 bytes in a page of its
/// own, reserved in e820, just below the EBDA. Linux keeps its hands off
/// 0x9f000 and up anyway when the BIOS data area gives no EBDA.
pub const VMGENID_ADDR: u64 = 0x9f000;
/// The EBDA and the BIOS area: reserved in e820, as on a PC.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables live where Linux scans for the RSDP on a PC.
pub const ACPI_START: u64 = 0xe0000;
pub const BIOS_END: u64 = 0x10_0000;
/// Where the kernel is loaded, and where RAM the kernel may use begins.
pub const HIMEM_START: u64 = 0x10_0000;
/// RAM stops here and resumes at 4 GiB: the hole is for the IOAPIC, the
/// LAPIC, the TSS that Intel's KVM needs, and later PCI BARs.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// PCI memory BARs go here, up to the IOAPIC.
pub const PCI_MMIO_START: u64 = MMIO_HOLE_START;
pub const PCI_MMIO_END: u64 = 0xfec0_0000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Intel's KVM needs three pages for a TSS and one for an identity map.
/// They sit where QEMU puts them, below the last 16 MiB, so that a BIOS
/// image of up to 16 MiB ending at 4 GiB (boot/bios.rs) never covers them.
pub const KVM_TSS_ADDR: usize = 0xfeff_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfeff_c000;
/// A BIOS image is mapped so that it ends here: the reset vector is
/// fetched 16 bytes below 4 GiB.
pub const BIOS_IMAGE_END: u64 = 0x1_0000_0000;
/// The largest BIOS image, so that it stays clear of the TSS above.
pub const BIOS_IMAGE_MAX: u64 = 16 << 20;
/// The BIOS's window below 1 MiB: the image's last 256 KiB (all of
/// SeaBIOS's bios-256k.bin) are copied to end at 1 MiB, into RAM the
/// firmware may write. 128 KiB, as QEMU maps, is not enough: SeaBIOS's
/// 32-bit code lies below 0xe0000 and, with no i440FX or Q35 bridge to
/// unlock shadow RAM, it never copies that code there itself (vmd's
/// loadfile_bios copies the whole image too).
pub const BIOS_LOW_START: u64 = 0xc0000;

/// A transparent huge page of x86-64.
const HUGE_PAGE: usize = 2 << 20;

/// e820 entry types.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// The RAM regions for a guest of `size` bytes.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, usize)> {
    let low = size.min(MMIO_HOLE_START);
    let mut regions = vec![(GuestAddress(0), low as usize)];
    if size > low {
        regions.push((GuestAddress(MMIO_HOLE_END), (size - low) as usize));
    }
    regions
}

/// The top of RAM below 4 GiB.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_HOLE_START)
}

/// Gives KVM the guest's RAM, one slot a region, in order; with
/// `log_dirty`, KVM keeps a bitmap of the pages the vCPUs write. Called
/// again on the same regions, it only changes the flags.
pub fn register(
    vm: &VmFd,
    mem: &'static GuestMemory,
    log_dirty: bool,
) -> std::result::Result<(), kvm_ioctls::Error> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| kvm_ioctls::Error::new(libc::EFAULT))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: if log_dirty {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping behind `host` is never unmapped: `mem` lives
        // for the life of the process.
        unsafe { vm.set_user_memory_region(r) }?;
    }
    Ok(())
}

/// Maps a firmware image read-only so that it ends at 4 GiB, in KVM slot
/// `slot` (one past the RAM's). A guest write exits as MMIO and nothing
/// backs that address on the MMIO bus, so it is dropped, as a ROM does.
/// Where KVM lacks read-only slots the guest could write its own copy;
/// no one else sees it, so the image is mapped anyway.
pub fn map_firmware(vm: &VmFd, slot: u32, image: &[u8]) -> Result<()> {
    let len = image.len() as u64;
    if len == 0 || len > BIOS_IMAGE_MAX || !len.is_multiple_of(4096) {
        return Err(Error::Setup(format!("firmware image of {len} bytes")));
    }
    let rom = vm_memory::MmapRegion::<()>::new(image.len())
        .map_err(|e| Error::Unavailable(format!("cannot map the firmware image: {e}")))?;
    // The mapping is ours alone and exactly image.len() bytes long.
    let host = rom.as_ptr();
    // SAFETY: `host` is the start of a fresh private mapping of
    // image.len() bytes, which nothing else references yet.
    unsafe { std::ptr::copy_nonoverlapping(image.as_ptr(), host, image.len()) };
    let readonly = vm.check_extension(kvm_ioctls::Cap::ReadonlyMem);
    let r = kvm_userspace_memory_region {
        slot,
        flags: if readonly { KVM_MEM_READONLY } else { 0 },
        guest_phys_addr: BIOS_IMAGE_END - len,
        memory_size: len,
        userspace_addr: host as u64,
    };
    // The guest keeps this mapping for the life of the process.
    Box::leak(Box::new(rom));
    // SAFETY: the mapping behind `host` is leaked just above: it is never
    // unmapped while the VM exists.
    unsafe { vm.set_user_memory_region(r) }
        .map_err(|e| Error::Kvm("KVM_SET_USER_MEMORY_REGION (firmware)".into(), e))
}

/// Guest RAM of `size` bytes; `what` names the size in messages (the
/// option, or the stream it came from).
pub fn create(size: u64, what: &str) -> Result<GuestMemory> {
    let host = host_memory();
    if host.is_some_and(|h| size > h) {
        return Err(Error::Unavailable(format!(
            "{what}: more memory than this host has ({}M)",
            host.unwrap_or(0) >> 20
        )));
    }
    let fail = |e: &dyn std::fmt::Display| {
        Error::Unavailable(format!("{what}: cannot map guest memory: {e}"))
    };
    let regions = ram_regions(size)
        .into_iter()
        .map(|(at, len)| {
            let host = map_aligned(len).map_err(|e| fail(&e))?;
            // SAFETY: [host, host + len) is a fresh anonymous mapping of
            // this process (map_aligned) that is never unmapped.
            let region = unsafe {
                MmapRegionBuilder::new_with_bitmap(len, AtomicBitmap::with_len(len))
                    .with_raw_mmap_pointer(host)
            }
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_PRIVATE)
            .build()
            .map_err(|e| fail(&e))?;
            GuestRegionMmap::new(region, at).ok_or_else(|| fail(&"a region past the end"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| fail(&e))?;
    for r in mem.iter() {
        if let Ok(base) = r.get_host_address(vm_memory::MemoryRegionAddress(0)) {
            // Huge pages where the host's THP is "madvise" (Debian's
            // default), as QEMU asks for its RAM: a 512th of the page
            // faults, for the guest and for a receive that fills memory
            // from a stream, and fewer TLB misses. Only a hint. Not for
            // the first 2 MiB, which hold the boot structures, the BIOS
            // area and the start of the kernel: a few KiB of it touched
            // by an idle guest would take a whole 2 MiB page of the host
            // (docs/BENCHMARKS.md, "Density").
            let len = r.len() as usize;
            let small = if r.start_addr().0 == 0 {
                len.min(HUGE_PAGE)
            } else {
                0
            };
            // SAFETY: both ranges lie inside the region's own mapping.
            unsafe {
                libc::madvise(base.cast(), small, libc::MADV_NOHUGEPAGE);
                libc::madvise(base.add(small).cast(), len - small, libc::MADV_HUGEPAGE);
            }
        }
    }
    Ok(mem)
}

/// An anonymous private mapping of `len` bytes (MAP_NORESERVE: pages are
/// only taken from the host as the guest touches them) that starts on a
/// 2 MiB boundary, as the guest-physical regions do. KVM maps a huge
/// page of the host into the guest as one huge page only where guest
/// and host addresses agree modulo 2 MiB; else every 4 KiB the guest
/// touches is a nested page fault of its own (28,000 more exits to
/// boot Linux in 256 MiB, docs/BENCHMARKS.md). mmap gives only 4 KiB
/// alignment, so 2 MiB more is mapped and the ends trimmed. Never
/// unmapped: guest memory lives for the process.
fn map_aligned(len: usize) -> std::io::Result<*mut u8> {
    let span = len
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: a new anonymous mapping at an address the kernel picks; it
    // replaces nothing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_PRIVATE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let base = p as usize;
    let start = base.next_multiple_of(HUGE_PAGE);
    let (head, tail) = (start - base, span - (start - base) - len);
    // SAFETY: both ranges lie inside the mapping just made, outside the
    // part kept, and nothing refers to them.
    unsafe {
        if head > 0 {
            libc::munmap(p, head);
        }
        if tail > 0 {
            libc::munmap((start + len) as *mut libc::c_void, tail);
        }
    }
    Ok(start as *mut u8)
}

/// The snapshot file guest memory is mapped from (map_image), where in
/// it the image starts, and the host address of that memory: then a page
/// that is not resident may still hold the file's data. One guest a
/// process, so one at most.
static MAPPED: OnceLock<(std::fs::File, u64, usize)> = OnceLock::new();

fn mapped(mem: &GuestMemory) -> Option<(&std::fs::File, u64)> {
    let (file, start, host) = MAPPED.get()?;
    let first = mem.iter().next()?;
    let base = first
        .get_host_address(vm_memory::MemoryRegionAddress(0))
        .ok()?;
    (base as usize == *host).then_some((file, *start))
}

/// Whether `mem` is mapped from a snapshot file.
pub fn file_backed(mem: &GuestMemory) -> bool {
    mapped(mem).is_some()
}

/// For `len` bytes of a mapped image from `at` (counted from the image's
/// start), whether each page lies where the file has data rather than a
/// hole (SEEK_DATA and SEEK_HOLE): a page in a hole that this guest never
/// wrote is zero. None where the file cannot say.
pub fn file_data(mem: &GuestMemory, at: u64, len: usize) -> Option<Vec<bool>> {
    use std::os::fd::AsRawFd;
    let (file, start) = mapped(mem)?;
    let page = 4096u64;
    let (from, to) = (start + at, start + at + len as u64);
    let mut data = vec![false; len.div_ceil(4096)];
    let seek = |off: u64, whence| {
        // SAFETY: lseek on a descriptor we own; it touches no memory.
        let r = unsafe { libc::lseek(file.as_raw_fd(), off as libc::off_t, whence) };
        u64::try_from(r).ok()
    };
    let mut off = from;
    while off < to {
        // ENXIO: no data after off, all holes to the end.
        let Some(d) = seek(off, libc::SEEK_DATA) else {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return None;
        };
        if d >= to {
            break;
        }
        let h = seek(d, libc::SEEK_HOLE)?.min(to);
        let first = (d - from) / page;
        let last = (h - from).div_ceil(page);
        let n = data.len();
        for b in &mut data[(first as usize).min(n)..(last as usize).min(n)] {
            *b = true;
        }
        off = h.max(d + 1);
    }
    Some(data)
}

/// Puts a snapshot file's memory image in place of the guest's RAM,
/// each region mapped privately from `file` at `offset` onwards, region
/// after region: a page is read from the file (the page cache, shared
/// with every other guest mapping it) only when first touched, and copied
/// only when written. Called before any vCPU runs; KVM's memory slots
/// name the same addresses, so they need no change. No MADV_HUGEPAGE:
/// a huge page would be a private copy, and the point is to share.
pub fn map_image(mem: &GuestMemory, file: &std::fs::File, offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let host = |r: &vm_memory::GuestRegionMmap<AtomicBitmap>| {
        r.get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| std::io::Error::other(e.to_string()))
    };
    let Some(first) = mem.iter().next() else {
        return Ok(());
    };
    // Before any region is mapped: should a later one fail, the earlier
    // ones are the file's all the same, and a send must know it.
    let _ = MAPPED.set((file.try_clone()?, offset, host(first)? as usize));
    let mut at = offset;
    for r in mem.iter() {
        let host = host(r)?;
        let len = r.len() as usize;
        let off = libc::off_t::try_from(at).map_err(|_| std::io::Error::other("offset"))?;
        // SAFETY: [host, host + len) is exactly this region's own mapping,
        // made by vm-memory and never unmapped (guest memory lives for the
        // process): MAP_FIXED swaps its pages for the file's in one step.
        // Nothing holds a Rust reference into it (vm-memory reads and
        // writes through raw pointers), and no vCPU or device thread runs
        // yet; KVM drops whatever it had mapped of the old pages.
        let p = unsafe {
            libc::mmap(
                host.cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        at += r.len();
    }
    Ok(())
}

/// The guest's RAM in bytes (without the holes).
pub fn size(mem: &GuestMemory) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// How much of the guest's RAM the host has actually given it: resident
/// pages of the mappings, as mincore(2) sees them. Counted in chunks so
/// that a large guest needs no large vector.
pub fn resident(mem: &GuestMemory) -> u64 {
    const PAGE: usize = 4096;
    const CHUNK: usize = 64 << 20;
    let mut pages = 0u64;
    let mut vec = vec![0u8; CHUNK / PAGE];
    for r in mem.iter() {
        let Ok(base) = r.get_host_address(vm_memory::MemoryRegionAddress(0)) else {
            continue;
        };
        let len = r.len() as usize;
        let mut off = 0;
        while off < len {
            let n = (len - off).min(CHUNK);
            // SAFETY: [base + off, base + off + n) lies inside the region's
            // mapping, which lives as long as `mem`; base is page-aligned
            // (mmap) and `vec` has a byte for each of the n / PAGE pages.
            let rc = unsafe { libc::mincore(base.add(off).cast(), n, vec.as_mut_ptr()) };
            if rc == 0 {
                pages += vec[..n.div_ceil(PAGE)]
                    .iter()
                    .filter(|b| *b & 1 != 0)
                    .count() as u64;
            }
            off += n;
        }
    }
    pages * PAGE as u64
}

/// Whether the host can swap guest pages out: then a page that is not
/// resident may still hold data. Unknown counts as yes.
pub fn host_swaps() -> bool {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("SwapTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .is_none_or(|kb| kb > 0)
}

/// mincore(2) of `len` bytes at `addr` (page-aligned): a byte a page,
/// bit 0 set where the page is resident.
pub fn residency(addr: *const u8, len: usize) -> Option<Vec<u8>> {
    let mut vec = vec![0u8; len.div_ceil(4096)];
    // SAFETY: the caller passes a live mapping of len bytes at addr; vec
    // has a byte for each of its pages.
    let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
    (rc == 0).then_some(vec)
}

/// MemTotal + SwapTotal: what the host could ever give a guest.
fn host_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb << 10)
    };
    Some(field("MemTotal:")? + field("SwapTotal:").unwrap_or(0))
}

/// The e820 map the guest is told about, as (start, size, type).
pub fn e820_map(size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, VMGENID_ADDR, E820_RAM),
        (VMGENID_ADDR, EBDA_START - VMGENID_ADDR, E820_RESERVED),
        (EBDA_START, 0xa0000 - EBDA_START, E820_RESERVED),
        (ACPI_START, BIOS_END - ACPI_START, E820_RESERVED),
        (HIMEM_START, low_ram_end(size) - HIMEM_START, E820_RAM),
    ];
    if size > MMIO_HOLE_START {
        map.push((MMIO_HOLE_END, size - MMIO_HOLE_START, E820_RAM));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn regions_start_on_a_huge_page_as_their_guest_addresses_do() {
        // 4 GiB + 8 MiB: two regions, below and above the hole.
        let mem = create((4 << 30) + (8 << 20), "-m 4104M").unwrap();
        assert_eq!(mem.iter().count(), 2);
        for r in mem.iter() {
            let host = r
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .unwrap();
            assert_eq!(host as usize % HUGE_PAGE, 0);
            assert_eq!(r.start_addr().0 % HUGE_PAGE as u64, 0);
        }
        let top = GuestAddress(MMIO_HOLE_END + (8 << 20) - 1);
        mem.write_obj(7u8, top).unwrap();
        assert_eq!(mem.read_obj::<u8>(top).unwrap(), 7);
    }

    #[test]
    fn resident_counts_touched_pages_only() {
        let mem = create(64 << 20, "-m 64M").unwrap();
        assert_eq!(size(&mem), 64 << 20);
        let before = resident(&mem);
        for page in 0..100u64 {
            mem.write_obj(1u8, GuestAddress(page * 4096 * 3)).unwrap();
        }
        let after = resident(&mem);
        assert!(after >= before + 100 * 4096, "{before} -> {after}");
        assert!(after < 8 << 20, "{after}");
    }

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(ram_regions(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
        let e = e820_map(512 << 20);
        assert_eq!(
            e.last(),
            Some(&(HIMEM_START, (512 << 20) - HIMEM_START, E820_RAM))
        );
    }

    #[test]
    fn the_vmgenid_page_is_reserved_not_ram() {
        let e = e820_map(16 << 20);
        let holding = |addr: u64| e.iter().filter(move |m| m.0 <= addr && addr < m.0 + m.1);
        let types: Vec<u32> = holding(VMGENID_ADDR).map(|m| m.2).collect();
        assert_eq!(types, [E820_RESERVED]);
        assert_eq!(holding(VMGENID_ADDR + 15).count(), 1);
        // Sorted and not overlapping, as Linux wants the map.
        for w in e.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{e:x?}");
        }
    }

    #[test]
    fn large_guest_skips_the_hole() {
        let r = ram_regions(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START as usize));
        assert_eq!(r[1], (GuestAddress(MMIO_HOLE_END), (1 << 30) as usize));
        let ram: u64 = e820_map(4 << 30)
            .iter()
            .filter(|e| e.2 == E820_RAM)
            .map(|e| e.1)
            .sum();
        // All of it but the vmgenid page, the EBDA and BIOS area below 1 MiB.
        assert_eq!(ram, (4 << 30) - (HIMEM_START - VMGENID_ADDR));
    }
}
