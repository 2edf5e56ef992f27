//! An MMC CD/DVD-ROM drive with one read-only medium that never leaves
//! it: what SeaBIOS needs to boot from it (INQUIRY, TEST UNIT READY,
//! REQUEST SENSE, READ CAPACITY, READ(10), REPORT LUNS) and what Linux's
//! sr driver asks when it probes and mounts it (the TOC, the
//! configuration, the capabilities mode page, polled media events).
//!
//! A command is a function of the CDB, the medium's size and the little
//! state a drive keeps (the last sense, whether the guest has heard of
//! the medium, the lock): its answer is data, or the part of the image to
//! read (the transport reads it straight into guest memory), or sense. No
//! answer is larger than a few hundred bytes whatever the CDB says.

use super::sense::Sense;
use crate::snapshot::stream::{Dec, Enc, StreamError};

pub const SECTOR: u64 = 2048;

/// A CD holds at most this many sectors (80 minutes at 75 a second);
/// a larger image is presented as a DVD, as a drive would.
const CD_MAX_SECTORS: u64 = 80 * 60 * 75;
/// The lead-in that MSF addresses count from (2 seconds).
const MSF_OFFSET: u64 = 150;
const LEADOUT: u8 = 0xaa;

/// MMC profiles (GET CONFIGURATION).
const PROFILE_CD_ROM: u16 = 0x0008;
const PROFILE_DVD_ROM: u16 = 0x0010;

/// The ADR/CONTROL byte of a data track's TOC entry: Q sub-channel mode
/// 1, data track, copying not permitted.
const DATA_TRACK: u8 = 0x14;

/// Mode pages (MODE SENSE).
const PAGE_ERROR_RECOVERY: u8 = 0x01;
const PAGE_CAPABILITIES: u8 = 0x2a;
const PAGE_ALL: u8 = 0x3f;

/// Operation codes.
mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const PREVENT_ALLOW: u8 = 0x1e;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const READ_TOC: u8 = 0x43;
    pub const GET_CONFIGURATION: u8 = 0x46;
    pub const GET_EVENT_STATUS: u8 = 0x4a;
    pub const READ_DISC_INFORMATION: u8 = 0x51;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const READ_16: u8 = 0x88;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const READ_12: u8 = 0xa8;
    pub const MECHANISM_STATUS: u8 = 0xbd;
}
/// SERVICE ACTION IN(16)'s READ CAPACITY(16).
const SA_READ_CAPACITY_16: u8 = 0x10;

/// How a command ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// GOOD, with this data for the initiator (already cut to the
    /// allocation length; empty for commands without data).
    Data(Vec<u8>),
    /// GOOD once `len` bytes of the image from `offset` reach the
    /// initiator.
    Read { offset: u64, len: u64 },
    /// CHECK CONDITION.
    Check(Sense),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdRom {
    /// Whole 2048-byte sectors of the image; a partial last one is not
    /// part of the medium.
    sectors: u64,
    /// The sense of the last command that failed, for a REQUEST SENSE
    /// (SeaBIOS asks for it after a TEST UNIT READY fails).
    pending: Option<Sense>,
    /// The "new media" event not yet reported: a drive reports the
    /// medium it had at power-on once.
    new_media: bool,
    /// PREVENT ALLOW MEDIUM REMOVAL's prevent bit.
    locked: bool,
}

