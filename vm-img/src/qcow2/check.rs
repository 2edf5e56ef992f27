//! `vm-img check`: the refcount walk, as `qemu-img check` does it.
//!
//! imago reads and writes images but does not check them, so this walk is
//! ours: every cluster the metadata references (header, L1 and L2 tables,
//! data, refcount table and blocks, snapshot tables) is counted, and the
//! counts are compared with the refcounts on disk. A stored count below
//! the references is corruption (a later allocation would hand the
//! cluster out twice); one above is a leak (space wasted, no data at
//! risk), which is what an interrupted allocating write leaves.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::header::{Header, MAX_L1_BYTES};

/// Bits 9..=55 of an L1 entry or a standard L2 entry: the host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
const ZERO: u64 = 1;
const L1_RESERVED: u64 = 0x7f00_0000_0000_01fe;
const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;
const REFBLOCK_RESERVED: u64 = 0x1ff;

/// More clusters than this in one file are not checked: the counts take
/// 8 bytes a cluster (512 MiB here; 4 TiB of 64 KiB clusters).
const MAX_CLUSTERS: u64 = 1 << 26;
/// L2 entries walked at most: snapshots may share L2 tables, so a hostile
/// image could have the walk read one table billions of times.
const MAX_L2_ENTRIES: u64 = 1 << 31;
/// Problems listed one by one; the rest are only counted.
const MAX_LISTED: usize = 50;

#[derive(Debug, Default)]
pub struct Report {
    pub corruptions: u64,
    pub leaks: u64,
    /// The first problems found, one line each.
    pub problems: Vec<String>,
    /// Guest clusters that have data in this image (not in its base).
    pub allocated: u64,
    pub compressed: u64,
    /// Guest clusters the virtual size spans.
    pub guest_clusters: u64,
}

impl Report {
    fn corrupt(&mut self, msg: String) {
        self.corruptions += 1;
        self.note(msg);
    }

    fn leak(&mut self, msg: String) {
        self.leaks += 1;
        self.note(msg);
    }

    fn note(&mut self, msg: String) {
        if self.problems.len() < MAX_LISTED {
            self.problems.push(msg);
        }
    }

    pub fn is_clean(&self) -> bool {
        self.corruptions == 0 && self.leaks == 0
    }
}

struct Walk<'a> {
    file: &'a File,
    h: &'a Header,
    cs: u64,
    /// Host clusters in the file.
    clusters: u64,
    /// References found, per host cluster.
    refs: Vec<u32>,
    report: Report,
    /// (host offset, COPIED set, what) of every L2 table and data cluster
    /// of the active L1, to check against the stored refcount.
    copied: Vec<(u64, bool, String)>,
    /// L2 entries walked so far.
    l2_entries: u64,
}

/// Checks the image in `file` (`file_len` bytes) whose header is `h`.
/// An error means the walk could not be done (an I/O error, or metadata
/// too broken to follow); findings are in the report.
pub fn check(file: &File, h: &Header, file_len: u64) -> io::Result<Report> {
    let cs = h.cluster_size();
    let clusters = file_len.div_ceil(cs);
    if clusters > MAX_CLUSTERS {
        return Err(io::Error::other(format!(
            "{clusters} clusters are more than vm-img checks"
        )));
    }
    if h.has_bitmaps {
        return Err(io::Error::other(
            "images with persistent bitmaps are not checked here",
        ));
    }
    let mut w = Walk {
        file,
        h,
        cs,
        clusters,
        refs: vec![0; clusters as usize],
        report: Report {
            guest_clusters: h.size.div_ceil(cs),
            ..Report::default()
        },
        copied: Vec::new(),
        l2_entries: 0,
    };
    w.reference(0, cs, "header");
    let l1_bytes = u64::from(h.l1_size) * 8;
    w.reference(h.l1_table_offset, l1_bytes, "L1 table");
    w.walk_l1(h.l1_table_offset, h.l1_size, true)?;
    w.walk_snapshots()?;
    let stored = w.walk_refcounts()?;
    w.compare(&stored);
    w.check_copied(&stored);
    Ok(w.report)
}

