//! The guest I/O pattern of tests/bench/qcow2.sh, on this machine, through
//! vm-img's `Image` and on a raw file side by side: a fresh overlay of a
//! raw base (all zeroes), random 4 KiB writes (QD 1, as fio's randwrite
//! jobs leave the overlay), then sequential 1 MiB reads and writes over the
//! whole disk, each request in 4 KiB buffers as a guest's pages arrive.
//! For profiling (perf, strace -c, callgrind) where the emulated test host
//! is too slow to iterate in:
//!   cargo run --release -p vm-img --example qcow2_pattern -- DIR [PHASES]
//! PHASES: any of w (random writes), r (1 MiB reads), W (1 MiB writes),
//! q and Q (1 MiB reads and writes on the raw image); default "wrWqQ".

use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use vm_img::create::{self, CreateOptions};
use vm_img::{Format, Image, OpenOptions};

const SIZE: u64 = 256 << 20;
const RANDOM_WRITES: u64 = 4000;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: qcow2_pattern DIR [PHASES]")?;
    let phases = args.next().unwrap_or_else(|| "wrWqQ".into());
    let dir = Path::new(&dir);
    let base = dir.join("base.raw");
    let ov = dir.join("ov.qcow2");
    let raw = dir.join("raw.img");
    for p in [&base, &raw] {
        let f = File::create(p)?;
        let mb = vec![0u8; 1 << 20];
        for i in 0..SIZE >> 20 {
            f.write_all_at(&mb, i << 20)?;
        }
    }
    let _ = std::fs::remove_file(&ov);
    create::create(
        &ov,
        &CreateOptions {
            format: Format::Qcow2,
            size: None,
            base: Some("base.raw".into()),
            cluster_size: 64 << 10,
        },
    )?;
    let img = Image::open(
        &ov,
        &OpenOptions {
            write: true,
            format: None,
            lock: true,
        },
    )?;
    let rawf = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&raw)?;
    let mut pages = vec![0u8; 1 << 20];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let time = |what: &str, n: u64, t: Instant| {
        let s = t.elapsed().as_secs_f64();
        println!("{what}: {n} ops, {:.1} us/op", s * 1e6 / n as f64);
    };
    for ph in phases.chars() {
        match ph {
            'w' => {
                let t = Instant::now();
                for _ in 0..RANDOM_WRITES {
                    let at = (next() % (SIZE >> 12)) << 12;
                    img.write(at, &[IoSlice::new(&pages[..4096])])?;
                }
                time("qcow2 4k random write", RANDOM_WRITES, t);
            }
            'r' | 'W' | 'q' | 'Q' => {
                let t = Instant::now();
                let mut n = 0;
                for i in 0..SIZE >> 20 {
                    let at = i << 20;
                    match ph {
                        'r' => {
                            let mut v: Vec<IoSliceMut> =
                                pages.chunks_mut(4096).map(IoSliceMut::new).collect();
                            img.read(at, &mut v)?;
                        }
                        'W' => {
                            let v: Vec<IoSlice> = pages.chunks(4096).map(IoSlice::new).collect();
                            img.write(at, &v)?;
                        }
                        'q' => {
                            let mut v: Vec<IoSliceMut> =
                                pages.chunks_mut(4096).map(IoSliceMut::new).collect();
                            rawf.read_vectored_at_compat(&mut v, at)?;
                        }
                        _ => {
                            let v: Vec<IoSlice> = pages.chunks(4096).map(IoSlice::new).collect();
                            // SAFETY: IoSlice is an iovec; the buffers outlive the call.
                            let r = unsafe {
                                libc::pwritev(
                                    std::os::fd::AsRawFd::as_raw_fd(&rawf),
                                    v.as_ptr().cast(),
                                    v.len() as i32,
                                    at as i64,
                                )
                            };
                            if r != 1 << 20 {
                                return Err("raw write failed".into());
                            }
                        }
                    }
                    n += 1;
                }
                time(
                    match ph {
                        'r' => "qcow2 1M read",
                        'W' => "qcow2 1M write",
                        'q' => "raw 1M read",
                        _ => "raw 1M write",
                    },
                    n,
                    t,
                );
            }
            _ => return Err(format!("unknown phase {ph}").into()),
        }
    }
    img.flush()?;
    Ok(())
}

trait ReadVectoredAt {
    fn read_vectored_at_compat(&self, v: &mut [IoSliceMut], at: u64) -> Result<()>;
}

impl ReadVectoredAt for File {
    fn read_vectored_at_compat(&self, v: &mut [IoSliceMut], at: u64) -> Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: IoSliceMut is an iovec; the buffers live across the call.
        let r = unsafe {
            libc::preadv(
                self.as_raw_fd(),
                v.as_ptr().cast(),
                v.len() as i32,
                at as i64,
            )
        };
        if r != 1 << 20 {
            return Err("raw read failed".into());
        }
        Ok(())
    }
}
