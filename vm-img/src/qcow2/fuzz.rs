//! What the fuzz target (vm-img/fuzz, `qcow2_open`) runs, also run by
//! unit tests on the seed corpus (tests/qcow2-corpus) and on mutations of
//! it, so that it keeps building and is exercised on stable Rust.
//!
//! The input is a whole image file. It goes through everything that runs
//! before an image is trusted and then through imago: the probe, the
//! header check, the refcount walk of `vm-img check`, a read-only open
//! with reads at the start, the middle and the end, and a writable open
//! of a copy with a write, a discard and a flush. All of it must end in
//! errors for a broken image, never in a panic or a huge allocation.

use std::cell::RefCell;
use std::fs::{self, File};
use std::io::{self, IoSlice, IoSliceMut};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::check;
use super::header::Header;
use crate::image::{self, Format, Image, OpenOptions};

/// The one base an input may name: a raw file the entry point puts beside
/// the image (tests/qcow2-corpus/backing-raw.qcow2 names it). Images that
/// name any other base are not opened, so that a fuzzed name never makes
/// the fuzzer open a file of the machine (a FIFO, a device, /proc).
pub const BASE_NAME: &str = "base.raw";
/// Its size and the byte it is filled with.
pub const BASE_LEN: usize = 64 << 10;
pub const BASE_BYTE: u8 = 0x5a;

/// The first cluster is at most 2 MiB (header::MAX_CLUSTER_BITS).
const MAX_CLUSTER0: usize = 2 << 20;

/// A folder per thread (in /dev/shm where there is one, so that flushes
/// cost nothing), its files rewritten for every input, removed when the
/// thread ends.
struct Scratch {
    dir: PathBuf,
    image: PathBuf,
    copy: PathBuf,
}

impl Scratch {
    fn new() -> io::Result<Scratch> {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "vm-img-fuzz.{}.{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let shm = Path::new("/dev/shm").join(&name);
        let dir = match fs::create_dir(&shm) {
            Ok(()) => shm,
            Err(_) => {
                let tmp = std::env::temp_dir().join(&name);
                fs::create_dir(&tmp)?;
                tmp
            }
        };
        let s = Scratch {
            image: dir.join("fuzz.qcow2"),
            copy: dir.join("copy.qcow2"),
            dir,
        };
        fs::write(s.dir.join(BASE_NAME), [BASE_BYTE; BASE_LEN])?;
        Ok(s)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// How far an input got, for the tests on the seed corpus.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reached {
    pub parsed: bool,
    pub checked_clean: bool,
    pub read: bool,
    pub written: bool,
}

/// Runs `data`, a whole image file, through the probe, the header check,
/// the refcount walk and imago's reads and writes. Errors are ignored:
/// they are how a broken image is refused.
pub fn open_image(data: &[u8]) {
    let _ = run(data);
}

pub(crate) fn run(data: &[u8]) -> Reached {
    SCRATCH.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            // Not the input's fault: without a scratch folder nothing runs,
            // which a fuzzer must not take for success.
            *cell = Some(Scratch::new().expect("a scratch folder for the fuzzed images"));
        }
        match cell.as_ref() {
            Some(s) => run_in(s, data),
            None => Reached::default(),
        }
    })
}

fn run_in(s: &Scratch, data: &[u8]) -> Reached {
    let mut reached = Reached::default();
    if fs::write(&s.image, data).is_err() {
        return reached;
    }
    let Ok(file) = File::open(&s.image) else {
        return reached;
    };
    let probed = image::probe(&file, &s.image, None);

    // The header check on its own, on the first cluster as the input has
    // it: it must agree with the probe, which reads the file.
    let len = data.len() as u64;
    let direct = data
        .get(20..24)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .filter(|bits| {
            (super::header::MIN_CLUSTER_BITS..=super::header::MAX_CLUSTER_BITS).contains(bits)
        })
        .map(|bits| Header::parse(&data[..data.len().min(1 << bits)], len));
    let h = match probed {
        Ok((Format::Qcow2, Some(h), file_len)) => {
            assert_eq!(file_len, len, "the probe's file length");
            assert_eq!(
                direct.as_ref().and_then(|r| r.as_ref().ok()),
                Some(&h),
                "the probe and Header::parse disagree"
            );
            h
        }
        // Raw, or refused: what Header::parse says on its own is enough.
        _ => {
            if data.len() >= 4 {
                let _ = Header::parse(&data[..data.len().min(MAX_CLUSTER0)], len);
            }
            return reached;
        }
    };
    reached.parsed = true;

    if let Ok(report) = check::check(&file, &h, len) {
        reached.checked_clean = report.is_clean() && !h.is_dirty();
    }
    drop(file);

    if h.backing_file.as_deref().is_some_and(|b| b != BASE_NAME) {
        return reached;
    }
    let ro = OpenOptions {
        write: false,
        format: None,
        lock: false,
    };
    if let Ok(img) = Image::open(&s.image, &ro) {
        reached.read = read_around(&img, h.cluster_size());
    }

    if fs::write(&s.copy, data).is_err() {
        return reached;
    }
    let rw = OpenOptions { write: true, ..ro };
    if let Ok(img) = Image::open(&s.copy, &rw) {
        reached.written = write_some(&img, h.cluster_size(), reached.checked_clean);
    }
    reached
}

