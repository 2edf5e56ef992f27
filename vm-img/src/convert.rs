//! `vm-img convert`: any image (with its bases) to a new raw or qcow2
//! image holding the same guest data. Zero runs are skipped, so the
//! result is sparse; on any error the half-written output is removed.

use std::fs;
use std::io::{IoSlice, IoSliceMut, Write};
use std::path::Path;

use crate::create::{format_qcow2, new_file};
use crate::error::{Error, Result};
use crate::image::{Format, Image, OpenOptions};

/// Bytes read and written at a time.
const CHUNK: usize = 2 << 20;
/// The unit of the zero test: a run of zeroes this long is not written.
const BLOCK: usize = 64 << 10;

pub fn convert(
    input: &Path,
    output: &Path,
    format: Format,
    cluster_size: u64,
    progress: bool,
) -> Result<()> {
    let src = Image::open(
        input,
        &OpenOptions {
            lock: true,
            ..Default::default()
        },
    )?;
    let size = src.size();
    // Whole sectors, as qemu-img makes them: it reads a qcow2 image of
    // 1000 bytes as one of 512.
    let out_size = size
        .checked_next_multiple_of(512)
        .ok_or_else(|| Error::Format(input.to_path_buf(), "too large".into()))?;
    let file = new_file(output)?;
    let done = (|| {
        crate::image::lock_file(&file, output, false)?;
        match format {
            Format::Raw => file
                .set_len(out_size)
                .map_err(|e| Error::Io(output.to_path_buf(), e))?,
            Format::Qcow2 => format_qcow2(
                file.try_clone()
                    .map_err(|e| Error::Io(output.to_path_buf(), e))?,
                output,
                out_size,
                cluster_size,
                None,
            )?,
        }
        let dst = Image::from_file(
            file,
            output,
            &OpenOptions {
                write: true,
                lock: true,
                format: Some(format),
            },
        )?;
        copy(&src, &dst, size, progress, output)
    })();
    if done.is_err() {
        let _ = fs::remove_file(output);
    }
    done
}

/// `-p`, as qemu-img's: `    (NN.NN/100%)` and a carriage return each
/// time the hundredths change, a newline at the end. qemu-img writes it
/// to its standard output; ours goes to the standard error, which is
/// where a tool's chatter goes (convert writes nothing else on either).
struct Progress {
    on: bool,
    size: u64,
    shown: Option<u64>,
}

impl Progress {
    fn at(&mut self, offset: u64) {
        if !self.on {
            return;
        }
        let hundredths =
            (u128::from(offset.min(self.size)) * 10_000 / u128::from(self.size.max(1))) as u64;
        if self.shown != Some(hundredths) {
            self.shown = Some(hundredths);
            // Progress is not worth failing (or panicking) over a closed
            // standard error.
            let mut e = std::io::stderr().lock();
            let _ = write!(
                e,
                "    ({}.{:02}/100%)\r",
                hundredths / 100,
                hundredths % 100
            );
            let _ = e.flush();
        }
    }

    fn end(&mut self) {
        if self.on {
            self.at(self.size);
            let _ = writeln!(std::io::stderr());
        }
    }
}

fn copy(src: &Image, dst: &Image, size: u64, progress: bool, output: &Path) -> Result<()> {
    let out = |e| Error::from_io(output, e);
    let input = |e| Error::from_io(src.path(), e);
    let mut buf = vec![0u8; CHUNK];
    let mut progress = Progress {
        on: progress,
        size,
        shown: None,
    };
    progress.at(0);
    let mut offset = 0u64;
    // What reads as zeroes whatever it holds is skipped unread, as
    // qemu-img does: unallocated clusters, zero clusters, holes.
    let mut data_end = 0u64;
    while offset < size {
        if offset >= data_end {
            let (data, len) = src.extent(offset, size - offset).map_err(input)?;
            if !data {
                offset += len;
                progress.at(offset);
                continue;
            }
            data_end = offset + len;
        }
        let n = (data_end - offset).min(CHUNK as u64) as usize;
        src.read(offset, &mut [IoSliceMut::new(&mut buf[..n])])
            .map_err(input)?;
        let mut at = 0;
        while at < n {
            // The next run that holds data, in whole blocks.
            let len = BLOCK.min(n - at);
            if buf[at..at + len].iter().all(|&b| b == 0) {
                at += len;
                continue;
            }
            let start = at;
            while at < n && !buf[at..at + BLOCK.min(n - at)].iter().all(|&b| b == 0) {
                at += BLOCK.min(n - at);
            }
            dst.write(offset + start as u64, &[IoSlice::new(&buf[start..at])])
                .map_err(out)?;
        }
        offset += n as u64;
        progress.at(offset);
    }
    dst.flush().map_err(out)?;
    progress.end();
    Ok(())
}
