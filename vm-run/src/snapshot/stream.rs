//! The snapshot stream, version 6 (docs/SNAPSHOT.md): a header, then
//! sections, each a tag, a length and a CRC-32 of its payload, readable
//! strictly in order from a pipe; written into a regular file, its memory
//! is one page-aligned image after an MIMG section, which a receiver may
//! map instead of reading. This file is the only place that knows the
//! layout on the wire.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

pub const MAGIC: &[u8; 8] = b"VMSNAP\r\n";
pub const VERSION: u32 = 6;
/// Version 1 streams are version 2 streams without memory before DEVS;
/// version 2 streams are version 3 streams without NICs in CONF and
/// without RTC (and their guests have no vmgenid page); version 3
/// streams are version 4 streams whose guests cannot unplug their NICs
/// (no hotplug slots in their ACPI tables, so no new MAC on a receive);
/// version 4 streams are version 5 streams without PCIX (no device kept
/// state beyond its transport), and their guests booted a kernel, not a
/// BIOS, and had no CD-ROM; version 5 streams are version 6 streams
/// without an MIMG section (their memory always comes in MEM runs).
pub const OLDEST: u32 = 1;
/// The largest section: a BIOS image (memory comes in runs of 1 MiB).
/// Each reader names a smaller bound for the sections it expects; a
/// longer length is corruption.
pub const MAX_SECTION: u64 = 16 << 20;

/// Section tags, in the order a stream has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// The guest's configuration: memory, vCPUs, CPUID, disks, time.
    Config,
    /// A BIOS-booted guest's BIOS image (version 5).
    Rom,
    /// The devices: UART, ACPI PM1, PCI functions.
    Devices,
    /// The PCI functions' own state beyond their transport, by slot
    /// (version 5): the CD-ROM's drive.
    PciDevices,
    /// A BIOS-booted guest's fw_cfg device (version 5).
    FwCfg,
    /// The CMOS RTC: its offset from the host's clock, its CMOS bytes.
    Rtc,
    /// One vCPU's registers and in-kernel state; one section per vCPU.
    Vcpu,
    /// The VM's in-kernel state: PIC, IOAPIC, PIT, kvmclock.
    Vm,
    /// A run of non-zero guest pages: address, then the pages.
    Memory,
    /// All of guest memory as one image after the section (version 6,
    /// written into a regular file): the section holds where, the image
    /// follows it.
    Image,
    /// The end, with the number of sections before it.
    End,
}

const TAGS: [(Tag, &[u8; 4]); 11] = [
    (Tag::Config, b"CONF"),
    (Tag::Rom, b"ROM "),
    (Tag::Devices, b"DEVS"),
    (Tag::PciDevices, b"PCIX"),
    (Tag::FwCfg, b"FWCF"),
    (Tag::Rtc, b"RTC "),
    (Tag::Vcpu, b"VCPU"),
    (Tag::Vm, b"VMST"),
    (Tag::Memory, b"MEM "),
    (Tag::Image, b"MIMG"),
    (Tag::End, b"END "),
];

#[derive(Debug)]
pub enum StreamError {
    Io(io::Error),
    /// The stream ended early: a sender that died, a cut pipe.
    Truncated,
    NotASnapshot,
    Version(u32),
    UnknownSection([u8; 4]),
    TooLong(Tag, u64),
    Checksum(Tag),
    /// A section where the stream has no business having it.
    Order(Tag, &'static str),
    /// A section's content does not parse.
    Bad(Tag, String),
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            StreamError::Io(e) => write!(f, "{e}"),
            StreamError::Truncated => f.write_str("snapshot stream truncated"),
            StreamError::NotASnapshot => f.write_str("not a vm-run snapshot stream"),
            StreamError::Version(v) => {
                write!(
                    f,
                    "snapshot stream version {v}, this vm-run reads {OLDEST} to {VERSION}"
                )
            }
            StreamError::UnknownSection(t) => {
                write!(
                    f,
                    "unknown snapshot section {:?}",
                    String::from_utf8_lossy(t)
                )
            }
            StreamError::TooLong(t, n) => write!(f, "snapshot section {t:?} of {n} bytes"),
            StreamError::Checksum(t) => write!(f, "snapshot section {t:?}: checksum mismatch"),
            StreamError::Order(t, why) => write!(f, "snapshot section {t:?}: {why}"),
            StreamError::Bad(t, why) => write!(f, "snapshot section {t:?}: {why}"),
        }
    }
}

impl From<io::Error> for StreamError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            StreamError::Truncated
        } else {
            StreamError::Io(e)
        }
    }
}