/// (offset, length) clipped to an image of `size` bytes; None if empty.
fn clip(offset: u64, len: u64, size: u64) -> Option<(u64, usize)> {
    let offset = offset.min(size);
    let len = len.min(size - offset);
    (len > 0).then_some((offset, len as usize))
}

/// The ranges the reads and writes go to: the start, the first cluster
/// boundary, the middle (unaligned), the last cluster boundary, the end.
fn ranges(size: u64, cs: u64) -> Vec<(u64, usize)> {
    let mid = (size / 2) & !511;
    let last = size & !(cs - 1);
    [
        (0, 8192),
        (cs - 512, 1024),
        (mid, 12288),
        (mid.saturating_sub(1), 3),
        (last.saturating_sub(cs / 2 + 7), cs + 100),
        (size.saturating_sub(4096), 4096),
    ]
    .into_iter()
    .filter_map(|(o, l)| clip(o, l.min(64 << 10), size))
    .collect()
}

/// Reads every range into two buffers of unequal size; true if all the
/// reads succeeded.
fn read_around(img: &Image, cs: u64) -> bool {
    let mut ok = true;
    for (offset, len) in ranges(img.size(), cs) {
        let mut buf = vec![0u8; len];
        let (a, b) = buf.split_at_mut(len / 3);
        let mut bufs = [
            IoSliceMut::new(a),
            IoSliceMut::new(&mut []),
            IoSliceMut::new(b),
        ];
        ok &= img.read(offset, &mut bufs).is_ok();
    }
    ok
}

