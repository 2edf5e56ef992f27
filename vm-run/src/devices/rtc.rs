//! The CMOS real-time clock and NVRAM of a PC (a Motorola MC146818), at
//! ports 0x70 (index, with the NMI mask in bit 7) and 0x71 (data), as
//! OpenBSD vmd's mc146818.c offers it. Linux reads it through rtc_cmos
//! (`hwclock`, /sys/class/rtc/rtc0) and sets it the same way.
//!
//! The clock is not a counter that ticks: it is the host's CLOCK_REALTIME
//! plus an offset, and the time registers are computed from it whenever
//! the guest reads them. Setting the clock (register B's SET bit, or a
//! write to a time register) changes only the offset, so the offset is all
//! a snapshot needs for the RTC to be right on another host, later.
//!
//! Interrupts (IRQ 8): the update-ended and alarm ones, from a thread
//! that wakes at the end of each of the guest's RTC seconds (`tick`).
//! rtc_cmos always claims IRQ 8 on a PC, so without them an alarm
//! (`/sys/class/rtc/rtc0/wakealarm`) would never fire and util-linux's
//! `hwclock`, which waits for an update interrupt, would time out. No
//! periodic interrupt: Linux asks for it only for /dev/rtc's RTC_PIE_ON.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::BusDevice;
use crate::snapshot::stream::{Dec, Enc, StreamError};

pub const PORT_BASE: u16 = 0x70;
pub const PORT_LEN: u16 = 2;
/// The RTC's ISA IRQ on every PC.
pub const IRQ: u32 = 8;

/// The CMOS bytes. 0-9 the clock and its alarm, A-D the control and
/// status registers, then NVRAM.
const CMOS_LEN: usize = 128;
const SECONDS: usize = 0x00;
const MINUTES: usize = 0x02;
const HOURS: usize = 0x04;
const WEEKDAY: usize = 0x06;
const DAY: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
/// The century, where the FADT says it is (as on PCs and in vmd).
pub const CENTURY: u8 = 0x32;
/// Base memory in KiB (640), as a BIOS leaves it.
const BASE_MEM_LO: usize = 0x15;
/// Memory above 1 MiB in KiB, at most 0xffff: twice, as PC BIOSes do.
const EXT_MEM_LO: usize = 0x17;
const EXT_MEM2_LO: usize = 0x30;
/// Memory above 16 MiB (below 4 GiB) in 64 KiB units, at most 0xffff.
const MEM_16M_LO: usize = 0x34;
/// Memory above 4 GiB in 64 KiB units, three bytes.
const MEM_4G_LO: usize = 0x5b;

/// The registers that hold the time (and are frozen while SET is on).
const TIME_REGS: [usize; 8] = [
    SECONDS,
    MINUTES,
    HOURS,
    WEEKDAY,
    DAY,
    MONTH,
    YEAR,
    CENTURY as usize,
];

/// Register A: update in progress (read-only), and the divider and rate
/// bits a BIOS leaves (32.768 kHz, 1024 Hz).
const A_UIP: u8 = 0x80;
const A_DEFAULT: u8 = 0x26;
/// Register B: SET stops the clock for the guest to write it; DM binary
/// (not BCD); 24-hour mode.
const B_SET: u8 = 0x80;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_DM_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
/// Register C: an enabled interrupt is pending (IRQF), the alarm matched
/// (AF), an update ended (UF). AF and UF sit where B's AIE and UIE do.
const C_IRQF: u8 = 0x80;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
/// Each alarm register and the time register it is compared with; an
/// alarm byte with both top bits set matches any value.
const ALARMS: [(usize, usize); 3] = [(0x01, SECONDS), (0x03, MINUTES), (0x05, HOURS)];
const ALARM_ANY: u8 = 0xc0;
/// Register D: the battery is good (VRT).
const D_VRT: u8 = 0x80;
/// UIP is set this long before each second ends (the datasheet's 244 µs).
const UIP_NS: i64 = 244_000;
/// The hour's PM flag in 12-hour mode.
const PM: u8 = 0x80;
const NS: i64 = 1_000_000_000;