impl Walk<'_> {
    /// Counts one reference to every cluster in [offset, offset + len).
    fn reference(&mut self, offset: u64, len: u64, what: &str) {
        if len == 0 {
            return;
        }
        let Some(end) = offset.checked_add(len - 1) else {
            self.report
                .corrupt(format!("{what} at {offset:#x} is past the end of the file"));
            return;
        };
        let (first, last) = (offset / self.cs, end / self.cs);
        for c in first..=last {
            match self.refs.get_mut(c as usize) {
                Some(n) => *n = n.saturating_add(1),
                None => {
                    self.report
                        .corrupt(format!("{what} at {offset:#x} is past the end of the file"));
                    return;
                }
            }
        }
    }

    fn in_file(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.clusters * self.cs)
    }

    /// Reads a table of big-endian u64 entries; a short read (the table
    /// runs past the end of the file) is already reported as corruption.
    fn read_table(&self, offset: u64, entries: u64) -> io::Result<Vec<u64>> {
        let mut buf = vec![0u8; (entries * 8) as usize];
        let n = read_upto(self.file, &mut buf, offset)?;
        buf.truncate(n - n % 8);
        Ok(buf
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }

    fn walk_l1(&mut self, l1_offset: u64, l1_size: u32, active: bool) -> io::Result<()> {
        if l1_size == 0 {
            return Ok(());
        }
        let l1 = self.read_table(l1_offset, u64::from(l1_size))?;
        for (i, &e) in l1.iter().enumerate() {
            if e & L1_RESERVED != 0 {
                self.report
                    .corrupt(format!("L1 entry {i} has reserved bits set ({e:#x})"));
            }
            let l2 = e & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            if !l2.is_multiple_of(self.cs) {
                self.report.corrupt(format!(
                    "L2 table of L1 entry {i} at {l2:#x} is not cluster aligned"
                ));
                continue;
            }
            self.reference(l2, self.cs, "L2 table");
            if active {
                self.copied
                    .push((l2, e & COPIED != 0, format!("L2 table of L1 entry {i}")));
            }
            if self.in_file(l2, self.cs) {
                self.walk_l2(i as u64, l2, active)?;
            }
        }
        Ok(())
    }

    fn walk_l2(&mut self, l1_index: u64, l2_offset: u64, active: bool) -> io::Result<()> {
        let h = self.h;
        self.l2_entries += h.l2_entries();
        if self.l2_entries > MAX_L2_ENTRIES {
            return Err(io::Error::other(
                "the snapshots' tables are too many to walk",
            ));
        }
        let entries = self.read_table(l2_offset, h.l2_entries())?;
        let csize_shift = 62 - (h.cluster_bits - 8);
        let csize_mask = (1u64 << (h.cluster_bits - 8)) - 1;
        for (j, &e) in entries.iter().enumerate() {
            let guest = (l1_index * h.l2_entries() + j as u64) * self.cs;
            if e & COMPRESSED != 0 {
                let offset = e & ((1u64 << csize_shift) - 1);
                let sectors = ((e >> csize_shift) & csize_mask) + 1;
                if e & COPIED != 0 {
                    self.report.corrupt(format!(
                        "compressed cluster at guest offset {guest:#x} has the copied flag"
                    ));
                }
                self.reference(offset & !511, sectors * 512, "compressed cluster");
                if active {
                    self.report.allocated += 1;
                    self.report.compressed += 1;
                }
                continue;
            }
            if e & L2_RESERVED != 0 {
                self.report.corrupt(format!(
                    "L2 entry for guest offset {guest:#x} has reserved bits set ({e:#x})"
                ));
            }
            let data = e & OFFSET_MASK;
            if data == 0 {
                if active && h.version >= 3 && e & ZERO != 0 {
                    self.report.allocated += 1;
                }
                continue;
            }
            if !data.is_multiple_of(self.cs) {
                self.report.corrupt(format!(
                    "data cluster for guest offset {guest:#x} at {data:#x} is not cluster aligned"
                ));
                continue;
            }
            if guest >= h.size {
                self.report.corrupt(format!(
                    "data cluster at {data:#x} maps guest offset {guest:#x}, past the virtual size"
                ));
            }
            self.reference(data, self.cs, "data cluster");
            if active {
                self.report.allocated += 1;
                self.copied.push((
                    data,
                    e & COPIED != 0,
                    format!("data cluster for guest offset {guest:#x}"),
                ));
            }
        }
        Ok(())
    }

    fn walk_snapshots(&mut self) -> io::Result<()> {
        let h = self.h;
        if h.nb_snapshots == 0 {
            return Ok(());
        }
        let mut at = h.snapshots_offset;
        let start = at;
        for n in 0..h.nb_snapshots {
            let mut fixed = [0u8; 40];
            if read_upto(self.file, &mut fixed, at)? < 40 {
                self.report.corrupt(format!(
                    "snapshot table entry {n} is past the end of the file"
                ));
                break;
            }
            let be64 = |o: usize| u64::from_be_bytes(fixed[o..o + 8].try_into().unwrap_or([0; 8]));
            let be32 = |o: usize| u32::from_be_bytes(fixed[o..o + 4].try_into().unwrap_or([0; 4]));
            let be16 = |o: usize| u16::from_be_bytes(fixed[o..o + 2].try_into().unwrap_or([0; 2]));
            let (l1_offset, l1_size) = (be64(0), be32(8));
            let (id_len, name_len) = (u64::from(be16(12)), u64::from(be16(14)));
            let extra = u64::from(be32(36));
            let entry_len = (40 + extra + id_len + name_len).next_multiple_of(8);
            if extra > 1024 {
                self.report
                    .corrupt(format!("snapshot {n} has {extra} bytes of extra data"));
                break;
            }
            if u64::from(l1_size) * 8 > MAX_L1_BYTES || l1_offset % self.cs != 0 {
                self.report
                    .corrupt(format!("snapshot {n} has an invalid L1 table"));
            } else {
                self.reference(l1_offset, u64::from(l1_size) * 8, "snapshot L1 table");
                if self.in_file(l1_offset, u64::from(l1_size) * 8) {
                    self.walk_l1(l1_offset, l1_size, false)?;
                }
            }
            at += entry_len;
        }
        self.reference(start, at - start, "snapshot table");
        Ok(())
    }

    /// Counts the refcount structures and reads every stored refcount.
    fn walk_refcounts(&mut self) -> io::Result<Vec<u32>> {
        let h = self.h;
        let rt_entries = u64::from(h.refcount_table_clusters) * self.cs / 8;
        self.reference(
            h.refcount_table_offset,
            u64::from(h.refcount_table_clusters) * self.cs,
            "refcount table",
        );
        let rt = self.read_table(h.refcount_table_offset, rt_entries)?;
        let per_block = h.refcounts_per_block();
        let mut stored = vec![0u32; self.clusters as usize];
        let mut block = vec![0u8; self.cs as usize];
        for (i, &e) in rt.iter().enumerate() {
            let offset = e & !REFBLOCK_RESERVED;
            if e & REFBLOCK_RESERVED != 0 {
                self.report.corrupt(format!(
                    "refcount table entry {i} has reserved bits set ({e:#x})"
                ));
            }
            if offset == 0 {
                continue;
            }
            if !offset.is_multiple_of(self.cs) {
                self.report.corrupt(format!(
                    "refcount block {i} at {offset:#x} is not cluster aligned"
                ));
                continue;
            }
            self.reference(offset, self.cs, "refcount block");
            let first = i as u64 * per_block;
            if first >= self.clusters || !self.in_file(offset, self.cs) {
                continue;
            }
            let n = read_upto(self.file, &mut block, offset)?;
            block[n..].fill(0);
            let count = per_block.min(self.clusters - first);
            for k in 0..count {
                // No count above 2^32 is real; it compares as "too many".
                let n = refcount(&block, k, h.refcount_bits());
                stored[(first + k) as usize] = u32::try_from(n).unwrap_or(u32::MAX);
            }
        }
        Ok(stored)
    }

    fn compare(&mut self, stored: &[u32]) {
        for (c, (&s, &r)) in stored.iter().zip(self.refs.iter()).enumerate() {
            if s < r {
                self.report
                    .corrupt(format!("cluster {c} has refcount {s} but {r} references"));
            } else if s > r {
                self.report
                    .leak(format!("leaked cluster {c}: refcount {s}, {r} references"));
            }
        }
    }

    /// The COPIED flag says "refcount is exactly 1, write in place": a
    /// wrong one makes a writer overwrite shared data (or copy for
    /// nothing).
    fn check_copied(&mut self, stored: &[u32]) {
        for (offset, copied, what) in std::mem::take(&mut self.copied) {
            let Some(&s) = stored.get((offset / self.cs) as usize) else {
                continue;
            };
            if (s == 1) != copied {
                self.report.corrupt(format!(
                    "{what}: copied flag is {} but its refcount is {s}",
                    if copied { "set" } else { "clear" }
                ));
            }
        }
    }
}

