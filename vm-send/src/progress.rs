//! Bytes and rate on stderr while a stream moves, for someone watching a
//! terminal, as pv or `qemu-img convert -p` show them. Only when stderr is
//! a terminal: in a pipeline, a log or a journal the tools stay quiet.
//! Shared by vm-send and vm-receive (each includes this file, and uses
//! its half).
#![allow(dead_code)]

use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How often the line is redrawn: often enough to look alive, seldom
/// enough to cost nothing next to the stream.
const EVERY: Duration = Duration::from_millis(250);

/// The running count, and the line on stderr that shows it.
pub struct Meter {
    tool: &'static str,
    bytes: u64,
    start: Instant,
    drawn: Option<Instant>,
    done: bool,
}

/// A meter when stderr is a terminal, none otherwise.
pub fn meter(tool: &'static str) -> Option<Meter> {
    io::stderr().is_terminal().then(|| Meter {
        tool,
        bytes: 0,
        start: Instant::now(),
        drawn: None,
        done: false,
    })
}

impl Meter {
    pub fn add(&mut self, n: usize) {
        self.bytes += n as u64;
        if self.drawn.is_none_or(|t| t.elapsed() >= EVERY) {
            self.drawn = Some(Instant::now());
            self.draw("\r", "\x1b[K");
        }
    }

    /// The last line, ended: what moved, in how long.
    pub fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.draw("\r", "\x1b[K\n");
        }
    }

    fn draw(&self, before: &str, after: &str) {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            self.bytes as f64 / secs
        } else {
            0.0
        };
        // One write, so that the line is never torn by other output.
        let line = format!(
            "{before}{}: {} in {secs:.1} s, {}/s{after}",
            self.tool,
            human(self.bytes as f64),
            human(rate)
        );
        let _ = io::stderr().write_all(line.as_bytes());
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// 1536 -> "1.5 KiB", as ls -h and qemu-img do.
pub fn human(mut n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut u = 0;
    while n >= 1024.0 && u + 1 < units.len() {
        n /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n:.0} B")
    } else {
        format!("{n:.1} {}", units[u])
    }
}

/// vm-send: vm-run writes the stream straight into our stdout, so to
/// count it vm-run is given a pipe instead, and what comes out of the pipe
/// is spliced on to stdout (no copy through our memory). Ends at the
/// pipe's end of file, when vm-run has written all and let go of its end.
pub fn relay(from: OwnedFd, mut meter: Meter) -> io::Result<()> {
    let out = io::stdout();
    loop {
        // SAFETY: splice(2) between two descriptors we hold open, with
        // null offsets (a pipe and whatever stdout is); no memory of ours.
        let n = unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                out.as_fd().as_raw_fd(),
                std::ptr::null_mut(),
                1 << 20,
                libc::SPLICE_F_MOVE,
            )
        };
        match n {
            0 => break,
            n if n > 0 => meter.add(n as usize),
            _ => {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    // splice refuses a file opened for appending (>>):
                    // copy through a buffer instead.
                    Some(libc::EINVAL) => return copy(from, meter),
                    _ => return Err(e),
                }
            }
        }
    }
    meter.finish();
    Ok(())
}

fn copy(from: OwnedFd, mut meter: Meter) -> io::Result<()> {
    let (mut from, mut out) = (std::fs::File::from(from), io::stdout().lock());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.write_all(&buf[..n])?;
                meter.add(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.flush()?;
    meter.finish();
    Ok(())
}

/// vm-receive: a reader that counts what passes. The stream is read up to
/// its END section and no further, so the last line is drawn when END's
/// bytes have passed (the sections' framing is docs/SNAPSHOT.md's: a
/// 12-byte header, then sections of a 16-byte head, tag and length first,
/// and the payload), not when the guest ends much later.
pub struct Counting<R> {
    inner: R,
    meter: Meter,
    /// Bytes left in the header, a section head, or a payload.
    left: u64,
    head: Vec<u8>,
    in_payload: bool,
    last: bool,
}

impl<R: Read> Counting<R> {
    pub fn new(inner: R, meter: Meter) -> Self {
        Counting {
            inner,
            meter,
            left: 12,
            head: Vec::with_capacity(16),
            in_payload: true, // the file header, skipped as a payload is
            last: false,
        }
    }

    /// Follows the framing over `buf`, the bytes just read.
    fn follow(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() && !self.meter.done {
            if self.in_payload {
                let n = buf
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= n as u64;
                buf = &buf[n..];
                if self.left == 0 {
                    if self.last {
                        self.meter.finish();
                    }
                    self.in_payload = false;
                    self.head.clear();
                }
            } else {
                let n = buf.len().min(16 - self.head.len());
                self.head.extend_from_slice(&buf[..n]);
                buf = &buf[n..];
                if self.head.len() == 16 {
                    self.last = &self.head[..4] == b"END ";
                    let mut len = [0u8; 8];
                    len.copy_from_slice(&self.head[4..12]);
                    self.left = u64::from_le_bytes(len);
                    self.in_payload = true;
                    if self.left == 0 && self.last {
                        self.meter.finish();
                    }
                }
            }
        }
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !self.meter.done {
            self.meter.add(n);
            self.follow(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_ls_h_prints_them() {
        assert_eq!(human(0.0), "0 B");
        assert_eq!(human(1023.0), "1023 B");
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
    }

    #[test]
    fn the_count_ends_with_the_end_section() {
        let meter = Meter {
            tool: "test",
            bytes: 0,
            start: Instant::now(),
            drawn: Some(Instant::now() + Duration::from_secs(3600)),
            done: false,
        };
        let mut s = b"VMSNAPSH\x04\0\0\0".to_vec();
        s.extend_from_slice(b"CONF");
        s.extend_from_slice(&3u64.to_le_bytes());
        s.extend_from_slice(&[0; 4]);
        s.extend_from_slice(b"abc");
        s.extend_from_slice(b"END ");
        s.extend_from_slice(&8u64.to_le_bytes());
        s.extend_from_slice(&[0; 4]);
        s.extend_from_slice(&1u64.to_le_bytes());
        let whole = s.len();
        s.extend_from_slice(b"more");
        let mut r = Counting::new(&s[..], meter);
        let mut buf = [0u8; 5];
        let mut read = 0;
        while !r.meter.done {
            let n = r.read(&mut buf).expect("read");
            assert!(n > 0, "END not seen after {read} bytes");
            read += n;
        }
        assert!(
            read >= whole && read < whole + buf.len(),
            "{read} of {whole}"
        );
    }
}