impl CdRom {
    /// A drive holding an image of `size` bytes.
    pub fn new(size: u64) -> Self {
        CdRom {
            sectors: size / SECTOR,
            pending: None,
            new_media: true,
            locked: false,
        }
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// A logical unit reset: the lock goes, and the sense with it.
    pub fn reset(&mut self) {
        self.pending = None;
        self.locked = false;
    }

    /// Runs one command; `cdb` may be of any length (what is missing
    /// reads as zeroes).
    pub fn command(&mut self, cdb: &[u8]) -> Reply {
        let mut c = [0u8; 16];
        let n = cdb.len().min(c.len());
        c[..n].copy_from_slice(&cdb[..n]);
        let reply = self.execute(&c);
        // INQUIRY, REPORT LUNS and REQUEST SENSE leave the sense of the
        // command before them alone (SPC-4 5.12); the others replace it.
        match c[0] {
            op::INQUIRY | op::REPORT_LUNS => {}
            op::REQUEST_SENSE if !matches!(reply, Reply::Check(_)) => self.pending = None,
            _ => {
                self.pending = match &reply {
                    Reply::Check(s) => Some(*s),
                    _ => None,
                }
            }
        }
        reply
    }

    fn execute(&mut self, c: &[u8; 16]) -> Reply {
        match c[0] {
            op::TEST_UNIT_READY => Reply::Data(Vec::new()),
            op::REQUEST_SENSE => self.request_sense(c),
            op::INQUIRY => inquiry(c),
            op::MODE_SENSE_6 => self.mode_sense(c[1], c[2], c[3], c[4].into(), false),
            op::MODE_SENSE_10 => self.mode_sense(c[1], c[2], c[3], be16(&c[7..]).into(), true),
            op::START_STOP_UNIT => {
                let (load_eject, start) = (c[4] & 2 != 0, c[4] & 1 != 0);
                if load_eject && !start && self.locked {
                    return Reply::Check(Sense::REMOVAL_PREVENTED);
                }
                // The medium stays: vm-run cannot change it, so the tray
                // is as good as closed again at once.
                Reply::Data(Vec::new())
            }
            op::PREVENT_ALLOW => {
                // Either prevent bit (MMC's persistent one too) locks.
                self.locked = c[4] & 3 != 0;
                Reply::Data(Vec::new())
            }
            op::READ_CAPACITY_10 => {
                let last = self.sectors.saturating_sub(1).min(u32::MAX.into()) as u32;
                let mut d = last.to_be_bytes().to_vec();
                d.extend_from_slice(&(SECTOR as u32).to_be_bytes());
                Reply::Data(d)
            }
            op::SERVICE_ACTION_IN_16 if c[1] & 0x1f == SA_READ_CAPACITY_16 => {
                let mut d = vec![0u8; 32];
                d[0..8].copy_from_slice(&self.sectors.saturating_sub(1).to_be_bytes());
                d[8..12].copy_from_slice(&(SECTOR as u32).to_be_bytes());
                cut(d, be32(&c[10..]) as usize)
            }
            op::SERVICE_ACTION_IN_16 => Reply::Check(Sense::INVALID_FIELD_IN_CDB),
            op::READ_10 => self.read(be32(&c[2..]).into(), be16(&c[7..]).into()),
            op::READ_12 => self.read(be32(&c[2..]).into(), be32(&c[6..]).into()),
            op::READ_16 => self.read(be64(&c[2..]), be32(&c[10..]).into()),
            op::READ_TOC => self.read_toc(c),
            op::GET_CONFIGURATION => self.get_configuration(c),
            op::GET_EVENT_STATUS => self.event_status(c),
            op::READ_DISC_INFORMATION => self.disc_information(c),
            op::MECHANISM_STATUS => cut(vec![0u8; 8], be16(&c[8..]).into()),
            op::REPORT_LUNS => report_luns(c),
            _ => Reply::Check(Sense::INVALID_OPCODE),
        }
    }

    fn is_dvd(&self) -> bool {
        self.sectors > CD_MAX_SECTORS
    }

    fn read(&self, lba: u64, count: u64) -> Reply {
        match lba.checked_add(count) {
            Some(end) if end <= self.sectors => {
                if count == 0 {
                    Reply::Data(Vec::new())
                } else {
                    Reply::Read {
                        offset: lba * SECTOR,
                        len: count * SECTOR,
                    }
                }
            }
            _ => Reply::Check(Sense::LBA_OUT_OF_RANGE),
        }
    }

    fn request_sense(&self, c: &[u8; 16]) -> Reply {
        // Descriptor-format sense is optional; fixed format it is.
        if c[1] & 1 != 0 {
            return Reply::Check(Sense::INVALID_FIELD_IN_CDB);
        }
        let sense = self.pending.unwrap_or(Sense::NONE);
        cut(sense.fixed().to_vec(), c[4].into())
    }

    /// MODE SENSE (6 or 10): the error recovery and capabilities pages;
    /// never block descriptors, which MMC drives need not have.
    fn mode_sense(&self, _flags: u8, page: u8, subpage: u8, alloc: usize, ten: bool) -> Reply {
        let (control, code) = (page >> 6, page & 0x3f);
        if control == 3 {
            return Reply::Check(Sense::SAVING_NOT_SUPPORTED);
        }
        if subpage != 0 {
            return Reply::Check(Sense::INVALID_FIELD_IN_CDB);
        }
        let mut pages = Vec::new();
        if matches!(code, PAGE_ERROR_RECOVERY | PAGE_ALL) {
            pages.push(error_recovery_page());
        }
        if matches!(code, PAGE_CAPABILITIES | PAGE_ALL) {
            pages.push(self.capabilities_page());
        }
        if pages.is_empty() {
            return Reply::Check(Sense::INVALID_FIELD_IN_CDB);
        }
        // Changeable values: nothing is.
        if control == 1 {
            for p in &mut pages {
                p[2..].fill(0);
            }
        }
        let body: Vec<u8> = pages.concat();
        let mut d = if ten {
            let len = (body.len() + 6) as u16;
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&len.to_be_bytes());
            h
        } else {
            vec![(body.len() + 3) as u8, 0, 0, 0]
        };
        d.extend_from_slice(&body);
        cut(d, alloc)
    }

