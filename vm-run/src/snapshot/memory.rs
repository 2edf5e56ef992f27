//! Guest memory in a stream: MEM sections, each a guest address and a
//! run of whole pages; or, in a regular file, one MIMG section and the
//! image after it, page-aligned in the file, whose zero pages are holes.
//! Zero pages are left out; a receiver's memory is zero to begin with.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::live::Dirty;
use super::stream::{Dec, Enc, Reader, StreamError, Tag, Writer};
use super::{MEM_RUN_PAGES, PAGE};
use crate::memory::GuestMemory;

/// An MIMG section: where the image starts, counted from the stream's
/// start, and the RAM regions (guest address, bytes) it holds, back to
/// back.
#[derive(Debug, PartialEq)]
pub struct ImageLayout {
    pub offset: u64,
    pub regions: Vec<(u64, u64)>,
}

impl ImageLayout {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u64(self.offset).u32(self.regions.len() as u32);
        for (addr, len) in &self.regions {
            e.u64(*addr).u64(*len);
        }
        e.0
    }

    pub fn decode(payload: &[u8]) -> Result<Self, StreamError> {
        let mut d = Dec::new(Tag::Image, payload);
        let offset = d.u64()?;
        let n = d.u32()?;
        if n > 8 {
            return Err(d.bad(format!("{n} memory regions")));
        }
        let regions = (0..n)
            .map(|_| Ok((d.u64()?, d.u64()?)))
            .collect::<Result<Vec<_>, StreamError>>()?;
        d.end()?;
        Ok(ImageLayout { offset, regions })
    }

    fn len(&self) -> u64 {
        self.regions.iter().map(|r| r.1).sum()
    }
}

/// Where a stream into `out` starts in it, when `out` is a regular file
/// that a memory image can be written into at page-aligned offsets with
/// holes: open for writing at its end (so that a skipped page reads as
/// zero) and not for appending (which would put every write at the end).
pub fn image_target(out: &File) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let meta = out.metadata().ok()?;
    if !meta.file_type().is_file() {
        return None;
    }
    // SAFETY: F_GETFL takes no argument and touches no memory of ours.
    let flags = unsafe { libc::fcntl(out.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 || flags & libc::O_APPEND != 0 {
        return None;
    }
    let mut f = out;
    let at = f.stream_position().ok()?;
    (meta.len() == at).then_some(at)
}

/// Every non-zero page as one image in the file `w` writes (at `base` in
/// it): an MIMG section, zeros up to the next page boundary of the file,
/// then each region's pages, written where they belong; a zero page is
/// not written at all, and stays a hole. The guest is paused.
pub fn write_image(
    w: &mut Writer<&mut File>,
    mem: &GuestMemory,
    skip_absent: bool,
    base: u64,
) -> io::Result<()> {
    let regions = regions(mem)?;
    let mut layout = ImageLayout {
        offset: 0,
        regions: regions.iter().map(|(a, b)| (*a, b.len() as u64)).collect(),
    };
    let desc = layout.encode().len() as u64;
    let after = base + w.position() + 16 + desc;
    layout.offset = after.next_multiple_of(PAGE as u64) - base;
    w.section(Tag::Image, &[&layout.encode()])?;
    let pad = layout.offset - w.position();
    let total = layout.len();
    let file = w.raw(pad + total);
    let mut image = 0;
    let at = base + layout.offset;
    for (_, bytes) in &regions {
        nonzero_runs(
            mem,
            bytes,
            image,
            skip_absent,
            usize::MAX,
            |start, pages| file.write_all_at(pages, at + image + start as u64),
        )?;
        image += bytes.len() as u64;
    }
    let at = at + image;
    // The stream goes on past the image; the file grows with holes.
    file.seek(SeekFrom::Start(at))?;
    Ok(())
}

/// Reads the image an MIMG section describes into `mem`, or, where the
/// input is a file that may be mapped, maps it (memory::map_image). The
/// image must be the guest's memory exactly, and a file must hold all of
/// it: a mapped page past the file's end would kill the guest when
/// touched.
pub fn load_image<R: Read>(
    r: &mut Reader<R>,
    mem: &GuestMemory,
    layout: &ImageLayout,
) -> Result<(), StreamError> {
    let bad = |why: String| StreamError::Bad(Tag::Image, why);
    let have: Vec<(u64, u64)> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
    if layout.regions != have {
        return Err(bad(format!(
            "memory regions {:x?}, the guest's are {have:x?}",
            layout.regions
        )));
    }
    let pad = layout
        .offset
        .checked_sub(r.position())
        .filter(|p| *p < PAGE as u64)
        .ok_or_else(|| bad(format!("image at {:#x}", layout.offset)))?;
    let total = layout.len();
    if let Some((file, start)) = r.file() {
        let at = start + layout.offset;
        let meta = file.metadata()?;
        // A file others may write could change under the guest: read it.
        if at.is_multiple_of(PAGE as u64) && meta.mode() & 0o022 == 0 {
            // The image and END (16 + 8 bytes) after it.
            if meta.len() < at + total + 24 {
                return Err(StreamError::Truncated);
            }
            // A file that cannot be mapped (a filesystem without mmap) is
            // read: where a region was mapped before the failure, it holds
            // these same bytes already.
            if crate::memory::map_image(mem, file, at).is_ok() {
                return r.skip_in_file(pad + total);
            }
        }
    }
    let mut buf = vec![0; pad as usize];
    r.read_raw(&mut buf)?;
    buf.resize(1 << 20, 0);
    for (addr, len) in &layout.regions {
        let mut off = 0;
        while off < *len {
            let n = (len - off).min(buf.len() as u64) as usize;
            r.read_raw(&mut buf[..n])?;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                // Memory is zero to begin with: leave it untouched.
                if !is_zero(page) {
                    let ga = GuestAddress(addr + off + (i * PAGE) as u64);
                    mem.write_slice(page, ga)
                        .map_err(|_| bad(format!("page at {:#x}", ga.0)))?;
                }
            }
            off += n as u64;
        }
    }
    Ok(())
}