pub struct Writer<W: Write> {
    out: W,
    sections: u64,
    /// Bytes written since the stream's start, header included.
    written: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        Ok(Writer {
            out,
            sections: 0,
            written: 12,
        })
    }

    /// Where the next byte goes, counted from the stream's start.
    pub fn position(&self) -> u64 {
        self.written
    }

    /// The output itself, for what follows an MIMG section: its image,
    /// written there by the caller, `len` bytes in all (holes included),
    /// so that the output's position is `position() + len` afterwards.
    pub fn raw(&mut self, len: u64) -> &mut W {
        self.written += len;
        &mut self.out
    }

    /// One section from its payload's parts, without copying them.
    pub fn section(&mut self, tag: Tag, parts: &[&[u8]]) -> io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut crc = crc32fast::Hasher::new();
        for p in parts {
            crc.update(p);
        }
        let mut head = [0u8; 16];
        head[..4].copy_from_slice(tag_bytes(tag));
        head[4..12].copy_from_slice(&(len as u64).to_le_bytes());
        head[12..].copy_from_slice(&crc.finalize().to_le_bytes());
        self.out.write_all(&head)?;
        for p in parts {
            self.out.write_all(p)?;
        }
        self.written += 16 + len as u64;
        self.sections += 1;
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        let n = self.sections.to_le_bytes();
        self.section(Tag::End, &[&n])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn tag_bytes(tag: Tag) -> &'static [u8; 4] {
    TAGS.iter()
        .find(|(t, _)| *t == tag)
        .map_or(b"????", |(_, b)| b)
}

pub struct Reader<R: Read> {
    input: R,
    version: u32,
    sections: u64,
    done: bool,
    /// The last section's payload. One buffer for all: a fresh one per
    /// memory section cost a receive more than its reads (a mapping, its
    /// page faults and its zeroing, each MiB).
    payload: Vec<u8>,
    /// Bytes read since the stream's start, header included.
    read: u64,
    /// The regular file the input reads, and where in it the stream
    /// starts: an image in it can be mapped, and skipped with a seek.
    file: Option<(File, u64)>,
}

impl<R: Read> Reader<R> {
    pub fn new(mut input: R) -> Result<Self, StreamError> {
        let mut head = [0u8; 12];
        input.read_exact(&mut head).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => StreamError::NotASnapshot,
            _ => StreamError::Io(e),
        })?;
        if &head[..8] != MAGIC {
            return Err(StreamError::NotASnapshot);
        }
        let v = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if !(OLDEST..=VERSION).contains(&v) {
            return Err(StreamError::Version(v));
        }
        Ok(Reader {
            input,
            version: v,
            sections: 0,
            done: false,
            payload: Vec::new(),
            read: 12,
            file: None,
        })
    }

    /// Tells the reader that its input is `file` itself, read without a
    /// buffer (a descriptor that shares the file's offset), so that an
    /// image may be mapped from it and skipped by seeking. Where the
    /// offset cannot be had, the stream is read as from a pipe.
    pub fn with_file(mut self, mut file: File) -> Self {
        if let Ok(at) = file.stream_position() {
            if let Some(start) = at.checked_sub(self.read) {
                self.file = Some((file, start));
            }
        }
        self
    }

    /// Where the next byte comes from, counted from the stream's start.
    pub fn position(&self) -> u64 {
        self.read
    }

    /// The input's file and the stream's offset in it, when it is one.
    pub fn file(&self) -> Option<(&File, u64)> {
        self.file.as_ref().map(|(f, start)| (f, *start))
    }

    /// Bytes that are not a section: an image's padding and pages.
    pub fn read_raw(&mut self, buf: &mut [u8]) -> Result<(), StreamError> {
        self.input.read_exact(buf)?;
        self.read += buf.len() as u64;
        Ok(())
    }

    /// Goes past `n` bytes of a file's image that were mapped, not read.
    pub fn skip_in_file(&mut self, n: u64) -> Result<(), StreamError> {
        let Some((file, _)) = self.file.as_mut() else {
            return Err(StreamError::Io(io::Error::other("not a file")));
        };
        let n = i64::try_from(n).map_err(|_| StreamError::Truncated)?;
        file.seek(SeekFrom::Current(n))?;
        self.read += n as u64;
        Ok(())
    }

    /// The stream's version, from its header.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The next section and its verified payload, or None after END.
    /// `max` bounds what this section may be, so that a corrupt length
    /// never sizes an allocation.
    pub fn next(&mut self, max: u64) -> Result<Option<(Tag, &[u8])>, StreamError> {
        if self.done {
            return Ok(None);
        }
        let mut head = [0u8; 16];
        self.input.read_exact(&mut head)?;
        let raw: [u8; 4] = [head[0], head[1], head[2], head[3]];
        let tag = TAGS
            .iter()
            .find(|(_, b)| **b == raw)
            .map(|(t, _)| *t)
            .ok_or(StreamError::UnknownSection(raw))?;
        let len = u64::from_le_bytes(head[4..12].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(head[12..16].try_into().unwrap_or_default());
        if len > max.min(MAX_SECTION) {
            return Err(StreamError::TooLong(tag, len));
        }
        let payload = &mut self.payload;
        payload.resize(len as usize, 0);
        self.input.read_exact(payload)?;
        self.read += 16 + len;
        if crc32fast::hash(payload) != crc {
            return Err(StreamError::Checksum(tag));
        }
        if tag == Tag::End {
            let n = u64::from_le_bytes(payload.as_slice().try_into().unwrap_or([0xff; 8]));
            if n != self.sections {
                return Err(StreamError::Order(tag, "section count does not match"));
            }
            self.done = true;
            return Ok(None);
        }
        self.sections += 1;
        Ok(Some((tag, &self.payload)))
    }
}

