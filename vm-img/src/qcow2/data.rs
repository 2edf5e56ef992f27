//! The data path of an open image: guest reads and writes moved straight
//! between the caller's buffers and the files of the chain, at the places
//! imago maps (docs/QCOW2.md, "Data path"). imago finds the runs and
//! allocates clusters; the bytes go with one preadv or pwritev a run.
//! Copy-on-write of a partly written cluster is merged into one pwritev of
//! old head, new data and old tail, as QEMU does.

use std::io;
use std::sync::Mutex;

use imago::{FormatAccess, Mapping};

use crate::iov::{self, Cursor};
use crate::qcow2::ordered::Ordered;

/// An image chain as imago reads and writes it.
pub type Access = FormatAccess<Ordered>;

/// Space the direct paths reuse from request to request. Not for speed of
/// malloc as such: vm-run is linked with musl, whose allocator hands the
/// pages of a freed block of a few KiB back to the kernel (munmap), so a
/// buffer allocated per request costs an mmap, a munmap and a page fault
/// per page, every time (6 of each per 1 MiB read through imago, one 64 KiB
/// COW buffer per allocating write, seen with strace).
#[derive(Default)]
struct Scratch {
    /// A run's share of the caller's buffers.
    iov: Vec<libc::iovec>,
    /// One cluster, for copy-on-write.
    cow: Vec<u8>,
}

// SAFETY: the iovecs point into a caller's buffers only during one call,
// under the mutex, and are cleared before it returns; between calls the
// vector holds no pointers at all.
unsafe impl Send for Scratch {}

/// The state the direct paths keep between requests.
pub struct DataPath {
    /// The top image's cluster size, when it is a qcow2 image.
    cluster: Option<u64>,
    scratch: Mutex<Scratch>,
}

impl DataPath {
    pub fn new(cluster: Option<u64>) -> Self {
        DataPath {
            cluster,
            scratch: Mutex::new(Scratch::default()),
        }
    }

    /// Reads [offset, offset + total(bufs)) of the chain into `bufs`.
    ///
    /// # Safety
    /// Each iovec must describe memory that is writable and that nothing
    /// else reads or writes until the call returns.
    pub unsafe fn read(&self, a: &Access, offset: u64, bufs: &[libc::iovec]) -> io::Result<()> {
        let mut s = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the caller's promise, passed on.
        let r = unsafe { read_runs(a, offset, bufs, &mut s.iov) };
        s.iov.clear();
        r
    }