    /// The CD/DVD capabilities and mechanical status page (MMC-3 6.3.11)
    /// as Linux's sr reads it: reads CD-R/RW and DVD-ROM, multi-session,
    /// a tray that locks and ejects, no audio.
    fn capabilities_page(&self) -> Vec<u8> {
        let mut p = vec![0u8; 22];
        p[0] = PAGE_CAPABILITIES;
        p[1] = (p.len() - 2) as u8;
        p[2] = 0x0b; // CD-R, CD-RW, DVD-ROM read
        p[4] = 0x40; // multi-session
                     // Tray loading mechanism, eject, lock, and whether it is locked.
        p[6] = 0x20 | 0x08 | 0x01 | if self.locked { 0x02 } else { 0 };
        // Read speeds in kB/s: what "32x" means for a CD.
        let speed = (32u16 * 176).to_be_bytes();
        p[8..10].copy_from_slice(&speed);
        p[14..16].copy_from_slice(&speed);
        p
    }

    /// READ TOC/PMA/ATIP: one data track in one session, formats 0 (the
    /// TOC) and 1 (session information), LBA or MSF addresses.
    fn read_toc(&self, c: &[u8; 16]) -> Reply {
        let msf = c[1] & 2 != 0;
        // Older drivers put the format in the control byte's top bits.
        let format = match c[2] & 0x0f {
            0 => c[9] >> 6,
            f => f,
        };
        let alloc = be16(&c[7..]).into();
        let entry = |track: u8, lba: u64| {
            let mut e = vec![0, DATA_TRACK, track, 0];
            e.extend_from_slice(&address(lba, msf));
            e
        };
        let (first, last, entries) = match format {
            0 => {
                let start = c[6];
                if start > 1 && start != LEADOUT {
                    return Reply::Check(Sense::INVALID_FIELD_IN_CDB);
                }
                let mut e = Vec::new();
                if start <= 1 {
                    e.extend(entry(1, 0));
                }
                e.extend(entry(LEADOUT, self.sectors));
                (1, 1, e)
            }
            // First and last session, then the first track of the last.
            1 => (1, 1, entry(1, 0)),
            _ => return Reply::Check(Sense::INVALID_FIELD_IN_CDB),
        };
        let mut d = ((entries.len() + 2) as u16).to_be_bytes().to_vec();
        d.extend_from_slice(&[first, last]);
        d.extend_from_slice(&entries);
        cut(d, alloc)
    }

    /// GET CONFIGURATION: the profiles and the features a read-only
    /// drive has, from the starting feature on (RT 0 all, 1 current ones,
    /// 2 just that one).
    fn get_configuration(&self, c: &[u8; 16]) -> Reply {
        let rt = c[1] & 3;
        if rt == 3 {
            return Reply::Check(Sense::INVALID_FIELD_IN_CDB);
        }
        let start = be16(&c[2..]);
        let dvd = self.is_dvd();
        let profile = if dvd { PROFILE_DVD_ROM } else { PROFILE_CD_ROM };
        let mut profiles = Vec::new();
        for p in [PROFILE_DVD_ROM, PROFILE_CD_ROM] {
            profiles.extend_from_slice(&p.to_be_bytes());
            profiles.extend_from_slice(&[u8::from(p == profile), 0]);
        }
        let mut random_readable = (SECTOR as u32).to_be_bytes().to_vec();
        let blocking: u16 = if dvd { 16 } else { 1 };
        random_readable.extend_from_slice(&blocking.to_be_bytes());
        random_readable.extend_from_slice(&[0, 0]);
        // (code, version, persistent, current, data)
        let features: [(u16, u8, bool, bool, Vec<u8>); 7] = [
            (0x0000, 0, true, true, profiles),
            // Core: the SCSI family of physical interfaces.
            (0x0001, 2, true, true, vec![0, 0, 0, 1, 0, 0, 0, 0]),
            // Morphing: polled GET EVENT STATUS NOTIFICATION.
            (0x0002, 1, true, true, vec![0, 0, 0, 0]),
            // Removable medium: tray, eject, lock.
            (0x0003, 0, true, true, vec![0x20 | 0x08 | 0x01, 0, 0, 0]),
            (0x0010, 0, false, true, random_readable),
            (0x001e, 2, false, !dvd, vec![0, 0, 0, 0]),
            (0x001f, 0, false, dvd, Vec::new()),
        ];
        let mut d = vec![0u8; 8];
        d[6..8].copy_from_slice(&profile.to_be_bytes());
        for (code, version, persistent, current, data) in features {
            let wanted = match rt {
                0 => code >= start,
                1 => code >= start && current,
                _ => code == start,
            };
            if !wanted {
                continue;
            }
            d.extend_from_slice(&code.to_be_bytes());
            d.push(version << 2 | u8::from(persistent) << 1 | u8::from(current));
            d.push(data.len() as u8);
            d.extend_from_slice(&data);
        }
        let len = (d.len() - 4) as u32;
        d[0..4].copy_from_slice(&len.to_be_bytes());
        cut(d, be16(&c[7..]).into())
    }