/// Host wall-clock time, in ns since the epoch.
pub type Clock = Box<dyn Fn() -> i64 + Send>;
/// Raises IRQ 8 once (an edge, as an ISA interrupt is).
pub type Irq = Box<dyn Fn() + Send>;

pub fn host_clock() -> i64 {
    crate::clock::realtime_ns() as i64
}

pub struct Rtc {
    index: u8,
    cmos: [u8; CMOS_LEN],
    /// Guest RTC time minus host wall-clock time, ns.
    offset_ns: i64,
    clock: Clock,
    irq: Irq,
    /// The guest second whose update `tick` last made.
    last_update: i64,
}

/// What a snapshot keeps of the RTC: the offset from the host's clock, the
/// selected register, and every CMOS byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtcState {
    offset_ns: i64,
    index: u8,
    cmos: [u8; CMOS_LEN],
}

impl Rtc {
    /// An RTC set to the host's time, in BCD and 24-hour mode as a PC BIOS
    /// leaves it, with the memory sizes of a guest of `mem_size` bytes
    /// (`low` of them below 4 GiB) in NVRAM.
    pub fn new(mem_size: u64, low: u64, clock: Clock, irq: Irq) -> Self {
        let mut cmos = [0u8; CMOS_LEN];
        cmos[REG_A] = A_DEFAULT;
        cmos[REG_B] = B_24H;
        cmos[REG_D] = D_VRT;
        let mut put = |at: usize, v: u64, n: usize| {
            for i in 0..n {
                cmos[at + i] = (v >> (8 * i)) as u8;
            }
        };
        put(BASE_MEM_LO, 640, 2);
        let ext_kib = (low.saturating_sub(1 << 20) >> 10).min(0xffff);
        put(EXT_MEM_LO, ext_kib, 2);
        put(EXT_MEM2_LO, ext_kib, 2);
        put(
            MEM_16M_LO,
            (low.saturating_sub(16 << 20) >> 16).min(0xffff),
            2,
        );
        put(
            MEM_4G_LO,
            (mem_size.saturating_sub(low) >> 16).min(0xff_ffff),
            3,
        );
        let now = clock().div_euclid(NS);
        Rtc {
            index: 0,
            cmos,
            offset_ns: 0,
            clock,
            irq,
            last_update: now,
        }
    }

    /// The update cycle that ends each second of the RTC's: UF, AF when
    /// the alarm matches, and the interrupt if the guest enabled either.
    /// Returns how long until the next one.
    pub fn tick(&mut self) -> Duration {
        let now = self.guest_ns();
        let secs = now.div_euclid(NS);
        // Woken early, or the guest set the clock back: that second's
        // update has been made, or will be.
        if !self.setting() && secs > self.last_update {
            let mut flags = C_UF;
            if ALARMS.iter().all(|&(alarm, time)| {
                let a = self.cmos[alarm];
                a & ALARM_ANY == ALARM_ANY || a == self.encode(time, secs)
            }) {
                flags |= C_AF;
            }
            self.cmos[REG_C] |= flags;
            self.update_irq();
        }
        self.last_update = self.last_update.max(secs);
        // Just past the next second's start, so that it has begun.
        Duration::from_nanos((NS - now.rem_euclid(NS)) as u64 + 1_000_000)
    }

    /// A received guest's pending interrupt, raised again: the edge may
    /// have been made while the sender saved its interrupt controllers and
    /// got into neither's state, and with IRQF set no new one would come.
    /// (One too many is harmless: the guest's handler finds C clear.)
    pub fn resend_irq(&self) {
        if self.cmos[REG_C] & C_IRQF != 0 {
            (self.irq)();
        }
    }