    /// Writes `bufs` at `offset` of the top image (which the caller has
    /// opened for writing).
    ///
    /// # Safety
    /// Each iovec must describe readable memory that nothing writes until
    /// the call returns.
    pub unsafe fn write(&self, a: &Access, offset: u64, bufs: &[libc::iovec]) -> io::Result<()> {
        let len = iov::total(bufs);
        if offset.checked_add(len).is_none_or(|end| end > a.size()) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("Cannot write beyond the disk size ({len} + {offset})"),
            ));
        }
        let mut s = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the caller's promise, passed on.
        let r = unsafe { self.write_runs(a, offset, bufs, &mut s) };
        s.iov.clear();
        r
    }

    /// Writes each run of the request that imago maps to a writable data
    /// cluster straight to its place in the file (one pwritev a run of
    /// contiguous host clusters); what needs a new cluster goes to
    /// `allocate`.
    ///
    /// # Safety
    /// As for `write`.
    unsafe fn write_runs(
        &self,
        a: &Access,
        offset: u64,
        bufs: &[libc::iovec],
        s: &mut Scratch,
    ) -> io::Result<()> {
        let total = iov::total(bufs);
        let mut cur = Cursor::new(bufs);
        let mut pos = 0;
        while pos < total {
            let at = offset + pos;
            let (m, len) = a.get_mapping(at, total - pos)?;
            let len = len.min(total - pos);
            match m {
                Mapping::Raw {
                    storage,
                    offset: host,
                    writable: true,
                    ..
                } if len > 0 && !storage.holds(host, len) => {
                    s.iov.clear();
                    cur.take(len, &mut s.iov);
                    // SAFETY: the caller's buffers; the run is a data
                    // cluster of the top image that imago says is ours to
                    // write, under the shared lock.
                    unsafe { iov::pwritev_all(storage.raw_fd(), &mut s.iov, host) }?;
                    storage.wrote_to(host + len);
                }
                _ => {
                    // Unallocated, zero, compressed or shared: this run,
                    // but the first cluster alone when the write covers
                    // only part of it.
                    let len = self.allocate(a, at, len.max(1), &mut cur, s)?;
                    pos += len;
                    continue;
                }
            }
            pos += len;
        }
        Ok(())
    }

    /// Writes the next bytes of the request at guest offset `at`, which
    /// has no writable cluster yet, and returns how many it wrote (at most
    /// `len`). Whole clusters go to imago, which allocates them and skips
    /// copying what is overwritten. A write into part of a cluster is
    /// copy-on-write: imago's copies the old cluster whole (a 64 KiB read
    /// and write into a buffer it allocates each time) and then writes the
    /// guest's bytes over it; here the old contents are read once into a
    /// kept buffer and go to the new cluster with the guest's bytes in one
    /// pwritev, as QEMU does. imago still allocates the cluster and maps it
    /// (prepare/commit: the L2 entry only after the data is written), so
    /// the order on disk is imago's.
    fn allocate(
        &self,
        a: &Access,
        at: u64,
        len: u64,
        cur: &mut Cursor<'_>,
        s: &mut Scratch,
    ) -> io::Result<u64> {
        let Some(cs) = self.cluster else {
            return self.write_through(a, at, len, cur, s);
        };
        let start = at & !(cs - 1);
        // The guest part of the cluster: all of it but in the last cluster
        // of an image whose size is not a multiple of the cluster size
        // (qemu-img convert of a 1000-byte file makes one). imago maps no
        // further than the size; the host cluster is whole all the same.
        let part = cs.min(a.size() - start);
        let n = len.min(start + part - at);
        if n == cs {
            // Whole clusters, as many as the run holds.
            return self.write_whole(a, at, len & !(cs - 1), cur, s);
        }
        if let (Mapping::Zero { .. }, whole) = a.get_mapping(start, part)? {
            if whole >= part {
                // Nothing to copy: imago zeroes the rest of the cluster
                // with write-zeroes, which keeps it sparse (vm-img convert
                // writes into such clusters, and tests that its output
                // takes no more space than its data).
                return self.write_through(a, at, n, cur, s);
            }
        }
        let c = cs as usize;
        s.cow.resize(c, 0);
        let old = [libc::iovec {
            iov_base: s.cow.as_mut_ptr().cast(),
            iov_len: c,
        }];
        // SAFETY: our own buffer, not otherwise borrowed here. Read before
        // the mapping is prepared: imago may block other I/O on the range
        // until it is committed. Past the image's end it reads zeroes, which
        // fill the host cluster's tail as QEMU fills it.
        unsafe { read_runs(a, start, &old, &mut s.iov) }?;
        let m = a.prepare_data_mapping(start, part, true)?;
        let (storage, host) = (m.storage(), m.offset());
        // Neither happens in a sound image (a mapping covers whole
        // clusters; data never lies on the L1 table): refuse rather than
        // write past the cluster or around the held-back table.
        if m.length() < part {
            return Err(io::Error::other("qcow2: imago mapped less than a cluster"));
        }
        if storage.holds(host, cs) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "qcow2: a data cluster overlaps the L1 table",
            ));
        }
        let head = (at - start) as usize;
        let tail = head + n as usize;
        s.iov.clear();
        let base = s.cow.as_mut_ptr();
        s.iov.push(libc::iovec {
            iov_base: base.cast(),
            iov_len: head,
        });
        cur.take(n, &mut s.iov);
        s.iov.push(libc::iovec {
            // SAFETY: tail <= c: the address stays within the buffer.
            iov_base: unsafe { base.add(tail) }.cast(),
            iov_len: c - tail,
        });
        // SAFETY: our buffer and the caller's; the cluster is the one imago
        // just prepared for this range, not visible until committed.
        unsafe { iov::pwritev_all(storage.raw_fd(), &mut s.iov, host) }?;
        storage.wrote_to(host + cs);
        a.commit_data_mapping(m)?;
        Ok(n)
    }

    /// Whole clusters without a writable data cluster, `len` bytes from
    /// `at`: imago allocates them (as few runs as it can, nothing copied:
    /// they are overwritten whole) and maps them once the data is in,
    /// which is what its writev does; the data goes from the caller's
    /// buffers with one pwritev a run, where imago's writev would cut
    /// its buffer vector into new ones.
    fn write_whole(
        &self,
        a: &Access,
        at: u64,
        len: u64,
        cur: &mut Cursor<'_>,
        s: &mut Scratch,
    ) -> io::Result<u64> {
        let mut done = 0;
        while done < len {
            let m = a.prepare_data_mapping(at + done, len - done, true)?;
            let (storage, host) = (m.storage(), m.offset());
            let n = m.length().min(len - done);
            if storage.holds(host, n) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "qcow2: a data cluster overlaps the L1 table",
                ));
            }
            s.iov.clear();
            cur.take(n, &mut s.iov);
            // SAFETY: the caller's buffers; the clusters are the ones imago
            // just prepared for this range, not visible until committed.
            unsafe { iov::pwritev_all(storage.raw_fd(), &mut s.iov, host) }?;
            storage.wrote_to(host + n);
            a.commit_data_mapping(m)?;
            done += n;
        }
        Ok(len)
    }

    /// The next `len` bytes of the request through imago's writev.
    fn write_through(
        &self,
        a: &Access,
        at: u64,
        len: u64,
        cur: &mut Cursor<'_>,
        s: &mut Scratch,
    ) -> io::Result<u64> {
        s.iov.clear();
        cur.take(len, &mut s.iov);
        // SAFETY: a part of the caller's buffers, readable for the call.
        a.writev(unsafe { iov::imago(&s.iov) }, at)?;
        Ok(len)
    }
}