/// Every non-zero page of guest memory. `still`: the guest is paused.
/// While it runs (the first round of a live migration) a page may change
/// as it is read: the dirty log has it sent again.
pub fn write_memory<W: Write>(
    w: &mut Writer<W>,
    mem: &GuestMemory,
    skip_absent: bool,
    still: bool,
) -> io::Result<()> {
    let mut copy = (!still).then(|| Vec::with_capacity(MEM_RUN_PAGES * PAGE));
    let mut image = 0;
    for (base, bytes) in regions(mem)? {
        // A zero page costs nothing in the stream, so its size follows
        // what the guest touched.
        nonzero_runs(
            mem,
            bytes,
            image,
            skip_absent,
            MEM_RUN_PAGES,
            |off, pages| run(w, base + off as u64, pages, copy.as_mut()),
        )?;
        image += bytes.len() as u64;
    }
    Ok(())
}

/// Calls `emit` with each run (offset, bytes) of at most `max` non-zero
/// pages of `bytes`, which start `image` bytes into guest memory. With
/// `skip_absent` (a host without swap), pages the host never gave the
/// guest are not even read (mincore), in chunks so that the residency
/// vector stays small; in memory mapped from a snapshot file, a page the
/// guest never wrote is also there where the file has data.
fn nonzero_runs(
    mem: &GuestMemory,
    bytes: &[u8],
    image: u64,
    skip_absent: bool,
    max: usize,
    mut emit: impl FnMut(usize, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    const CHUNK: usize = 64 << 20;
    let mapped = crate::memory::file_backed(mem);
    for (c, chunk) in bytes.chunks(CHUNK).enumerate() {
        let mut present = if skip_absent {
            crate::memory::residency(chunk.as_ptr(), chunk.len())
        } else {
            None
        };
        if mapped {
            let data = crate::memory::file_data(mem, image + (c * CHUNK) as u64, chunk.len());
            present = match (present, data) {
                (Some(mut p), Some(d)) => {
                    for (p, d) in p.iter_mut().zip(d) {
                        *p |= u8::from(d);
                    }
                    Some(p)
                }
                _ => None,
            };
        }
        let present = present.as_deref();
        let keep = |i: usize| {
            present.is_none_or(|p| p.get(i).is_none_or(|b| b & 1 != 0))
                && !is_zero(&chunk[i * PAGE..(i + 1) * PAGE])
        };
        for (start, end) in page_runs(chunk.len() / PAGE, max, keep) {
            emit(c * CHUNK + start * PAGE, &chunk[start * PAGE..end * PAGE])?;
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
    let mut copy = (!still).then(|| Vec::with_capacity(MEM_RUN_PAGES * PAGE));
    for (start, end) in page_runs(bytes.len() / PAGE, MEM_RUN_PAGES, keep) {
        run(
            w,
            base + (start * PAGE) as u64,
            &bytes[start * PAGE..end * PAGE],
            copy.as_mut(),
        )?;
    }
    Ok(())
}

/// The runs (first page, page past the last) of at most `max` pages of
/// `0..pages` that `keep` picks, in order.
fn page_runs(
    pages: usize,
    max: usize,
    keep: impl Fn(usize) -> bool,
) -> impl Iterator<Item = (usize, usize)> {
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < pages && !keep(i) {
            i += 1;
        }
        if i == pages {
            return None;
        }
        let start = i;
        i += 1;
        while i < pages && i - start < max && keep(i) {
            i += 1;
        }
        Some((start, i))
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const MIB: usize = 1 << 20;

    fn guest() -> GuestMemory {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MIB)]).unwrap();
        mem.write_slice(&[0xaa; PAGE], GuestAddress(3 * PAGE as u64))
            .unwrap();
        mem.write_slice(&[0x55; 100], GuestAddress(100 * PAGE as u64))
            .unwrap();
        mem
    }

    fn pages(mem: &GuestMemory) -> Vec<(usize, u8)> {
        let mut seen = Vec::new();
        let mut page = [0u8; PAGE];
        for i in 0..MIB / PAGE {
            mem.read_slice(&mut page, GuestAddress((i * PAGE) as u64))
                .unwrap();
            if !is_zero(&page) {
                seen.push((i, page[0]));
            }
        }
        seen
    }

    /// A stream of `mem` with its memory as an image, into a new file.
    fn image_file(mem: &GuestMemory, name: &str) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("vm-run-{}-{name}", std::process::id()));
        let mut f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let base = image_target(&f).expect("a new file takes an image");
        let mut w = Writer::new(&mut f).unwrap();
        w.section(Tag::Config, &[b"conf"]).unwrap();
        write_image(&mut w, mem, true, base).unwrap();
        w.finish().unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        (path, f)
    }

    fn read_image<R: Read>(r: &mut Reader<R>, mem: &GuestMemory) -> Result<(), StreamError> {
        assert_eq!(r.next(100)?.map(|s| s.0), Some(Tag::Config));
        let layout = match r.next(100)? {
            Some((Tag::Image, p)) => ImageLayout::decode(p)?,
            _ => panic!("no MIMG"),
        };
        assert_eq!(layout.regions, [(0, MIB as u64)]);
        assert!((layout.offset as usize).is_multiple_of(PAGE));
        load_image(r, mem, &layout)?;
        assert!(r.next(100)?.is_none(), "END after the image");
        Ok(())
    }

    #[test]
    fn an_image_in_a_file_is_sparse_mapped_and_sent_again() {
        let (path, f) = image_file(&guest(), "image");
        let meta = f.metadata().unwrap();
        assert!(meta.len() > MIB as u64, "{}", meta.len());
        // Two pages of data (the filesystem may round up), not 1 MiB.
        assert!(meta.blocks() * 512 < MIB as u64 / 4, "{}", meta.blocks());

        // Mapped from the file: the same pages.
        let clone = GuestMemory::from_ranges(&[(GuestAddress(0), MIB)]).unwrap();
        let mut r = Reader::new(f.try_clone().unwrap())
            .unwrap()
            .with_file(f.try_clone().unwrap());
        read_image(&mut r, &clone).unwrap();
        assert!(crate::memory::file_backed(&clone));
        assert_eq!(pages(&clone), [(3, 0xaa), (100, 0x55)]);
        // The clone writes a page; the file does not change.
        clone
            .write_slice(&[7; 8], GuestAddress(5 * PAGE as u64))
            .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(pages(&clone), [(3, 0xaa), (5, 7), (100, 0x55)]);

        // Sent again: what it got from the file and what it wrote, all of
        // it (the holes are not read).
        let mut w = Writer::new(Vec::new()).unwrap();
        write_memory(&mut w, &clone, true, true).unwrap();
        let out = w.finish().unwrap();
        let mut r = Reader::new(out.as_slice()).unwrap();
        let again = GuestMemory::from_ranges(&[(GuestAddress(0), MIB)]).unwrap();
        while let Some((tag, p)) = r.next(1 << 21).unwrap() {
            assert_eq!(tag, Tag::Memory);
            load_run(&again, p).unwrap();
        }
        assert_eq!(pages(&again), [(3, 0xaa), (5, 7), (100, 0x55)]);

        // The same bytes through a pipe: read, not mapped.
        let piped = GuestMemory::from_ranges(&[(GuestAddress(0), MIB)]).unwrap();
        read_image(&mut Reader::new(bytes.as_slice()).unwrap(), &piped).unwrap();
        assert!(!crate::memory::file_backed(&piped));
        assert_eq!(pages(&piped), [(3, 0xaa), (100, 0x55)]);

        // Cut inside the image: refused before anything is mapped, from
        // the file and from a pipe.
        let cut = GuestMemory::from_ranges(&[(GuestAddress(0), MIB)]).unwrap();
        f.set_len(meta.len() / 2).unwrap();
        (&f).seek(SeekFrom::Start(0)).unwrap();
        let mut r = Reader::new(f.try_clone().unwrap())
            .unwrap()
            .with_file(f.try_clone().unwrap());
        assert!(matches!(
            read_image(&mut r, &cut),
            Err(StreamError::Truncated)
        ));
        let half = &bytes[..bytes.len() / 2];
        let mut r = Reader::new(half).unwrap();
        assert!(matches!(
            read_image(&mut r, &cut),
            Err(StreamError::Truncated)
        ));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn an_image_of_another_size_is_refused() {
        let (path, f) = image_file(&guest(), "size");
        let other = GuestMemory::from_ranges(&[(GuestAddress(0), 2 * MIB)]).unwrap();
        let mut r = Reader::new(f).unwrap();
        assert!(matches!(
            read_image_any(&mut r, &other),
            Err(StreamError::Bad(Tag::Image, _))
        ));
        let _ = std::fs::remove_file(path);
    }

    fn read_image_any<R: Read>(r: &mut Reader<R>, mem: &GuestMemory) -> Result<(), StreamError> {
        r.next(100)?;
        let layout = match r.next(100)? {
            Some((Tag::Image, p)) => ImageLayout::decode(p)?,
            _ => panic!("no MIMG"),
        };
        load_image(r, mem, &layout)
    }

    #[test]
    fn not_every_file_takes_an_image() {
        let path = std::env::temp_dir().join(format!("vm-run-{}-append", std::process::id()));
        std::fs::write(&path, b"before").unwrap();
        let appending = File::options().append(true).open(&path).unwrap();
        assert_eq!(image_target(&appending), None);
        // Open at its start with bytes after: a skipped page would keep them.
        let over = File::options().write(true).open(&path).unwrap();
        assert_eq!(image_target(&over), None);
        let mut at_end = File::options().write(true).open(&path).unwrap();
        at_end.seek(SeekFrom::End(0)).unwrap();
        assert_eq!(image_target(&at_end), Some(6));
        assert_eq!(image_target(&File::open("/dev/null").unwrap()), None);
        let _ = std::fs::remove_file(path);
    }
}