    /// IRQF follows the flags the guest enabled; the interrupt is raised
    /// when it sets (the guest's read of C clears it).
    fn update_irq(&mut self) {
        let pending = self.cmos[REG_C] & self.cmos[REG_B] & (B_AIE | B_UIE) != 0;
        if pending && self.cmos[REG_C] & C_IRQF == 0 {
            self.cmos[REG_C] |= C_IRQF;
            (self.irq)();
        }
    }

    /// The RTC section: the offset (i64 as u64), the index register (u8),
    /// the 128 CMOS bytes (bytes).
    pub fn save(&self, e: &mut Enc) {
        e.u64(self.offset_ns as u64)
            .u8(self.index)
            .bytes(&self.cmos);
    }

    pub fn load(d: &mut Dec) -> Result<RtcState, StreamError> {
        let offset_ns = d.u64()? as i64;
        let index = d.u8()?;
        let cmos = d.bytes()?;
        let cmos = cmos
            .try_into()
            .map_err(|_| d.bad(format!("{} CMOS bytes, not {CMOS_LEN}", cmos.len())))?;
        Ok(RtcState {
            offset_ns,
            index,
            cmos,
        })
    }

    /// Puts a snapshot's state back. The offset applies to this host's
    /// clock, so the guest's RTC has moved on by however long the snapshot
    /// took to get here.
    pub fn restore(&mut self, s: &RtcState) {
        self.cmos = s.cmos;
        self.index = s.index & 0x7f;
        self.offset_ns = s.offset_ns;
        self.last_update = self.guest_ns().div_euclid(NS);
    }

    fn guest_ns(&self) -> i64 {
        (self.clock)().saturating_add(self.offset_ns)
    }

    fn binary(&self) -> bool {
        self.cmos[REG_B] & B_DM_BINARY != 0
    }

    fn h24(&self) -> bool {
        self.cmos[REG_B] & B_24H != 0
    }

    fn setting(&self) -> bool {
        self.cmos[REG_B] & B_SET != 0
    }

    /// The time register `reg` for the time `secs` (since the epoch), in
    /// the format register B asks for.
    fn encode(&self, reg: usize, secs: i64) -> u8 {
        let t = Civil::from_unix(secs);
        let enc = |v: u32| encode_number(v, self.binary());
        match reg {
            SECONDS => enc(t.second),
            MINUTES => enc(t.minute),
            HOURS if self.h24() => enc(t.hour),
            HOURS => {
                let h12 = match t.hour % 12 {
                    0 => 12,
                    h => h,
                };
                enc(h12) | if t.hour >= 12 { PM } else { 0 }
            }
            WEEKDAY => enc(t.weekday),
            DAY => enc(t.day),
            MONTH => enc(t.month),
            YEAR => enc(t.year.rem_euclid(100) as u32),
            _ => enc(t.year.div_euclid(100).clamp(0, 99) as u32),
        }
    }

    /// The time the time registers hold, in seconds since the epoch.
    fn decode(&self) -> i64 {
        let num = |reg: usize| decode_number(self.cmos[reg], self.binary());
        let hour = if self.h24() {
            num(HOURS)
        } else {
            let pm = self.cmos[HOURS] & PM != 0;
            decode_number(self.cmos[HOURS] & !PM, self.binary()) % 12 + if pm { 12 } else { 0 }
        };
        let year = i64::from(num(CENTURY as usize)) * 100 + i64::from(num(YEAR));
        Civil {
            year,
            month: num(MONTH),
            day: num(DAY),
            hour,
            minute: num(MINUTES),
            second: num(SECONDS),
            weekday: 0,
        }
        .to_unix()
    }

    /// Freezes the current time into the time registers.
    fn latch(&mut self) {
        let secs = self.guest_ns().div_euclid(NS);
        for reg in TIME_REGS {
            self.cmos[reg] = self.encode(reg, secs);
        }
    }

    /// The time registers become the clock, from now.
    fn commit(&mut self) {
        let set = i128::from(self.decode()) * i128::from(NS);
        let off = set - i128::from((self.clock)());
        self.offset_ns = off.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    }

