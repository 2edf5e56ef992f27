//! The qcow2 header, read and checked before anything else trusts it.
//!
//! imago reads and writes the image once it is open; this parser comes
//! first so that a hostile header (absurd sizes, tables past the end of
//! the file, unknown features) is refused with one line, before any table
//! is allocated from its numbers. The limits are QEMU's, so that every
//! image qemu-img writes opens here, and nothing QEMU would refuse does.
//! Spec: QEMU's docs/interop/qcow2.txt; what we accept: docs/QCOW2.md.

use std::fmt;

pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// qcow2 clusters are 2^9 to 2^21 bytes.
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU's QCOW_MAX_L1_SIZE and QCOW_MAX_REFTABLE_SIZE.
pub const MAX_L1_BYTES: u64 = 32 << 20;
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// QEMU's QCOW_MAX_SNAPSHOTS.
pub const MAX_SNAPSHOTS: u32 = 65536;
/// A virtual size QEMU accepts (BDRV_MAX_LENGTH is about 2^63 / 512;
/// 2^56 keeps every offset computation far from overflow).
pub const MAX_SIZE: u64 = 1 << 56;

const V2_LEN: usize = 72;
const V3_LEN: usize = 104;

/// Incompatible feature bits (header offset 72).
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;

/// Header extension types.
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
const EXT_BITMAPS: u32 = 0x2385_2875;
const EXT_CRYPTO: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Autoclear bit 0: the bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;

/// Why a header is refused: the message a user sees after the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad<T>(msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(msg.into()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible: u64,
    pub compatible: u64,
    pub autoclear: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub has_bitmaps: bool,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// Does the file start like a qcow2 image?
pub fn is_qcow2(first_bytes: &[u8]) -> bool {
    first_bytes.len() >= 4 && first_bytes[..4] == MAGIC
}

impl Header {
    /// Parses the first cluster of an image (`cluster0`: at least its
    /// first 4 KiB, more if the cluster is larger) whose file is
    /// `file_len` bytes long.
    pub fn parse(cluster0: &[u8], file_len: u64) -> Result<Header, Invalid> {
        if cluster0.len() < V2_LEN || !is_qcow2(cluster0) {
            return bad("not a qcow2 image");
        }
        let version = be32(cluster0, 4);
        if version != 2 && version != 3 {
            return bad(format!("qcow2 version {version} (2 and 3 are known)"));
        }
        let cluster_bits = be32(cluster0, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return bad(format!(
                "cluster size 2^{cluster_bits} (512 bytes to 2 MiB are valid)"
            ));
        }
        let cs = 1u64 << cluster_bits;
        if (cluster0.len() as u64) < cs.min(4096) {
            return bad("truncated in its first cluster");
        }
        let mut h = Header {
            version,
            cluster_bits,
            size: be64(cluster0, 24),
            l1_size: be32(cluster0, 36),
            l1_table_offset: be64(cluster0, 40),
            refcount_table_offset: be64(cluster0, 48),
            refcount_table_clusters: be32(cluster0, 56),
            nb_snapshots: be32(cluster0, 60),
            snapshots_offset: be64(cluster0, 64),
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            refcount_order: 4,
            header_length: V2_LEN as u32,
            backing_file: None,
            backing_format: None,
            has_bitmaps: false,
        };
        if be32(cluster0, 32) != 0 {
            return bad("encrypted images are not supported");
        }
        if version == 3 {
            if cluster0.len() < V3_LEN {
                return bad("truncated header");
            }
            h.incompatible = be64(cluster0, 72);
            h.compatible = be64(cluster0, 80);
            h.autoclear = be64(cluster0, 88);
            h.refcount_order = be32(cluster0, 96);
            h.header_length = be32(cluster0, 100);
            if (h.header_length as usize) < V3_LEN || u64::from(h.header_length) > cs {
                return bad(format!("header length {} is invalid", h.header_length));
            }
            if h.refcount_order > 6 {
                return bad(format!("refcount width 2^{} bits", h.refcount_order));
            }
            // A compression type byte other than zlib's 0 comes with the
            // incompatible bit, which is refused below.
        }
        let known = INCOMPAT_DIRTY | INCOMPAT_CORRUPT;
        let unknown = h.incompatible & !known;
        if unknown & INCOMPAT_DATA_FILE != 0 {
            return bad("images with an external data file are not supported");
        }
        if unknown & INCOMPAT_COMPRESSION != 0 {
            return bad("zstd compression is not supported (zlib is)");
        }
        if unknown & INCOMPAT_EXTL2 != 0 {
            return bad("extended L2 entries (subclusters) are not supported");
        }
        if unknown != 0 {
            return bad(format!("unknown incompatible features {unknown:#x}"));
        }
        h.check_geometry(file_len)?;
        h.read_backing_name(cluster0, cs)?;
        h.read_extensions(cluster0, cs)?;
        Ok(h)
    }

