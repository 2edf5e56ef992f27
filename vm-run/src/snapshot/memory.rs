//! Guest memory in a stream: MEM sections, each a guest address and a
//! run of whole pages. Zero pages are left out; a receiver's memory is
//! zero to begin with.

use std::io::{self, Write};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::live::Dirty;
use super::stream::{StreamError, Tag, Writer};
use super::{MEM_RUN_PAGES, PAGE};
use crate::memory::GuestMemory;

/// Every non-zero page of guest memory. `still`: the guest is paused.
/// While it runs (the first round of a live migration) a page may change
/// as it is read: the dirty log has it sent again.
pub fn write_memory<W: Write>(
    w: &mut Writer<W>,
    mem: &GuestMemory,
    skip_absent: bool,
    still: bool,
) -> io::Result<()> {
    for (base, bytes) in regions(mem)? {
        // In chunks, so that the residency vector stays small.
        const CHUNK: usize = 64 << 20;
        for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
            let present = if skip_absent {
                crate::memory::residency(chunk.as_ptr(), chunk.len())
            } else {
                None
            };
            // A zero page costs nothing in the stream, so its size
            // follows what the guest touched.
            let present = present.as_deref();
            let nonzero = |i: usize| {
                present.is_none_or(|p| p.get(i).is_none_or(|b| b & 1 != 0))
                    && !is_zero(&chunk[i * PAGE..(i + 1) * PAGE])
            };
            write_runs(w, base + (i * CHUNK) as u64, chunk, nonzero, still)?;
        }
    }
    Ok(())
}

/// Whether a page is all zeros. 64 bytes at a time, which the compiler
/// turns into vector ORs: byte by byte, this check took most of a send.
fn is_zero(page: &[u8]) -> bool {
    page.chunks(64).all(|c| c.iter().fold(0, |a, b| a | b) == 0)
}

/// The pages `dirty` names (a bitmap per region), zero or not: a page
/// sent before may have become zero since. `still` as for write_memory.
pub fn write_dirty<W: Write>(
    w: &mut Writer<W>,
    mem: &GuestMemory,
    dirty: &Dirty,
    still: bool,
) -> io::Result<()> {
    for ((base, bytes), bits) in regions(mem)?.into_iter().zip(dirty) {
        let is = |i: usize| bits.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1);
        write_runs(w, base, bytes, is, still)?;
    }
    Ok(())
}

/// One MEM section. Pages of a running guest are copied first (into
/// `copy`, one buffer for every run: a new one each time would cost an
/// mmap and its page faults in musl's malloc), so that the checksum is of
/// what is sent.
fn run<W: Write>(
    w: &mut Writer<W>,
    addr: u64,
    pages: &[u8],
    copy: Option<&mut Vec<u8>>,
) -> io::Result<()> {
    let addr = addr.to_le_bytes();
    match copy {
        None => w.section(Tag::Memory, &[&addr, pages]),
        Some(copy) => {
            // Not `pages` itself: the guest may change it between the
            // checksum and the write.
            copy.clear();
            copy.extend_from_slice(pages);
            w.section(Tag::Memory, &[&addr, copy])
        }
    }
}

/// Each RAM region: its guest address and its bytes.
fn regions(mem: &GuestMemory) -> io::Result<Vec<(u64, &[u8])>> {
    mem.iter()
        .map(|region| {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| io::Error::other(e.to_string()))?;
            // SAFETY: the region's mapping is len bytes at host and lives
            // as long as mem. The guest may write it meanwhile (a live
            // round); the bytes are only copied out, and whatever changed
            // is sent again.
            let bytes = unsafe { std::slice::from_raw_parts(host, region.len() as usize) };
            Ok((region.start_addr().0, bytes))
        })
        .collect()
}

/// MEM sections for the pages of `bytes` (at guest address `base`) that
/// `keep` picks, in runs of at most MEM_RUN_PAGES.
fn write_runs<W: Write>(
    w: &mut Writer<W>,
    base: u64,
    bytes: &[u8],
    keep: impl Fn(usize) -> bool,
    still: bool,
) -> io::Result<()> {
    let pages = bytes.len() / PAGE;
    let mut copy = (!still).then(|| Vec::with_capacity(MEM_RUN_PAGES * PAGE));
    let mut i = 0;
    while i < pages {
        if !keep(i) {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < pages && i - start < MEM_RUN_PAGES && keep(i) {
            i += 1;
        }
        run(
            w,
            base + (start * PAGE) as u64,
            &bytes[start * PAGE..i * PAGE],
            copy.as_mut(),
        )?;
    }
    Ok(())
}

/// One MEM section: an address and whole pages, into guest RAM.
pub fn load_run(mem: &GuestMemory, payload: &[u8]) -> Result<(), StreamError> {
    let bad = |why: &str| StreamError::Bad(Tag::Memory, why.to_string());
    if payload.len() < 8 + PAGE || !(payload.len() - 8).is_multiple_of(PAGE) {
        return Err(bad("not whole pages"));
    }
    let addr = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
    mem.write_slice(&payload[8..], GuestAddress(addr))
        .map_err(|_| bad(&format!("pages at {addr:#x} outside guest memory")))?;
    Ok(())
}