    /// GET EVENT STATUS NOTIFICATION, polled only: the media class, whose
    /// one event is the medium there since power-on.
    fn event_status(&mut self, c: &[u8; 16]) -> Reply {
        if c[1] & 1 == 0 {
            return Reply::Check(Sense::INVALID_FIELD_IN_CDB);
        }
        const MEDIA_CLASS: u8 = 4;
        let supported = 1 << MEDIA_CLASS;
        let alloc: usize = be16(&c[7..]).into();
        if c[4] & supported == 0 {
            // No event available (NEA) for the classes asked about.
            return cut(vec![0, 2, 0x80, supported], alloc);
        }
        const NEW_MEDIA: u8 = 2;
        const MEDIA_PRESENT: u8 = 2;
        let event = if self.new_media { NEW_MEDIA } else { 0 };
        // Reported once it reaches the initiator whole.
        if alloc >= 8 {
            self.new_media = false;
        }
        cut(
            vec![0, 6, MEDIA_CLASS, supported, event, MEDIA_PRESENT, 0, 0],
            alloc,
        )
    }

    /// READ DISC INFORMATION: a finished (closed) disc of one session
    /// with one track.
    fn disc_information(&self, c: &[u8; 16]) -> Reply {
        if c[1] & 7 != 0 {
            return Reply::Check(Sense::INVALID_FIELD_IN_CDB);
        }
        let mut d = vec![0u8; 34];
        d[0..2].copy_from_slice(&32u16.to_be_bytes());
        d[2] = 3 << 2 | 2; // last session complete, disc complete
        d[3] = 1; // first track
        d[4] = 1; // sessions
        d[5] = 1; // first track of the last session
        d[6] = 1; // last track of the last session
        d[7] = 0x20; // unrestricted use
                     // No lead-in or lead-out to tell of: all ones.
        d[16..24].fill(0xff);
        cut(d, be16(&c[7..]).into())
    }

    /// The drive's state, for a snapshot.
    pub fn save(&self, e: &mut Enc) {
        let s = self.pending.unwrap_or(Sense::NONE);
        e.u8(self.pending.is_some().into())
            .u8(s.key)
            .u8(s.asc)
            .u8(s.ascq)
            .u8(self.new_media.into())
            .u8(self.locked.into());
    }

    pub fn restore(&mut self, d: &mut Dec) -> Result<(), StreamError> {
        let flag = |d: &mut Dec, v: u8| match v {
            0 | 1 => Ok(v == 1),
            _ => Err(d.bad(format!("CD-ROM: {v} is not a flag"))),
        };
        let v = d.u8()?;
        let pending = flag(d, v)?;
        let s = Sense::new(d.u8()?, d.u8()?, d.u8()?);
        if s.key > 0x0f {
            return Err(d.bad("CD-ROM: not a sense key"));
        }
        let v = d.u8()?;
        let new_media = flag(d, v)?;
        let v = d.u8()?;
        let locked = flag(d, v)?;
        self.pending = pending.then_some(s);
        self.new_media = new_media;
        self.locked = locked;
        Ok(())
    }
}

fn inquiry(c: &[u8; 16]) -> Reply {
    let alloc = be16(&c[3..]).into();
    const PERIPHERAL: u8 = 0x05; // CD/DVD device, connected
    if c[1] & 1 == 0 {
        if c[2] != 0 {
            return Reply::Check(Sense::INVALID_FIELD_IN_CDB);
        }
        let mut d = vec![0u8; 36];
        d[0] = PERIPHERAL;
        d[1] = 0x80; // removable
        d[2] = 0x05; // SPC-3
        d[3] = 0x02; // response data format
        d[4] = (d.len() - 5) as u8;
        d[8..16].copy_from_slice(VENDOR);
        d[16..32].copy_from_slice(b"vm-run CD-ROM   ");
        d[32..36].copy_from_slice(b"1.0 ");
        return cut(d, alloc);
    }
    // Vital product data: the page list, a serial number, and an
    // identifier (T10 vendor ID based, ASCII).
    let body = match c[2] {
        0x00 => vec![0x00, 0x80, 0x83],
        0x80 => SERIAL.to_vec(),
        0x83 => {
            let mut id = vec![0x02, 0x01, 0x00, (VENDOR.len() + SERIAL.len()) as u8];
            id.extend_from_slice(VENDOR);
            id.extend_from_slice(SERIAL);
            id
        }
        _ => return Reply::Check(Sense::INVALID_FIELD_IN_CDB),
    };
    let mut d = vec![PERIPHERAL, c[2], 0, body.len() as u8];
    d.extend_from_slice(&body);
    cut(d, alloc)
}

const VENDOR: &[u8; 8] = b"VM-TOOLS";
const SERIAL: &[u8; 8] = b"CDROM000";