    fn read_reg(&mut self, reg: usize) -> u8 {
        match reg {
            _ if TIME_REGS.contains(&reg) && !self.setting() => {
                self.encode(reg, self.guest_ns().div_euclid(NS))
            }
            REG_A => {
                let sub = self.guest_ns().rem_euclid(NS);
                let uip = !self.setting() && sub >= NS - UIP_NS;
                self.cmos[REG_A] | if uip { A_UIP } else { 0 }
            }
            REG_C => std::mem::take(&mut self.cmos[REG_C]),
            _ => self.cmos[reg],
        }
    }

    fn write_reg(&mut self, reg: usize, v: u8) {
        match reg {
            _ if TIME_REGS.contains(&reg) => {
                // A write while the clock runs sets it too (as QEMU's):
                // the other registers keep the time they show now.
                let running = !self.setting();
                if running {
                    self.latch();
                }
                self.cmos[reg] = v;
                if running {
                    self.commit();
                }
            }
            REG_A => self.cmos[REG_A] = v & !A_UIP,
            REG_B => {
                let was = self.setting();
                if v & B_SET != 0 && !was {
                    self.latch();
                }
                // SET clears UIE, as on the chip.
                self.cmos[REG_B] = if v & B_SET != 0 { v & !B_UIE } else { v };
                if v & B_SET == 0 && was {
                    self.commit();
                    self.last_update = self.guest_ns().div_euclid(NS);
                }
                self.update_irq();
            }
            REG_C | REG_D => {}
            _ => self.cmos[reg] = v,
        }
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = match offset + i as u64 {
                0 => self.index,
                1 => self.read_reg(usize::from(self.index)),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            match offset + i as u64 {
                // Bit 7 masks NMIs on a PC; there is nothing to mask here.
                0 => self.index = b & 0x7f,
                1 => self.write_reg(usize::from(self.index), *b),
                _ => {}
            }
        }
    }
}

/// Makes the RTC's updates, for as long as the process runs.
pub fn spawn_ticker(rtc: Arc<Mutex<Rtc>>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("rtc".into())
        .spawn(move || loop {
            let wait = rtc.lock().unwrap_or_else(|e| e.into_inner()).tick();
            std::thread::sleep(wait);
        })
        .map(drop)
}

/// `v` (0-99) as the registers hold it: BCD unless register B says binary.
fn encode_number(v: u32, binary: bool) -> u8 {
    let v = (v % 100) as u8;
    if binary {
        v
    } else {
        ((v / 10) << 4) | (v % 10)
    }
}

/// The inverse, for whatever byte the guest wrote (no checks: a BCD digit
/// over 9 just counts for more, as on the chip).
fn decode_number(b: u8, binary: bool) -> u32 {
    if binary {
        u32::from(b)
    } else {
        u32::from(b >> 4) * 10 + u32::from(b & 0xf)
    }
}

/// A UTC date and time (proleptic Gregorian calendar).
#[derive(Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 1 is Sunday, as the RTC counts.
    weekday: u32,
}