/// Whether [offset, offset + n) may hold data (false: it reads as
/// zeroes: unallocated through the whole chain, zero clusters, holes
/// of a raw file), and n: at most `max`, at least 1 when `max` is.
pub fn extent(a: &Access, offset: u64, max: u64) -> io::Result<(bool, u64)> {
    let (m, len) = a.get_mapping(offset, max)?;
    Ok(match m {
        Mapping::Zero { .. } | Mapping::Eof { .. } => (false, if len == 0 { max } else { len }),
        Mapping::Raw {
            storage,
            offset: at,
            ..
        } => storage.extent(at, len.max(1)),
        _ => (true, len.max(1)),
    })
}

/// Reads [offset, offset + total(bufs)) into `bufs`, run by run as imago
/// maps it: data in a file (any image of the chain) with one preadv a run
/// of contiguous host clusters, straight into the caller's buffers; zeroes
/// by memset; compressed clusters (and anything overlapping the held-back
/// L1 table) through imago. imago's own readv does the same runs, but cuts
/// its buffer vector into new vectors for each (allocations, see Scratch).
///
/// # Safety
/// As for `DataPath::read`.
unsafe fn read_runs(
    a: &Access,
    offset: u64,
    bufs: &[libc::iovec],
    scratch: &mut Vec<libc::iovec>,
) -> io::Result<()> {
    let total = iov::total(bufs);
    let mut cur = Cursor::new(bufs);
    let mut pos = 0;
    while pos < total {
        let at = offset + pos;
        let (m, len) = a.get_mapping(at, total - pos)?;
        // Eof (length 0): the rest reads as zeroes.
        let len = if len == 0 {
            total - pos
        } else {
            len.min(total - pos)
        };
        scratch.clear();
        cur.take(len, scratch);
        match m {
            Mapping::Raw {
                storage,
                offset: host,
                ..
            } if !storage.holds(host, len) => {
                // SAFETY: the caller's buffers, at offsets imago mapped.
                unsafe { iov::preadv_all(storage.raw_fd(), scratch, host) }?
            }
            Mapping::Zero { .. } | Mapping::Eof { .. } => {
                // SAFETY: the caller's buffers.
                unsafe { iov::zero(scratch) }
            }
            _ => {
                // SAFETY: a part of the caller's buffers, writable and not
                // otherwise borrowed for the call.
                a.readv(unsafe { iov::imago_mut(scratch) }, at)?;
            }
        }
        pos += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::create::{self, CreateOptions};
    use crate::image::{Format, Image, OpenOptions};
    use crate::qcow2::check;
    use imago::io_buffers::IoVectorMut;
    use std::fs::File;
    use std::io::{IoSlice, IoSliceMut};
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn dir(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("vm-img-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn seed(name: &str, to: &Path) {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/qcow2-corpus")
            .join(name);
        std::fs::copy(from, to).unwrap();
    }
    fn open(path: &Path, write: bool) -> Image {
        let opts = OpenOptions {
            write,
            format: None,
            lock: false,
        };
        Image::open(path, &opts).unwrap()
    }
    fn overlay(path: &Path, base: &str, cluster_size: u64) {
        let opts = CreateOptions {
            format: Format::Qcow2,
            size: None,
            base: Some(base.into()),
            cluster_size,
        };
        create::create(path, &opts).unwrap();
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
    }

    /// What imago's own readv gives (the path the direct one replaces).
    fn imago_read(img: &Image, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        img.access()
            .readv(IoVectorMut::from(&mut buf[..]), offset)
            .unwrap();
        buf
    }

    /// The direct path, into buffers cut at random places (a guest's
    /// pages, empty ones too).
    fn direct_read(img: &Image, rng: &mut Rng, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0xeeu8; len];
        let mut cuts: Vec<usize> = (0..rng.below(5))
            .map(|_| rng.below(len as u64 + 1) as usize)
            .collect();
        cuts.extend([0, len]);
        cuts.sort();
        let mut rest = &mut buf[..];
        let mut slices = Vec::new();
        for w in cuts.windows(2) {
            let (a, b) = rest.split_at_mut(w[1] - w[0]);
            slices.push(IoSliceMut::new(a));
            rest = b;
        }
        img.read(offset, &mut slices).unwrap();
        buf
    }

    fn same_as_imago(img: &Image, rng: &mut Rng, what: &str) {
        let size = img.size();
        // Whole image, then pieces that start and end anywhere.
        assert!(
            direct_read(img, rng, 0, size as usize) == imago_read(img, 0, size as usize),
            "{what}: whole"
        );
        for _ in 0..300 {
            let at = rng.below(size);
            let len = rng.below((size - at).min(200 << 10)) as usize + 1;
            let len = len.min((size - at) as usize);
            assert!(
                direct_read(img, rng, at, len) == imago_read(img, at, len),
                "{what}: {len} at {at}"
            );
        }
    }

    /// Reads over allocated, zero (with and without a host cluster),
    /// unallocated-with-base (raw and qcow2 bases) and compressed clusters
    /// return what imago's readv returns.
    #[test]
    fn direct_reads_return_what_imago_reads() {
        let d = dir("direct-reads");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for name in [
            "compressed.qcow2",
            "zero-clusters.qcow2",
            "data-v3.qcow2",
            "cluster-512.qcow2",
            "v2.qcow2",
        ] {
            let p = d.0.join(name);
            seed(name, &p);
            same_as_imago(&open(&p, false), &mut rng, name);
        }
        // A chain: a qcow2 overlay (16 KiB clusters) on the compressed
        // image (4 KiB clusters), partly written; and one on a raw base.
        seed("compressed.qcow2", &d.0.join("c.qcow2"));
        let top = d.0.join("top.qcow2");
        overlay(&top, "c.qcow2", 16 << 10);
        {
            let img = open(&top, true);
            img.write(5000, &[IoSlice::new(&[0x5a; 9000])]).unwrap();
            img.write(64 << 10, &[IoSlice::new(&[0x11; 16 << 10])])
                .unwrap();
            img.write_zeroes(96 << 10, 16 << 10).unwrap();
            img.flush().unwrap();
        }
        same_as_imago(&open(&top, false), &mut rng, "overlay on compressed");
        let raw = d.0.join("base.raw");
        std::fs::write(
            &raw,
            (0..300_000u32)
                .map(|i| (i * 7 / 3) as u8)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let top = d.0.join("top-raw.qcow2");
        overlay(&top, "base.raw", 64 << 10);
        {
            let img = open(&top, true);
            img.write(70_000, &[IoSlice::new(&[0x33; 100])]).unwrap();
            img.flush().unwrap();
        }
        // The raw base ends inside the last cluster: the rest is zeroes.
        same_as_imago(&open(&top, false), &mut rng, "overlay on raw");
    }

    /// Writes of every shape (inside one cluster, across clusters, whole
    /// clusters, into allocated, unallocated, zero and compressed ones)
    /// give the bytes a plain model says, land in the file where imago's
    /// mapping says, and leave an image `check` calls clean.
    #[test]
    fn direct_writes_land_where_imago_maps() {
        let d = dir("direct-writes");
        seed("compressed.qcow2", &d.0.join("c.qcow2"));
        let top = d.0.join("top.qcow2");
        overlay(&top, "c.qcow2", 16 << 10);
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let img = open(&top, true);
        let size = img.size();
        let mut model = imago_read(&img, 0, size as usize);
        for i in 0..400u32 {
            let at = rng.below(size);
            let len =
                (rng.below(if i % 3 == 0 { 40 << 10 } else { 6000 }) + 1).min(size - at) as usize;
            let (at, len) = if i % 17 == 0 {
                (at & !(16383), 16384.min(size - (at & !16383)) as usize)
            } else {
                (at, len)
            };
            if i % 29 == 0 {
                img.write_zeroes(at & !4095, 4096).unwrap();
                model[(at & !4095) as usize..][..4096].fill(0);
                continue;
            }
            let data: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
            let cut = rng.below(len as u64) as usize;
            img.write(
                at,
                &[
                    IoSlice::new(&data[..cut]),
                    IoSlice::new(&[]),
                    IoSlice::new(&data[cut..]),
                ],
            )
            .unwrap();
            model[at as usize..at as usize + len].copy_from_slice(&data);
            let (a, n) = (rng.below(size), 8192);
            let n = n.min(size - a) as usize;
            assert!(
                direct_read(&img, &mut rng, a, n) == model[a as usize..a as usize + n],
                "after write {i}"
            );
        }
        assert!(imago_read(&img, 0, size as usize) == model);
        // Each data cluster of the top image holds its bytes at the host
        // offset imago maps it to.
        let file = File::open(&top).unwrap();
        let mut mapped = 0;
        for c in (0..size).step_by(16 << 10) {
            let a = img.access();
            let (m, len) = a.get_mapping(c, 16 << 10).unwrap();
            if let Mapping::Raw {
                offset: host,
                writable: true,
                ..
            } = m
            {
                let mut on_disk = vec![0u8; len as usize];
                file.read_exact_at(&mut on_disk, host).unwrap();
                assert!(
                    on_disk == model[c as usize..(c + len) as usize],
                    "cluster at {c}"
                );
                mapped += 1;
            }
        }
        assert!(mapped > 8, "{mapped} clusters written");
        img.flush().unwrap();
        drop(img);
        let img = open(&top, false);
        assert!(
            imago_read(&img, 0, size as usize) == model,
            "after reopening"
        );
        let (h, len) = (
            img.layers()[0].header.clone().unwrap(),
            img.layers()[0].file_len,
        );
        let r = check::check(&file, &h, len).unwrap();
        assert!(r.is_clean(), "{:?}", r.problems);
    }

    #[test]
    fn direct_writes_refuse_what_imago_refuses() {
        let d = dir("direct-refuse");
        let p = d.0.join("e.qcow2");
        seed("data-v3.qcow2", &p);
        let ro = open(&p, false);
        assert!(ro.write(0, &[IoSlice::new(b"x")]).is_err());
        drop(ro);
        let img = open(&p, true);
        let size = img.size();
        assert!(img.write(size - 1, &[IoSlice::new(b"xy")]).is_err());
        assert!(img.write(u64::MAX, &[IoSlice::new(b"x")]).is_err());
        img.write(size - 1, &[IoSlice::new(b"x")]).unwrap();
    }

    /// A qcow2 image whose size is not a multiple of its cluster size
    /// takes writes into its last, partial cluster: a byte at the very
    /// end, the partial cluster whole, a run across the last full cluster
    /// into it; into unallocated clusters, allocated ones, and ones that
    /// read from a base (copy-on-write). QEMU writes there too.
    #[test]
    fn writes_reach_the_end_of_a_partial_last_cluster() {
        let d = dir("partial-end");
        let mut rng = Rng(0x5851_f42d_4c95_7f2d);
        let base = d.0.join("base.raw");
        std::fs::write(&base, vec![0x77u8; 300 << 10]).unwrap();
        for (i, (size, cs)) in [
            (512, 64 << 10),
            (1024, 64 << 10),
            (66048, 64 << 10),
            (100352, 64 << 10),
            (5120, 4096),
            (1 << 20 | 512, 1 << 20),
        ]
        .into_iter()
        .enumerate()
        {
            for on_base in [false, true] {
                let p = d.0.join(format!("e{i}-{on_base}.qcow2"));
                let file = create::new_file(&p).unwrap();
                let backing = on_base.then(|| ("base.raw".to_string(), Format::Raw));
                create::format_qcow2(file, &p, size, cs, backing).unwrap();
                let img = open(&p, true);
                assert_eq!(img.size(), size);
                let mut model = imago_read(&img, 0, size as usize);
                let last = (size - 1) & !(cs - 1);
                let writes = [
                    (size - 1, 1),
                    (last, size - last),
                    (last.saturating_sub(100), size - last.saturating_sub(100)),
                    (size - 1, 1),
                    (size / 2, size - size / 2),
                ];
                for (at, len) in writes {
                    let data: Vec<u8> = (0..len).map(|_| rng.below(255) as u8 + 1).collect();
                    img.write(at, &[IoSlice::new(&data)])
                        .unwrap_or_else(|e| panic!("{size}/{cs}/{on_base}: {len} at {at}: {e}"));
                    model[at as usize..(at + len) as usize].copy_from_slice(&data);
                    assert!(
                        direct_read(&img, &mut rng, 0, size as usize) == model,
                        "{size}/{cs}/{on_base}: after {len} at {at}"
                    );
                }
                img.flush().unwrap();
                drop(img);
                let img = open(&p, false);
                assert!(
                    imago_read(&img, 0, size as usize) == model,
                    "{size}: reopened"
                );
                let file = File::open(&p).unwrap();
                let (h, len) = (
                    img.layers()[0].header.clone().unwrap(),
                    img.layers()[0].file_len,
                );
                let r = check::check(&file, &h, len).unwrap();
                assert!(r.is_clean(), "{size}/{cs}/{on_base}: {:?}", r.problems);
            }
        }
    }
}