fn report_luns(c: &[u8; 16]) -> Reply {
    let alloc = be32(&c[6..]);
    if alloc < 16 || c[2] > 2 {
        return Reply::Check(Sense::INVALID_FIELD_IN_CDB);
    }
    // One LUN, number 0: a list 8 bytes long, then its 8 zero bytes.
    let mut d = vec![0u8; 16];
    d[3] = 8;
    cut(d, alloc as usize)
}

/// The read-write error recovery page: defaults, nothing to tune.
fn error_recovery_page() -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p[0] = PAGE_ERROR_RECOVERY;
    p[1] = (p.len() - 2) as u8;
    p
}

/// A TOC address: an LBA, or minutes/seconds/frames from the lead-in.
fn address(lba: u64, msf: bool) -> [u8; 4] {
    if !msf {
        return (lba.min(u32::MAX.into()) as u32).to_be_bytes();
    }
    let f = lba + MSF_OFFSET;
    let m = (f / (75 * 60)).min(255) as u8;
    [0, m, (f / 75 % 60) as u8, (f % 75) as u8]
}

/// At most `alloc` bytes of `d`: the allocation length is how much the
/// initiator has room for.
fn cut(mut d: Vec<u8>, alloc: usize) -> Reply {
    d.truncate(alloc);
    Reply::Data(d)
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[..8]);
    u64::from_be_bytes(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::stream::Tag;

    /// A 100-sector image.
    fn cd() -> CdRom {
        CdRom::new(100 * SECTOR + 5)
    }

    fn data(r: Reply) -> Vec<u8> {
        match r {
            Reply::Data(d) => d,
            other => panic!("{other:?}"),
        }
    }

    fn check(r: Reply) -> Sense {
        match r {
            Reply::Check(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn inquiry_says_cd_rom_removable() {
        let mut d = cd();
        let std = data(d.command(&[op::INQUIRY, 0, 0, 0, 36, 0]));
        assert_eq!(std.len(), 36);
        assert_eq!((std[0], std[1], std[4]), (5, 0x80, 31));
        assert_eq!(&std[8..16], b"VM-TOOLS");
        // Cut to the allocation length.
        assert_eq!(data(d.command(&[op::INQUIRY, 0, 0, 0, 5, 0])).len(), 5);
        let pages = data(d.command(&[op::INQUIRY, 1, 0, 0, 255, 0]));
        assert_eq!(pages, [5, 0, 0, 3, 0, 0x80, 0x83]);
        let serial = data(d.command(&[op::INQUIRY, 1, 0x80, 0, 255, 0]));
        assert_eq!(&serial[4..], SERIAL);
        assert_eq!(
            check(d.command(&[op::INQUIRY, 1, 0x99, 0, 255, 0])),
            Sense::INVALID_FIELD_IN_CDB
        );
        assert_eq!(
            check(d.command(&[op::INQUIRY, 0, 0x80, 0, 255, 0])),
            Sense::INVALID_FIELD_IN_CDB
        );
    }

    #[test]
    fn capacity_counts_whole_sectors() {
        let mut d = cd();
        let c = data(d.command(&[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(c, [0, 0, 0, 99, 0, 0, 8, 0]);
        let mut cdb = [0u8; 16];
        cdb[0] = op::SERVICE_ACTION_IN_16;
        cdb[1] = SA_READ_CAPACITY_16;
        cdb[13] = 32;
        let c = data(d.command(&cdb));
        assert_eq!(c.len(), 32);
        assert_eq!(be64(&c[0..8]), 99);
        assert_eq!(be32(&c[8..12]), 2048);
        cdb[1] = 0x11;
        assert_eq!(check(d.command(&cdb)), Sense::INVALID_FIELD_IN_CDB);
    }

    #[test]
    fn reads_name_the_sectors_and_stop_at_the_end() {
        let mut d = cd();
        let read10 = |lba: u32, n: u16| {
            let mut c = vec![op::READ_10, 0];
            c.extend_from_slice(&lba.to_be_bytes());
            c.push(0);
            c.extend_from_slice(&n.to_be_bytes());
            c.push(0);
            c
        };
        assert_eq!(
            d.command(&read10(16, 2)),
            Reply::Read {
                offset: 16 * 2048,
                len: 4096
            }
        );
        assert_eq!(
            d.command(&read10(99, 1)),
            Reply::Read {
                offset: 99 * 2048,
                len: 2048
            }
        );
        assert_eq!(d.command(&read10(5, 0)), Reply::Data(Vec::new()));
        for (lba, n) in [(100, 1), (99, 2), (u32::MAX, 1), (0, u16::MAX)] {
            assert_eq!(check(d.command(&read10(lba, n))), Sense::LBA_OUT_OF_RANGE);
        }
        let mut c12 = [0u8; 12];
        c12[0] = op::READ_12;
        c12[5] = 3;
        c12[9] = 4;
        assert_eq!(
            d.command(&c12),
            Reply::Read {
                offset: 3 * 2048,
                len: 4 * 2048
            }
        );
        c12[6..10].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(check(d.command(&c12)), Sense::LBA_OUT_OF_RANGE);
        let mut c16 = [0u8; 16];
        c16[0] = op::READ_16;
        c16[2..10].copy_from_slice(&(u64::MAX - 1).to_be_bytes());
        c16[13] = 4;
        assert_eq!(check(d.command(&c16)), Sense::LBA_OUT_OF_RANGE);
        c16[2..10].copy_from_slice(&96u64.to_be_bytes());
        assert_eq!(
            d.command(&c16),
            Reply::Read {
                offset: 96 * 2048,
                len: 4 * 2048
            }
        );
    }

    #[test]
    fn unknown_commands_fail_and_request_sense_tells_why_once() {
        let mut d = cd();
        // WRITE(10), FORMAT UNIT, and a vendor code: a drive that reads.
        for opcode in [0x2a, 0x04, 0xc5] {
            assert_eq!(check(d.command(&[opcode; 10])), Sense::INVALID_OPCODE);
        }
        let sense = data(d.command(&[op::REQUEST_SENSE, 0, 0, 0, 18, 0]));
        assert_eq!((sense[2], sense[12], sense[13]), (5, 0x20, 0));
        let sense = data(d.command(&[op::REQUEST_SENSE, 0, 0, 0, 18, 0]));
        assert_eq!((sense[2], sense[12]), (0, 0), "reported once");
        // INQUIRY does not clear it; a good command does.
        check(d.command(&[op::READ_10, 0, 0xff, 0, 0, 0, 0, 0, 1, 0]));
        data(d.command(&[op::INQUIRY, 0, 0, 0, 36, 0]));
        let sense = data(d.command(&[op::REQUEST_SENSE, 0, 0, 0, 18, 0]));
        assert_eq!(sense[12], 0x21);
        check(d.command(&[0xff]));
        data(d.command(&[op::TEST_UNIT_READY, 0, 0, 0, 0, 0]));
        let sense = data(d.command(&[op::REQUEST_SENSE, 0, 0, 0, 252, 0]));
        assert_eq!((sense.len(), sense[12]), (18, 0));
        // Descriptor format is not offered.
        assert_eq!(
            check(d.command(&[op::REQUEST_SENSE, 1, 0, 0, 252, 0])),
            Sense::INVALID_FIELD_IN_CDB
        );
        // An empty CDB is TEST UNIT READY.
        assert_eq!(d.command(&[]), Reply::Data(Vec::new()));
    }

    #[test]
    fn toc_has_one_data_track_and_the_lead_out() {
        let mut d = cd();
        let toc = data(d.command(&[op::READ_TOC, 0, 0, 0, 0, 0, 0, 0, 100, 0]));
        assert_eq!(
            toc,
            [0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0, 0, 0x14, 0xaa, 0, 0, 0, 0, 100]
        );
        // MSF: 100 + 150 frames = 0:03:25.
        let toc = data(d.command(&[op::READ_TOC, 2, 0, 0, 0, 0, 0xaa, 0, 100, 0]));
        assert_eq!(toc, [0, 10, 1, 1, 0, 0x14, 0xaa, 0, 0, 0, 3, 25]);
        // Session information.
        let s = data(d.command(&[op::READ_TOC, 0, 1, 0, 0, 0, 0, 0, 12, 0]));
        assert_eq!(s, [0, 10, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0]);
        // The same through the old format field.
        let s2 = data(d.command(&[op::READ_TOC, 0, 0, 0, 0, 0, 0, 0, 12, 0x40]));
        assert_eq!(s, s2);
        // No track 2; no raw TOC.
        for cdb in [
            [op::READ_TOC, 0, 0, 0, 0, 0, 2, 0, 12, 0],
            [op::READ_TOC, 0, 2, 0, 0, 0, 0, 0, 12, 0],
        ] {
            assert_eq!(check(d.command(&cdb)), Sense::INVALID_FIELD_IN_CDB);
        }
        assert_eq!(
            data(d.command(&[op::READ_TOC, 0, 0, 0, 0, 0, 0, 0, 4, 0])).len(),
            4
        );
    }

    /// Walks GET CONFIGURATION's features: (code, current) each.
    fn features(d: &[u8]) -> Vec<(u16, bool)> {
        let mut out = Vec::new();
        let mut at = 8;
        while at + 4 <= d.len() {
            out.push((be16(&d[at..]), d[at + 2] & 1 != 0));
            at += 4 + usize::from(d[at + 3]);
        }
        assert_eq!(at, d.len(), "features fill the data exactly");
        out
    }

    #[test]
    fn configuration_lists_profiles_and_features() {
        let mut d = cd();
        let cfg = data(d.command(&[op::GET_CONFIGURATION, 0, 0, 0, 0, 0, 0, 0x10, 0, 0]));
        assert_eq!(be32(&cfg[0..4]) as usize, cfg.len() - 4);
        assert_eq!(be16(&cfg[6..]), PROFILE_CD_ROM);
        let f = features(&cfg);
        assert_eq!(f[0], (0, true));
        assert!(f.contains(&(0x1e, true)) && f.contains(&(0x1f, false)));
        // The profile list: DVD-ROM not current, CD-ROM current.
        assert_eq!(&cfg[12..20], &[0, 0x10, 0, 0, 0, 0x08, 1, 0]);
        // Current ones only; one feature; a feature it lacks.
        let cur = data(d.command(&[op::GET_CONFIGURATION, 1, 0, 0, 0, 0, 0, 0x10, 0, 0]));
        assert!(features(&cur).iter().all(|f| f.1));
        let one = data(d.command(&[op::GET_CONFIGURATION, 2, 0, 0x1e, 0, 0, 0, 0x10, 0, 0]));
        assert_eq!(features(&one), [(0x1e, true)]);
        let none = data(d.command(&[op::GET_CONFIGURATION, 2, 0, 0x28, 0, 0, 0, 0x10, 0, 0]));
        assert_eq!(none.len(), 8);
        assert_eq!(be32(&none[0..4]), 4);
        // Just the header, as Linux asks for the current profile.
        let head = data(d.command(&[op::GET_CONFIGURATION, 0, 0, 0, 0, 0, 0, 0, 8, 0]));
        assert_eq!(head.len(), 8);
        assert_eq!(
            check(d.command(&[op::GET_CONFIGURATION, 3, 0, 0, 0, 0, 0, 0, 8, 0])),
            Sense::INVALID_FIELD_IN_CDB
        );
        // A large image is a DVD.
        let mut dvd = CdRom::new(4 << 30);
        let cfg = data(dvd.command(&[op::GET_CONFIGURATION, 0, 0, 0, 0, 0, 0, 0x10, 0, 0]));
        assert_eq!(be16(&cfg[6..]), PROFILE_DVD_ROM);
        assert!(features(&cfg).contains(&(0x1f, true)));
    }

    #[test]
    fn mode_sense_gives_the_capabilities_page() {
        let mut d = cd();
        let m = data(d.command(&[op::MODE_SENSE_10, 0, 0x2a, 0, 0, 0, 0, 0, 255, 0]));
        assert_eq!(be16(&m[0..]) as usize, m.len() - 2);
        assert_eq!(be16(&m[6..]), 0, "no block descriptors");
        assert_eq!((m[8], usize::from(m[9])), (0x2a, m.len() - 10));
        assert_eq!(m[8 + 6] & 0x0b, 0x09, "lock and eject, unlocked");
        d.command(&[op::PREVENT_ALLOW, 0, 0, 0, 1, 0]);
        let m = data(d.command(&[op::MODE_SENSE_6, 0, 0x2a, 0, 255, 0]));
        assert_eq!(usize::from(m[0]), m.len() - 1);
        assert_eq!((m[4], m[4 + 6] & 2), (0x2a, 2), "locked");
        let all = data(d.command(&[op::MODE_SENSE_6, 0, 0x3f, 0, 255, 0]));
        assert_eq!(all.len(), 4 + 12 + 22);
        assert_eq!((all[4], all[16]), (0x01, 0x2a));
        // Changeable values: none.
        let ch = data(d.command(&[op::MODE_SENSE_6, 0, 0x40 | 0x2a, 0, 255, 0]));
        assert!(ch[6..].iter().all(|b| *b == 0));
        assert_eq!(
            data(d.command(&[op::MODE_SENSE_6, 8, 0x01, 0, 4, 0])).len(),
            4
        );
        for cdb in [
            [op::MODE_SENSE_6, 0, 0x08, 0, 255, 0],
            [op::MODE_SENSE_6, 0, 0x2a, 1, 255, 0],
        ] {
            assert_eq!(check(d.command(&cdb)), Sense::INVALID_FIELD_IN_CDB);
        }
        assert_eq!(
            check(d.command(&[op::MODE_SENSE_6, 0, 0xc0 | 0x2a, 0, 255, 0])),
            Sense::SAVING_NOT_SUPPORTED
        );
    }

    #[test]
    fn media_event_is_reported_once_and_polled_only() {
        let mut d = cd();
        let gesn = [op::GET_EVENT_STATUS, 1, 0, 0, 0x10, 0, 0, 0, 8, 0];
        assert_eq!(data(d.command(&gesn)), [0, 6, 4, 0x10, 2, 2, 0, 0]);
        assert_eq!(data(d.command(&gesn)), [0, 6, 4, 0x10, 0, 2, 0, 0]);
        // Other classes: no event available.
        let other = [op::GET_EVENT_STATUS, 1, 0, 0, 0x04, 0, 0, 0, 8, 0];
        assert_eq!(data(d.command(&other)), [0, 2, 0x80, 0x10]);
        let not_polled = [op::GET_EVENT_STATUS, 0, 0, 0, 0x10, 0, 0, 0, 8, 0];
        assert_eq!(check(d.command(&not_polled)), Sense::INVALID_FIELD_IN_CDB);
        // A header-only poll leaves the event for the next one.
        let mut d = cd();
        let short = [op::GET_EVENT_STATUS, 1, 0, 0, 0x10, 0, 0, 0, 4, 0];
        assert_eq!(data(d.command(&short)).len(), 4);
        assert_eq!(data(d.command(&gesn))[4], 2);
    }

    #[test]
    fn the_lock_holds_the_medium_in() {
        let mut d = cd();
        let eject = [op::START_STOP_UNIT, 0, 0, 0, 2, 0];
        assert_eq!(d.command(&eject), Reply::Data(Vec::new()));
        d.command(&[op::PREVENT_ALLOW, 0, 0, 0, 1, 0]);
        assert_eq!(check(d.command(&eject)), Sense::REMOVAL_PREVENTED);
        // Spinning up is fine while locked.
        assert_eq!(
            d.command(&[op::START_STOP_UNIT, 0, 0, 0, 1, 0]),
            Reply::Data(Vec::new())
        );
        d.command(&[op::PREVENT_ALLOW, 0, 0, 0, 0, 0]);
        assert_eq!(d.command(&eject), Reply::Data(Vec::new()));
        d.command(&[op::PREVENT_ALLOW, 0, 0, 0, 1, 0]);
        d.reset();
        assert_eq!(d.command(&eject), Reply::Data(Vec::new()), "reset unlocks");
    }

    #[test]
    fn mechanism_disc_information_and_luns() {
        let mut d = cd();
        let m = data(d.command(&[op::MECHANISM_STATUS, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]));
        assert_eq!(m, [0; 8]);
        let di = data(d.command(&[op::READ_DISC_INFORMATION, 0, 0, 0, 0, 0, 0, 0, 34, 0]));
        assert_eq!(
            (di.len(), be16(&di), di[2], di[3], di[4]),
            (34, 32, 0x0e, 1, 1)
        );
        assert_eq!(
            check(d.command(&[op::READ_DISC_INFORMATION, 1, 0, 0, 0, 0, 0, 0, 34, 0])),
            Sense::INVALID_FIELD_IN_CDB
        );
        // SeaBIOS's first REPORT LUNS has room for exactly one.
        let l = data(d.command(&[op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0]));
        assert_eq!(l, [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let l = data(d.command(&[op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0]));
        assert_eq!(l.len(), 16);
        assert_eq!(
            check(d.command(&[op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0])),
            Sense::INVALID_FIELD_IN_CDB
        );
    }

    #[test]
    fn every_opcode_answers_without_panicking() {
        // Each opcode with CDBs of all zeroes, all ones and a pattern:
        // an answer, never more data than the allocation allows (at most
        // 64 KiB), never a read outside the image.
        let mut d = cd();
        for opcode in 0..=255u8 {
            for fill in [0x00u8, 0xff, 0x5a] {
                for len in [0usize, 1, 6, 10, 12, 16, 32] {
                    let mut cdb = vec![fill; len];
                    if let Some(b) = cdb.first_mut() {
                        *b = opcode;
                    }
                    match d.command(&cdb) {
                        Reply::Data(v) => assert!(v.len() <= 0x1_0000),
                        Reply::Read { offset, len } => {
                            assert!(offset + len <= d.sectors() * SECTOR)
                        }
                        Reply::Check(_) => {}
                    }
                }
            }
        }
    }

    #[test]
    fn state_survives_save_and_restore() {
        let mut d = cd();
        d.command(&[op::PREVENT_ALLOW, 0, 0, 0, 1, 0]);
        d.command(&[op::GET_EVENT_STATUS, 1, 0, 0, 0x10, 0, 0, 0, 8, 0]);
        d.command(&[0xee]);
        let mut e = Enc::default();
        d.save(&mut e);
        let mut copy = cd();
        assert_ne!(copy, d);
        let mut dec = Dec::new(Tag::Devices, &e.0);
        copy.restore(&mut dec).unwrap();
        dec.end().unwrap();
        assert_eq!(copy, d);
        // Values no drive had are refused.
        for (at, v) in [(0, 2u8), (1, 0x10), (4, 7), (5, 9)] {
            let mut bad = e.0.clone();
            bad[at] = v;
            assert!(
                cd().restore(&mut Dec::new(Tag::Devices, &bad)).is_err(),
                "{at}"
            );
        }
        assert!(cd()
            .restore(&mut Dec::new(Tag::Devices, &e.0[..3]))
            .is_err());
    }
}