impl Civil {
    /// Howard Hinnant's civil_from_days.
    fn from_unix(secs: i64) -> Civil {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            // 1970-01-01 was a Thursday.
            weekday: (days + 4).rem_euclid(7) as u32 + 1,
        }
    }

    /// days_from_civil, for any month and day the guest may have written
    /// (out-of-range values count on into the next month or year).
    fn to_unix(&self) -> i64 {
        let month = i64::from(self.month.clamp(1, 12));
        let y = self.year - i64::from(month <= 2);
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::stream::Tag;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    /// 2026-12-02 00:41:07 UTC, a Wednesday.
    const T: i64 = 1_796_172_067;

    fn rtc_at(ns: i64) -> (Rtc, Arc<AtomicI64>) {
        let (rtc, now, _) = rtc_with_irqs(ns);
        (rtc, now)
    }

    /// Also the number of interrupts raised.
    fn rtc_with_irqs(ns: i64) -> (Rtc, Arc<AtomicI64>, Arc<AtomicI64>) {
        let now = Arc::new(AtomicI64::new(ns));
        let irqs = Arc::new(AtomicI64::new(0));
        let (n, i) = (now.clone(), irqs.clone());
        let rtc = Rtc::new(
            256 << 20,
            256 << 20,
            Box::new(move || n.load(Ordering::Relaxed)),
            Box::new(move || {
                i.fetch_add(1, Ordering::Relaxed);
            }),
        );
        (rtc, now, irqs)
    }

    fn get(rtc: &mut Rtc, reg: u8) -> u8 {
        rtc.write(0, &[reg]);
        let mut b = [0];
        rtc.read(1, &mut b);
        b[0]
    }

    fn set(rtc: &mut Rtc, reg: u8, v: u8) {
        rtc.write(0, &[reg]);
        rtc.write(1, &[v]);
    }

    /// seconds, minutes, hours, weekday, day, month, year, century
    fn clock(rtc: &mut Rtc) -> [u8; 8] {
        TIME_REGS.map(|r| get(rtc, r as u8))
    }

    #[test]
    fn bcd_24h_is_what_a_bios_leaves() {
        let (mut rtc, _) = rtc_at(T * NS);
        assert_eq!(
            clock(&mut rtc),
            [0x07, 0x41, 0x00, 0x04, 0x02, 0x12, 0x26, 0x20]
        );
        assert_eq!(get(&mut rtc, 0x0b), B_24H);
        assert_eq!(get(&mut rtc, 0x0d), D_VRT);
        // The index port reads back, without the NMI bit.
        rtc.write(0, &[0x80 | 0x0d]);
        let mut b = [0];
        rtc.read(0, &mut b);
        assert_eq!(b[0], 0x0d);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        // 13:05:09 is 1 PM.
        let (mut rtc, _) = rtc_at((T + 12 * 3600 + 24 * 60 + 2) * NS);
        set(&mut rtc, 0x0b, B_DM_BINARY | B_24H);
        assert_eq!(clock(&mut rtc), [9, 5, 13, 4, 2, 12, 26, 20]);
        set(&mut rtc, 0x0b, B_DM_BINARY);
        assert_eq!(get(&mut rtc, 0x04), PM | 1);
        set(&mut rtc, 0x0b, 0);
        assert_eq!(get(&mut rtc, 0x04), PM | 0x01);
        // Midnight and noon are 12 in 12-hour mode.
        let (mut rtc, now) = rtc_at(T * NS);
        set(&mut rtc, 0x0b, 0);
        assert_eq!(get(&mut rtc, 0x04), 0x12);
        now.store((T + 12 * 3600) * NS, Ordering::Relaxed);
        assert_eq!(get(&mut rtc, 0x04), PM | 0x12);
        now.store((T + 23 * 3600) * NS, Ordering::Relaxed);
        assert_eq!(get(&mut rtc, 0x04), PM | 0x11);
    }

    #[test]
    fn calendar_round_trips() {
        for secs in [0, 951_782_400, 4_107_542_400, T, -86_400, 1_709_164_800] {
            let c = Civil::from_unix(secs);
            assert_eq!(c.to_unix(), secs, "{c:?}");
        }
        // 2000-02-29 and 2100-03-01 (2100 is no leap year).
        let c = Civil::from_unix(951_782_400);
        assert_eq!((c.year, c.month, c.day, c.weekday), (2000, 2, 29, 3));
        let c = Civil::from_unix(4_107_542_400);
        assert_eq!((c.year, c.month, c.day), (2100, 3, 1));
        assert_eq!(Civil::from_unix(0).weekday, 5);
    }

    #[test]
    fn the_guest_sets_the_clock_as_linux_does() {
        let (mut rtc, now) = rtc_at(T * NS);
        // SET stops the clock: what the guest writes holds still.
        set(&mut rtc, 0x0b, B_SET | B_24H);
        now.store((T + 5) * NS, Ordering::Relaxed);
        assert_eq!(get(&mut rtc, 0x00), 0x07);
        // 1999-12-31 23:59:58, then SET cleared.
        for (reg, v) in [
            (0x32, 0x19),
            (0x09, 0x99),
            (0x08, 0x12),
            (0x07, 0x31),
            (0x04, 0x23),
            (0x02, 0x59),
            (0x00, 0x58),
        ] {
            set(&mut rtc, reg, v);
        }
        set(&mut rtc, 0x0b, B_24H);
        now.store((T + 7) * NS, Ordering::Relaxed);
        assert_eq!(
            clock(&mut rtc),
            [0x00, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00, 0x20]
        );
        // The offset is what a snapshot keeps: on another host's clock the
        // same offset reads that host's time plus the same difference.
        assert_eq!(rtc.offset_ns, (946_684_798 - (T + 5)) * NS);
        let (mut other, _) = rtc_at((T + 67) * NS);
        round_trip(&rtc, &mut other);
        assert_eq!(get(&mut other, 0x00), 0x00);
        assert_eq!(get(&mut other, 0x02), 0x01);
    }

    #[test]
    fn a_write_while_running_moves_the_clock() {
        let (mut rtc, _) = rtc_at(T * NS);
        set(&mut rtc, 0x02, 0x50);
        assert_eq!(clock(&mut rtc)[..3], [0x07, 0x50, 0x00]);
        assert_eq!(rtc.offset_ns, 9 * 60 * NS);
    }

    #[test]
    fn uip_is_set_just_before_each_second_and_not_while_set() {
        let (mut rtc, now) = rtc_at(T * NS + 500_000_000);
        assert_eq!(get(&mut rtc, 0x0a), A_DEFAULT);
        now.store(T * NS + NS - 100_000, Ordering::Relaxed);
        assert_eq!(get(&mut rtc, 0x0a), A_DEFAULT | A_UIP);
        set(&mut rtc, 0x0b, B_SET | B_24H);
        assert_eq!(get(&mut rtc, 0x0a), A_DEFAULT);
        // UIP is read-only.
        set(&mut rtc, 0x0a, 0xa6);
        assert_eq!(get(&mut rtc, 0x0a), A_DEFAULT);
    }

    #[test]
    fn nvram_holds_the_memory_sizes() {
        let (mut rtc, _) = rtc_at(T * NS);
        let word = |r: &mut Rtc, at: u8| u16::from_le_bytes([get(r, at), get(r, at + 1)]);
        assert_eq!(word(&mut rtc, 0x15), 640);
        assert_eq!(word(&mut rtc, 0x17), 0xffff);
        assert_eq!(word(&mut rtc, 0x34), (256 - 16) << 4);
        assert_eq!(get(&mut rtc, 0x5b), 0);
        let big = Rtc::new(6 << 30, 3 << 30, Box::new(|| 0), Box::new(|| {}));
        assert_eq!(big.cmos[0x34..0x36], [0x00, 0xbf]);
        assert_eq!(big.cmos[0x5b..0x5e], [0x00, 0xc0, 0x00]);
        // NVRAM is the guest's to write; C and D are not.
        set(&mut rtc, 0x40, 0x5a);
        set(&mut rtc, 0x0d, 0);
        assert_eq!((get(&mut rtc, 0x40), get(&mut rtc, 0x0d)), (0x5a, D_VRT));
    }

    #[test]
    fn updates_and_the_alarm_interrupt_as_enabled() {
        let (mut rtc, now, irqs) = rtc_with_irqs(T * NS + 300_000_000);
        let irqs = move || irqs.load(Ordering::Relaxed);
        // Woken 0.7 s later, just past the next second.
        assert_eq!(rtc.tick(), Duration::from_nanos(701_000_000));
        assert_eq!(get(&mut rtc, 0x0c), 0, "no update yet");
        now.store((T + 1) * NS + 1_000_000, Ordering::Relaxed);
        rtc.tick();
        // The flag without the interrupt: UIE is off.
        assert_eq!((get(&mut rtc, 0x0c), irqs()), (C_UF, 0));
        assert_eq!(get(&mut rtc, 0x0c), 0, "reading C clears it");
        // An alarm at 00:41:10 (T is 00:41:07), hours and minutes "any".
        for (reg, v) in [(0x01, 0x10), (0x03, 0xc0), (0x05, 0xff)] {
            set(&mut rtc, reg, v);
        }
        set(&mut rtc, 0x0b, B_24H | B_AIE);
        for s in 2..=4 {
            now.store((T + s) * NS + 1_000_000, Ordering::Relaxed);
            rtc.tick();
            // A second tick in the same second changes nothing.
            rtc.tick();
        }
        assert_eq!(irqs(), 1, "the alarm once");
        assert_eq!(get(&mut rtc, 0x0c), C_IRQF | C_AF | C_UF);
        // UIE: an interrupt every second, each acknowledged by reading C
        // (Linux's handler does).
        set(&mut rtc, 0x0b, B_24H | B_UIE);
        for s in 5..=7 {
            now.store((T + s) * NS + 1_000_000, Ordering::Relaxed);
            rtc.tick();
            assert_eq!(get(&mut rtc, 0x0c), C_IRQF | C_UF);
        }
        assert_eq!(irqs(), 4);
        // Unacknowledged, the flag stays up and no new edge is made.
        now.store((T + 8) * NS + 1_000_000, Ordering::Relaxed);
        rtc.tick();
        now.store((T + 9) * NS + 1_000_000, Ordering::Relaxed);
        rtc.tick();
        assert_eq!(irqs(), 5);
        // After a receive, a pending one is raised again.
        let mut other = rtc_with_irqs((T + 9) * NS);
        round_trip(&rtc, &mut other.0);
        other.0.resend_irq();
        assert_eq!(other.2.load(Ordering::Relaxed), 1);
        // While SET holds the clock, no updates.
        assert_ne!(get(&mut rtc, 0x0c), 0);
        set(&mut rtc, 0x0b, B_SET | B_24H | B_UIE);
        now.store((T + 10) * NS + 1_000_000, Ordering::Relaxed);
        rtc.tick();
        assert_eq!((get(&mut rtc, 0x0c), irqs()), (0, 5));
    }

    #[test]
    fn garbage_from_the_guest_does_not_panic() {
        let (mut rtc, _) = rtc_at(i64::MAX - NS);
        for reg in 0..128u8 {
            for v in [0x00, 0xff, 0x7f, 0x99] {
                set(&mut rtc, 0x0b, v & !B_SET);
                set(&mut rtc, reg, v);
                let _ = clock(&mut rtc);
            }
        }
        let mut short = Enc::default();
        short.u64(0).u8(0).bytes(&[0; 3]);
        assert!(Rtc::load(&mut Dec::new(Tag::Rtc, &short.0)).is_err());
    }

    /// Saves `from` and restores it into `into`, as a send and receive do.
    fn round_trip(from: &Rtc, into: &mut Rtc) {
        let mut e = Enc::default();
        from.save(&mut e);
        let mut d = Dec::new(Tag::Rtc, &e.0);
        into.restore(&Rtc::load(&mut d).unwrap());
        d.end().unwrap();
    }

    #[test]
    fn save_and_restore_round_trip() {
        let (mut rtc, _) = rtc_at(T * NS);
        set(&mut rtc, 0x02, 0x50);
        set(&mut rtc, 0x40, 0x5a);
        get(&mut rtc, 0x33);
        let (mut fresh, _) = rtc_at(T * NS);
        round_trip(&rtc, &mut fresh);
        assert_eq!(fresh.cmos, rtc.cmos);
        assert_eq!((fresh.index, fresh.offset_ns), (rtc.index, rtc.offset_ns));
        assert_eq!(clock(&mut fresh), clock(&mut rtc));
    }
}