/// A write across a cluster boundary, zeroes, a discard and a flush;
/// true if they all succeeded. On an image that checked clean, what was
/// written must read back.
fn write_some(img: &Image, cs: u64, clean: bool) -> bool {
    let size = img.size();
    let mut ok = true;
    let pattern: Vec<u8> = (0..4097u32).map(|i| (i % 251) as u8 ^ 0xc5).collect();
    let written = clip(cs.saturating_sub(1000), pattern.len() as u64, size);
    if let Some((offset, len)) = written {
        let (a, b) = pattern[..len].split_at(len / 2);
        ok &= img
            .write(offset, &[IoSlice::new(a), IoSlice::new(b)])
            .is_ok();
    }
    if let Some((offset, len)) = clip((size / 2) & !511, 1536, size) {
        ok &= img.write_zeroes(offset, len as u64).is_ok();
    }
    if let Some((offset, len)) = clip(cs * 3, cs * 2, size) {
        ok &= img.discard(offset, len as u64).is_ok();
    }
    if let Some((offset, len)) = clip(size.saturating_sub(700), 700, size) {
        ok &= img.discard(offset, len as u64).is_ok();
    }
    ok &= img.flush().is_ok();
    if let (true, true, Some((offset, len))) = (ok, clean, written) {
        // The discards may have zeroed part of it (small images).
        let mut back = vec![0u8; len];
        if img.read(offset, &mut [IoSliceMut::new(&mut back)]).is_ok() {
            for (i, (&got, &put)) in back.iter().zip(&pattern).enumerate() {
                let at = offset + i as u64;
                let zeroed = (at >= cs * 3 && at < cs * 5) || at >= size.saturating_sub(700);
                assert!(
                    got == put || (zeroed && got == 0),
                    "an image that checked clean reads {got:#x} at {at:#x} after {put:#x} was written"
                );
            }
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn corpus() -> Vec<(String, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/qcow2-corpus");
        let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, fs::read(&p).unwrap())
            })
            .collect();
        files.sort();
        assert!(files.iter().filter(|(n, _)| n.ends_with(".qcow2")).count() >= 10);
        files
    }

    /// Every seed goes as far as it should: a fuzzer that stopped at the
    /// header would find nothing.
    #[test]
    fn the_seed_corpus_opens() {
        for (name, data) in corpus() {
            let r = run(&data);
            if !name.ends_with(".qcow2") {
                assert_eq!(r, Reached::default(), "{name}");
                continue;
            }
            assert!(r.parsed, "{name}: {r:?}");
            // qemu-io's abort left stale refcounts.
            assert_eq!(r.checked_clean, name != "dirty-lazy.qcow2", "{name}: {r:?}");
            // Its base is not there; imago refuses dirty images even for
            // reading.
            let unread = ["backing-missing.qcow2", "dirty-lazy.qcow2"];
            assert_eq!(r.read, !unread.contains(&name.as_str()), "{name}: {r:?}");
            // v2, snapshots and dirty images are read-only here.
            let read_only = [
                "backing-missing.qcow2",
                "dirty-lazy.qcow2",
                "snapshot.qcow2",
                "v2.qcow2",
            ];
            assert_eq!(
                r.written,
                !read_only.contains(&name.as_str()),
                "{name}: {r:?}"
            );
        }
    }

    /// What the fuzzer found: inputs that once panicked in header.rs and
    /// check.rs (overflowing offsets), panicked in imago (a partial
    /// feature name table) or made it recurse until the stack ran out (no
    /// refcount block for the header, opened for writing). Each is refused
    /// now, with an error.
    #[test]
    fn inputs_that_crashed_once_are_refused() {
        let seed = |name: &str| {
            corpus()
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, d)| d)
                .unwrap()
        };
        let put = |d: &mut Vec<u8>, at: usize, v: &[u8]| d[at..at + v.len()].copy_from_slice(v);
        let parse = |d: &[u8]| Header::parse(&d[..d.len().min(MAX_CLUSTER0)], d.len() as u64);

        let mut backing = seed("empty-v3.qcow2");
        put(&mut backing, 8, &(u64::MAX - 0xff).to_be_bytes());
        put(&mut backing, 16, &0x200u32.to_be_bytes());
        assert!(parse(&backing)
            .unwrap_err()
            .0
            .contains("outside the first cluster"));

        let mut features = seed("empty-v3.qcow2");
        let h = parse(&features).unwrap();
        let at = h.header_length as usize;
        put(&mut features, at, &0x6803_f857u32.to_be_bytes());
        put(&mut features, at + 4, &1u32.to_be_bytes());
        put(&mut features, at + 8, &[0; 16]);
        assert!(parse(&features)
            .unwrap_err()
            .0
            .contains("feature name table"));

        let mut refblock = seed("cluster-512.qcow2");
        let h = parse(&refblock).unwrap();
        put(
            &mut refblock,
            h.refcount_table_offset as usize + 8,
            &[0xff; 8],
        );
        let r = run(&refblock);
        assert!(r.parsed && !r.checked_clean, "{r:?}");

        let mut no_rb0 = seed("data-v3.qcow2");
        let h = parse(&no_rb0).unwrap();
        put(&mut no_rb0, h.refcount_table_offset as usize, &[0; 8]);
        let r = run(&no_rb0);
        assert!(r.parsed && r.read && !r.written, "{r:?}");
    }

    /// xorshift64*: deterministic, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn be64(d: &[u8], at: u64) -> u64 {
        let at = at as usize;
        d.get(at..at + 8)
            .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()))
    }

    /// Where a seed's tables are: the L1 table, the refcount table, the
    /// first refcount block and the first L2 table, as (offset, length).
    fn tables(data: &[u8]) -> Vec<(u64, u64)> {
        let Ok(h) = Header::parse(&data[..data.len().min(MAX_CLUSTER0)], data.len() as u64) else {
            return Vec::new();
        };
        let cs = h.cluster_size();
        let mask = 0x00ff_ffff_ffff_fe00;
        let mut t = vec![
            (h.l1_table_offset, u64::from(h.l1_size) * 8),
            (
                h.refcount_table_offset,
                u64::from(h.refcount_table_clusters) * cs,
            ),
            (be64(data, h.refcount_table_offset) & mask, cs),
            (be64(data, h.l1_table_offset) & mask, cs),
        ];
        if h.nb_snapshots > 0 {
            t.push((h.snapshots_offset, 64));
        }
        t.retain(|&(o, l)| o > 0 && l >= 8 && o + 8 <= data.len() as u64);
        t
    }

    const INTERESTING: [u64; 8] = [
        0,
        1,
        0x200,
        0x1000,
        0x8000_0000_0000_0000,
        0x4000_0000_0000_0000,
        0x00ff_ffff_ffff_fe00,
        u64::MAX,
    ];

    fn mutate(rng: &mut Rng, seed: &[u8], tables: &[(u64, u64)]) -> Vec<u8> {
        let mut d = seed.to_vec();
        for _ in 0..=rng.below(3) {
            let len = d.len() as u64;
            match rng.below(6) {
                // A bit flip anywhere.
                0 if len > 0 => {
                    let at = rng.below(len) as usize;
                    d[at] ^= 1 << rng.below(8);
                }
                // A byte of the header.
                1 if len > 0 => {
                    let at = rng.below(len.min(512)) as usize;
                    d[at] = match rng.below(4) {
                        0 => 0,
                        1 => 0xff,
                        2 => d[at].wrapping_add(1),
                        _ => rng.next() as u8,
                    };
                }
                // A table entry: an interesting value, a random offset in
                // or just past the file, or random bits.
                2 | 3 if !tables.is_empty() => {
                    let (o, l) = tables[rng.below(tables.len() as u64) as usize];
                    let at = (o + rng.below(l / 8) * 8) as usize;
                    let v = match rng.below(4) {
                        0 => INTERESTING[rng.below(8) as usize],
                        1 => (rng.below(len + 0x2000) & !0x1ff) | (rng.next() & (3 << 62)),
                        2 => be64(&d, at as u64) ^ (1 << rng.below(64)),
                        _ => rng.next(),
                    };
                    if let Some(b) = d.get_mut(at..at + 8) {
                        b.copy_from_slice(&v.to_be_bytes());
                    }
                }
                // A truncation, at a cluster boundary or anywhere.
                4 => {
                    let to = rng.below(len + 1) as usize;
                    d.truncate(if rng.below(2) == 0 { to & !0xfff } else { to });
                }
                // A header field of 4 or 8 bytes.
                _ if len >= 104 => {
                    let at = [8, 16, 20, 24, 36, 40, 48, 56, 60, 64, 72, 96, 100]
                        [rng.below(13) as usize];
                    let v = INTERESTING[rng.below(8) as usize] ^ rng.below(4);
                    let w = if matches!(at, 16 | 20 | 36 | 56 | 60 | 96 | 100) {
                        4
                    } else {
                        8
                    };
                    d[at..at + w].copy_from_slice(&v.to_be_bytes()[8 - w..]);
                }
                _ => {}
            }
        }
        d
    }

    #[test]
    fn mutated_seeds_do_not_crash() {
        let seeds: Vec<Vec<u8>> = corpus()
            .into_iter()
            .filter(|(n, _)| n.ends_with(".qcow2"))
            .map(|(_, d)| d)
            .collect();
        let tables: Vec<Vec<(u64, u64)>> = seeds.iter().map(|s| tables(s)).collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let start = Instant::now();
        let mut reached = [0u32; 4];
        for i in 0..3000 {
            let k = i % seeds.len();
            let d = mutate(&mut rng, &seeds[k], &tables[k]);
            let r = match std::panic::catch_unwind(|| run(&d)) {
                Ok(r) => r,
                Err(e) => {
                    let at = std::env::temp_dir().join(format!("vm-img-fuzz-mutation-{i}.qcow2"));
                    let _ = fs::write(&at, &d);
                    eprintln!(
                        "mutation {i} of seed {k} panicked; saved as {}",
                        at.display()
                    );
                    std::panic::resume_unwind(e)
                }
            };
            for (n, hit) in reached
                .iter_mut()
                .zip([r.parsed, r.checked_clean, r.read, r.written])
            {
                *n += u32::from(hit);
            }
        }
        // The mutations are mild enough that many images still open.
        assert!(reached.iter().all(|&n| n > 100), "{reached:?}");
        eprintln!(
            "3000 mutations in {:?}: parsed, clean, read, written {reached:?}",
            start.elapsed()
        );
    }
}