/// Does the image count its own header cluster? A writer allocating in
/// an image whose refcount table has no first block would put that block
/// at cluster 0, over the header (imago 0.2.6 then loops until its stack
/// runs out): such an image is not opened for writing.
pub fn header_is_counted(file: &File, h: &Header) -> io::Result<bool> {
    let mut e = [0u8; 8];
    if read_upto(file, &mut e, h.refcount_table_offset)? < 8 {
        return Ok(false);
    }
    let block = u64::from_be_bytes(e) & !REFBLOCK_RESERVED;
    if block == 0 || !block.is_multiple_of(h.cluster_size()) {
        return Ok(false);
    }
    let mut first = [0u8; 8];
    let n = read_upto(file, &mut first, block)?;
    Ok(n == 8 && refcount(&first, 0, h.refcount_bits()) > 0)
}

/// Entry `k` of a refcount block whose entries are `bits` wide.
fn refcount(block: &[u8], k: u64, bits: u32) -> u64 {
    let k = k as usize;
    match bits {
        1 | 2 | 4 => {
            let per_byte = 8 / bits as usize;
            let byte = block[k / per_byte];
            let shift = (k % per_byte) * bits as usize;
            u64::from((byte >> shift) & ((1u8 << bits) - 1))
        }
        8 => u64::from(block[k]),
        _ => {
            let w = bits as usize / 8;
            block[k * w..(k + 1) * w]
                .iter()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        }
    }
}

/// Reads as much of `buf` as the file has at `offset`. No file has
/// anything past 2^63 (where pread fails with EINVAL): an offset from a
/// hostile table that points there reads nothing, as past the end.
pub(crate) fn read_upto(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let Some(at) = offset
            .checked_add(done as u64)
            .filter(|&at| at <= i64::MAX as u64)
        else {
            break;
        };
        match file.read_at(&mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_widths() {
        let mut block = [0u8; 16];
        block[..5].copy_from_slice(&[0b1011_0100, 0x12, 0x34, 0x56, 0x78]);
        block[15] = 9;
        assert_eq!(refcount(&block, 2, 1), 1);
        assert_eq!(refcount(&block, 3, 1), 0);
        assert_eq!(refcount(&block, 1, 2), 1);
        assert_eq!(refcount(&block, 1, 4), 0b1011);
        assert_eq!(refcount(&block, 1, 8), 0x12);
        assert_eq!(refcount(&block, 1, 16), 0x3456);
        assert_eq!(refcount(&block, 1, 32), 0x7800_0000);
        assert_eq!(refcount(&block, 1, 64), 9);
    }
}