/// Little-endian fields in and out of a section's payload.
#[derive(Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A length-prefixed byte string.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self
    }
}

pub struct Dec<'a> {
    tag: Tag,
    rest: &'a [u8],
}

impl<'a> Dec<'a> {
    pub fn new(tag: Tag, payload: &'a [u8]) -> Self {
        Dec { tag, rest: payload }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StreamError> {
        if self.rest.len() < n {
            return Err(StreamError::Bad(self.tag, "shorter than its fields".into()));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, StreamError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, StreamError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn u32(&mut self) -> Result<u32, StreamError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn u64(&mut self) -> Result<u64, StreamError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], StreamError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn bad(&self, why: impl Into<String>) -> StreamError {
        StreamError::Bad(self.tag, why.into())
    }
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
    pub fn end(&self) -> Result<(), StreamError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.bad("longer than its fields"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Vec<u8> {
        let mut w = Writer::new(Vec::new()).unwrap();
        w.section(Tag::Config, &[b"abc", b"def"]).unwrap();
        w.section(Tag::Memory, &[&[7u8; 4096]]).unwrap();
        w.finish().unwrap()
    }

    fn read_all(b: &[u8]) -> Result<Vec<(Tag, Vec<u8>)>, StreamError> {
        let mut r = Reader::new(b)?;
        let mut v = Vec::new();
        while let Some(s) = r.next(1 << 20)? {
            v.push((s.0, s.1.to_vec()));
        }
        Ok(v)
    }

    #[test]
    fn round_trip() {
        let s = read_all(&stream()).unwrap();
        assert_eq!(s[0], (Tag::Config, b"abcdef".to_vec()));
        assert_eq!(s[1].1.len(), 4096);
    }

    #[test]
    fn both_ends_count_the_bytes_that_went_by() {
        let mut w = Writer::new(Vec::new()).unwrap();
        w.section(Tag::Config, &[b"abc"]).unwrap();
        assert_eq!(w.position(), 12 + 16 + 3);
        w.raw(5).extend_from_slice(&[1; 5]);
        assert_eq!(w.position(), 12 + 16 + 3 + 5);
        let out = w.finish().unwrap();
        let mut r = Reader::new(out.as_slice()).unwrap();
        assert_eq!(r.position(), 12);
        assert!(r.next(100).unwrap().is_some());
        assert_eq!(r.position(), 31);
        let mut raw = [0; 5];
        r.read_raw(&mut raw).unwrap();
        assert_eq!((raw, r.position()), ([1; 5], 36));
        assert!(r.next(100).unwrap().is_none());
        // A reader of a byte slice has no file to skip in.
        assert!(r.skip_in_file(1).is_err());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = stream();
        for cut in 0..full.len() {
            assert!(read_all(&full[..cut]).is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn corruption_is_caught() {
        let full = stream();
        for at in [0, 8, 12, 14, 20, 30, 40, full.len() - 1] {
            let mut bad = full.clone();
            bad[at] ^= 0x40;
            assert!(read_all(&bad).is_err(), "flip at {at} accepted");
        }
        let mut next = full.clone();
        next[8] = VERSION as u8 + 1;
        assert!(matches!(read_all(&next), Err(StreamError::Version(v)) if v == VERSION + 1));
        let mut v0 = full.clone();
        v0[8] = 0;
        assert!(matches!(read_all(&v0), Err(StreamError::Version(0))));
        // Versions 1, 2 and 5 read as they did (what they lack is for the
        // reader of the sections to know).
        for v in [1, 2, 5] {
            let mut old = full.clone();
            old[8] = v;
            assert_eq!(
                Reader::new(old.as_slice()).map(|r| r.version()).ok(),
                Some(v.into())
            );
            assert!(read_all(&old).is_ok());
        }
        // A huge length is refused before anything is allocated.
        let mut huge = full;
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(read_all(&huge), Err(StreamError::TooLong(..))));
    }

    #[test]
    fn fields() {
        let mut e = Enc::default();
        e.u8(1).u16(2).u32(3).u64(4).bytes(b"xy");
        let mut d = Dec::new(Tag::Config, &e.0);
        assert_eq!((d.u8().unwrap(), d.u16().unwrap()), (1, 2));
        assert_eq!((d.u32().unwrap(), d.u64().unwrap()), (3, 4));
        assert_eq!(d.bytes().unwrap(), b"xy");
        assert!(d.end().is_ok());
        assert!(d.u8().is_err());
    }
}