    fn check_geometry(&self, file_len: u64) -> Result<(), Invalid> {
        let cs = self.cluster_size();
        if self.size > MAX_SIZE {
            return bad(format!("virtual size {} is too large", self.size));
        }
        let l1_bytes = u64::from(self.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return bad(format!("L1 table of {} entries is too large", self.l1_size));
        }
        if u64::from(self.l1_size) < self.l1_entries_needed() {
            return bad(format!(
                "L1 table of {} entries is too small for {} bytes",
                self.l1_size, self.size
            ));
        }
        if self.l1_size > 0 {
            self.table_in_file("L1 table", self.l1_table_offset, l1_bytes, file_len)?;
        }
        let rt_bytes = u64::from(self.refcount_table_clusters) * cs;
        if rt_bytes == 0 {
            return bad("no refcount table");
        }
        if rt_bytes > MAX_REFTABLE_BYTES {
            return bad(format!(
                "refcount table of {} clusters is too large",
                self.refcount_table_clusters
            ));
        }
        self.table_in_file(
            "refcount table",
            self.refcount_table_offset,
            rt_bytes,
            file_len,
        )?;
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return bad(format!("{} snapshots is too many", self.nb_snapshots));
        }
        if self.nb_snapshots > 0 {
            // Each entry is at least 40 bytes: the table must fit the file.
            let min = u64::from(self.nb_snapshots) * 40;
            self.table_in_file("snapshot table", self.snapshots_offset, min, file_len)?;
        }
        Ok(())
    }

    fn table_in_file(
        &self,
        what: &str,
        offset: u64,
        len: u64,
        file_len: u64,
    ) -> Result<(), Invalid> {
        if !offset.is_multiple_of(self.cluster_size()) {
            return bad(format!("{what} offset {offset:#x} is not cluster aligned"));
        }
        if offset == 0 {
            return bad(format!("{what} overlaps the header"));
        }
        match offset.checked_add(len) {
            Some(end) if end <= file_len => Ok(()),
            _ => bad(format!(
                "{what} at {offset:#x} ({len} bytes) is past the end of the file ({file_len} bytes)"
            )),
        }
    }

    fn read_backing_name(&mut self, c0: &[u8], cs: u64) -> Result<(), Invalid> {
        let offset = be64(c0, 8);
        let len = be32(c0, 16);
        if offset == 0 {
            return Ok(());
        }
        if len == 0 || len > 1023 {
            return bad(format!("backing file name of {len} bytes"));
        }
        let end = offset.checked_add(u64::from(len));
        if offset < u64::from(self.header_length) || end.is_none_or(|e| e > cs.min(c0.len() as u64))
        {
            return bad("backing file name is outside the first cluster");
        }
        let end = end.unwrap_or(offset);
        let name = &c0[offset as usize..end as usize];
        match std::str::from_utf8(name) {
            Ok(s) if !s.contains('\0') => self.backing_file = Some(s.to_string()),
            _ => return bad("backing file name is not text"),
        }
        Ok(())
    }

    fn read_extensions(&mut self, c0: &[u8], cs: u64) -> Result<(), Invalid> {
        let limit = cs.min(c0.len() as u64) as usize;
        let mut at = self.header_length as usize;
        // A v2 header has no length field: its extensions follow the
        // 72 bytes directly, as QEMU writes them.
        loop {
            if at + 8 > limit {
                return bad("header extensions run past the first cluster");
            }
            let (kind, len) = (be32(c0, at), be32(c0, at + 4) as usize);
            at += 8;
            if kind == EXT_END {
                return Ok(());
            }
            if len > limit - at {
                return bad(format!(
                    "header extension {kind:#x} runs past the first cluster"
                ));
            }
            let data = &c0[at..at + len];
            match kind {
                EXT_BACKING_FORMAT => {
                    let f = std::str::from_utf8(data)
                        .map_err(|_| Invalid("backing format is not text".into()))?;
                    self.backing_format = Some(f.trim_end_matches('\0').to_string());
                }
                EXT_BITMAPS => self.has_bitmaps = true,
                EXT_CRYPTO => return bad("encrypted images are not supported"),
                EXT_DATA_FILE => return bad("images with an external data file are not supported"),
                // 48-byte entries; imago (0.2.6) panics on a partial one.
                EXT_FEATURE_NAMES if len % 48 != 0 => {
                    return bad(format!("feature name table of {len} bytes"));
                }
                EXT_FEATURE_NAMES => {}
                _ => {} // Unknown extensions are to be ignored (the spec says).
            }
            at += len.next_multiple_of(8);
        }
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Entries in one L2 table (or refcount block is separate: see
    /// `refcounts_per_block`).
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    /// L1 entries needed to map `size` bytes.
    pub fn l1_entries_needed(&self) -> u64 {
        let per_l1 = self.cluster_size() * self.l2_entries();
        self.size.div_ceil(per_l1)
    }

    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    pub fn refcounts_per_block(&self) -> u64 {
        self.cluster_size() * 8 / u64::from(self.refcount_bits())
    }

    pub fn is_dirty(&self) -> bool {
        self.incompatible & INCOMPAT_DIRTY != 0
    }

    pub fn is_corrupt(&self) -> bool {
        self.incompatible & INCOMPAT_CORRUPT != 0
    }

    /// What stops imago from opening this image at all: it refuses the
    /// dirty and corrupt flags even for reading. `info` and `check` (ours)
    /// still read such an image.
    pub fn open_refusal(&self) -> Option<&'static str> {
        if self.is_corrupt() {
            Some("marked corrupt (qemu-img check -r all repairs it)")
        } else if self.is_dirty() {
            Some("dirty with lazy refcounts (qemu-img check -r all repairs it)")
        } else {
            None
        }
    }

    /// What stops vm-run or vm-img from writing this image, if anything.
    pub fn write_refusal(&self) -> Option<&'static str> {
        if self.version < 3 {
            Some("qcow2 version 2 images are read-only here (qemu-img amend -o compat=1.1 upgrades them)")
        } else if let Some(why) = self.open_refusal() {
            Some(why)
        } else if self.nb_snapshots > 0 {
            Some("has internal snapshots, which are read-only here")
        } else if self.has_bitmaps && self.autoclear & AUTOCLEAR_BITMAPS != 0 {
            Some("has persistent dirty bitmaps, which are read-only here")
        } else {
            None
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal v3 header: 64 KiB clusters, L1 at cluster 3, refcount
    /// table at cluster 1, for a file of 4 clusters.
    pub fn sample() -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[..4].copy_from_slice(&MAGIC);
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[24..32].copy_from_slice(&(1u64 << 29).to_be_bytes());
        b[36..40].copy_from_slice(&1u32.to_be_bytes());
        b[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
        b[48..56].copy_from_slice(&(1u64 << 16).to_be_bytes());
        b[56..60].copy_from_slice(&1u32.to_be_bytes());
        b[96..100].copy_from_slice(&4u32.to_be_bytes());
        b[100..104].copy_from_slice(&104u32.to_be_bytes());
        b
    }

    const LEN: u64 = 4 << 16;

    #[test]
    fn a_valid_header() {
        let h = Header::parse(&sample(), LEN).unwrap();
        assert_eq!((h.version, h.cluster_size(), h.size), (3, 65536, 1 << 29));
        assert_eq!(h.refcounts_per_block(), 32768);
        assert_eq!(h.write_refusal(), None);
    }

    fn refused(edit: impl Fn(&mut Vec<u8>), len: u64, why: &str) {
        let mut b = sample();
        edit(&mut b);
        let e = Header::parse(&b, len).unwrap_err();
        assert!(e.0.contains(why), "{e} lacks {why}");
    }

    #[test]
    fn hostile_headers_are_refused() {
        refused(|b| b[0] = b'X', LEN, "not a qcow2");
        refused(|b| b[7] = 4, LEN, "version 4");
        refused(|b| b[23] = 30, LEN, "cluster size");
        refused(|b| b[23] = 8, LEN, "cluster size");
        refused(|b| b[24] = 0xff, LEN, "too large");
        refused(
            |b| b[36..40].copy_from_slice(&u32::MAX.to_be_bytes()),
            LEN,
            "too large",
        );
        refused(
            |b| b[36..40].copy_from_slice(&0u32.to_be_bytes()),
            LEN,
            "too small",
        );
        refused(
            |b| b[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes()),
            LEN,
            "past the end",
        );
        refused(|b| b[47] = 1, LEN, "not cluster aligned");
        refused(
            |b| b[48..56].copy_from_slice(&0u64.to_be_bytes()),
            LEN,
            "overlaps",
        );
        refused(
            |b| b[56..60].copy_from_slice(&1000u32.to_be_bytes()),
            LEN,
            "too large",
        );
        refused(
            |b| b[56..60].copy_from_slice(&0u32.to_be_bytes()),
            LEN,
            "no refcount",
        );
        refused(|_| {}, 3 << 16, "past the end");
        refused(|b| b[35] = 1, LEN, "encrypted");
        refused(|b| b[79] = 4, LEN, "external data");
        refused(|b| b[79] = 0x80, LEN, "unknown incompatible");
        refused(|b| b[99] = 7, LEN, "refcount width");
        refused(
            |b| b[100..104].copy_from_slice(&8u32.to_be_bytes()),
            LEN,
            "header length",
        );
        refused(
            |b| b[60..64].copy_from_slice(&1u32.to_be_bytes()),
            LEN,
            "snapshot table",
        );
        // A backing name beyond the cluster, too long, or not text.
        refused(
            |b| {
                b[14] = 0x0f;
                b[15] = 0xc8;
                b[19] = 100;
            },
            LEN,
            "outside",
        );
        refused(
            |b| {
                b[14] = 0xff;
                b[19] = 8;
            },
            LEN,
            "outside",
        );
        refused(
            |b| {
                b[15] = 200;
                b[18] = 4;
            },
            LEN,
            "1024 bytes",
        );
        refused(
            |b| {
                b[15] = 200;
                b[19] = 2;
                b[200] = 0xff;
            },
            LEN,
            "not text",
        );
        // An extension whose length runs out of the cluster.
        refused(
            |b| {
                b[104..108].copy_from_slice(&0x1234u32.to_be_bytes());
                b[108..112].copy_from_slice(&u32::MAX.to_be_bytes());
            },
            LEN,
            "past the first cluster",
        );
        // Truncated files.
        assert!(Header::parse(&sample()[..50], LEN).is_err());
        assert!(Header::parse(&sample()[..100], LEN).is_err());
    }

    #[test]
    fn backing_name_and_format() {
        let mut b = sample();
        b[104..108].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        b[108..112].copy_from_slice(&5u32.to_be_bytes());
        b[112..117].copy_from_slice(b"qcow2");
        b[8..16].copy_from_slice(&512u64.to_be_bytes());
        b[16..20].copy_from_slice(&8u32.to_be_bytes());
        b[512..520].copy_from_slice(b"base.img");
        let h = Header::parse(&b, LEN).unwrap();
        assert_eq!(h.backing_file.as_deref(), Some("base.img"));
        assert_eq!(h.backing_format.as_deref(), Some("qcow2"));
    }

    #[test]
    fn what_cannot_be_written() {
        for (at, v, why) in [(79, 2u8, "corrupt"), (79, 1, "dirty"), (63, 1, "snapshots")] {
            let mut b = sample();
            b[at] = v;
            if at == 63 {
                b[64..72].copy_from_slice(&(2u64 << 16).to_be_bytes());
            }
            let h = Header::parse(&b, LEN).unwrap();
            assert!(h.write_refusal().unwrap().contains(why));
        }
    }
}
