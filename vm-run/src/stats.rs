//! Exit accounting for -v: how many exits of each kind a guest made and
//! how long vm-run took to handle them, port I/O by 8-port range and MMIO
//! by 4 KiB page, the time spent inside KVM_RUN, and when the first vCPU
//! entered the guest. Each vCPU counts into its own ExitStats (no lock or
//! allocation per exit); they are merged when the vCPUs stop.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// CLOCK_MONOTONIC in ns.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for clock_gettime to fill in.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// When vm-run started, set before main by the constructor below (0 if
/// the C runtime did not run it).
static START_NS: AtomicU64 = AtomicU64::new(0);

extern "C" fn record_start() {
    START_NS.store(now_ns(), Ordering::Relaxed);
}

// Run by the C runtime (musl's and glibc's) before main: "start" is then
// the process's first code after exec, not main's, which std reaches later.
#[used]
#[link_section = ".init_array"]
static RECORD_START: extern "C" fn() = record_start;

/// Milliseconds since vm-run started (since the epoch of CLOCK_MONOTONIC
/// if the C runtime did not record the start).
pub fn ms_since_start() -> f64 {
    now_ns().saturating_sub(START_NS.load(Ordering::Relaxed)) as f64 / 1e6
}

/// The kinds of exit, as KVM_RUN returns them.
#[derive(Clone, Copy)]
pub enum Kind {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    /// KVM_RUN interrupted by a kick (pause, end of the run).
    Kick,
    Again,
    Shutdown,
    SystemEvent,
    /// Also a triple fault, on some hosts (PVM).
    InternalError,
    Other,
}

const KINDS: [&str; 10] = [
    "port I/O in",
    "port I/O out",
    "MMIO read",
    "MMIO write",
    "kick (EINTR)",
    "EAGAIN",
    "shutdown",
    "system event",
    "internal error",
    "other",
];

/// Ports are counted by range of 8, as most ISA devices span.
const PIO_SHIFT: u32 = 3;
const PIO_SLOTS: usize = 0x10000 >> PIO_SHIFT;
/// MMIO pages counted apart; exits to any further page are lumped.
const MMIO_PAGES: usize = 16;

/// Standard PC port ranges, for a readable table.
const PORT_NAMES: [(u16, &str); 10] = [
    (0x20, "PIC"),
    (0x40, "PIT"),
    (0x60, "i8042"),
    (0x70, "RTC"),
    (0x80, "POST"),
    (0xa0, "PIC2"),
    (0x2f8, "COM2"),
    (0x3f8, "COM1"),
    (0x510, "fw_cfg"),
    (0xcf8, "PCI config"),
];

#[derive(Clone, Copy, Default)]
struct Slot {
    count: u64,
    ns: u64,
}

impl Slot {
    fn add(&mut self, ns: u64) {
        self.count += 1;
        self.ns += ns;
    }

    fn merge(&mut self, o: &Slot) {
        self.count += o.count;
        self.ns += o.ns;
    }
}

pub struct ExitStats {
    kinds: [Slot; KINDS.len()],
    pio: Box<[Slot]>,
    mmio: [(u64, Slot); MMIO_PAGES],
    mmio_used: usize,
    mmio_other: Slot,
    in_run_ns: u64,
    first_entry_ns: Option<u64>,
    last_exit_ns: u64,
    /// The exit being handled, and when it returned from KVM_RUN.
    pending: Option<(Kind, Target)>,
    exited_at: u64,
}

impl Default for ExitStats {
    fn default() -> Self {
        ExitStats {
            kinds: [Slot::default(); KINDS.len()],
            pio: vec![Slot::default(); PIO_SLOTS].into_boxed_slice(),
            mmio: [(0, Slot::default()); MMIO_PAGES],
            mmio_used: 0,
            mmio_other: Slot::default(),
            in_run_ns: 0,
            first_entry_ns: None,
            last_exit_ns: 0,
            pending: None,
            exited_at: 0,
        }
    }
}

/// What the exit just handled touched, for the per-range lines.
#[derive(Clone, Copy)]
pub enum Target {
    None,
    Port(u16),
    Mmio(u64),
}

impl ExitStats {
    /// A KVM_RUN entered at `entered` returned at `exited` with an exit of
    /// this kind: the time from the previous exit to this entry was the
    /// handling of that one.
    pub fn ran(&mut self, entered: u64, exited: u64, kind: Kind, target: Target) {
        self.settle(entered);
        self.first_entry_ns.get_or_insert(entered);
        self.in_run_ns += exited.saturating_sub(entered);
        self.exited_at = exited;
        self.last_exit_ns = exited;
        self.pending = Some((kind, target));
    }

    /// Counts the pending exit as handled by `done`.
    fn settle(&mut self, done: u64) {
        if let Some((kind, target)) = self.pending.take() {
            self.handled(kind, target, done);
        }
    }

    fn handled(&mut self, kind: Kind, target: Target, done: u64) {
        let ns = done.saturating_sub(self.exited_at);
        self.kinds[kind as usize].add(ns);
        match target {
            Target::None => {}
            Target::Port(p) => {
                if let Some(s) = self.pio.get_mut(usize::from(p >> PIO_SHIFT)) {
                    s.add(ns)
                }
            }
            Target::Mmio(addr) => self.add_mmio(addr & !0xfff, Slot { count: 1, ns }),
        }
    }

    fn add_mmio(&mut self, page: u64, s: Slot) {
        let used = &mut self.mmio[..self.mmio_used];
        if let Some((_, slot)) = used.iter_mut().find(|(p, _)| *p == page) {
            slot.merge(&s);
        } else if self.mmio_used < MMIO_PAGES {
            self.mmio[self.mmio_used] = (page, s);
            self.mmio_used += 1;
        } else {
            self.mmio_other.merge(&s);
        }
    }

    /// Adds `o` into this, and leaves `o` empty.
    pub fn merge_from(&mut self, o: &mut ExitStats) {
        o.settle(now_ns());
        for (a, b) in self.kinds.iter_mut().zip(&o.kinds) {
            a.merge(b);
        }
        for (a, b) in self.pio.iter_mut().zip(o.pio.iter()) {
            a.merge(b);
        }
        for i in 0..o.mmio_used {
            let (page, s) = o.mmio[i];
            self.add_mmio(page, s);
        }
        self.mmio_other.merge(&o.mmio_other);
        self.in_run_ns += o.in_run_ns;
        self.first_entry_ns = match (self.first_entry_ns, o.first_entry_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_exit_ns = self.last_exit_ns.max(o.last_exit_ns);
        let keep = o.first_entry_ns;
        *o = ExitStats {
            first_entry_ns: keep,
            ..ExitStats::default()
        };
    }

    /// The table -v prints when the guest ends, one `vm-run:` line each.
    pub fn table(&self) -> String {
        let ms = |ns: u64| ns as f64 / 1e6;
        let mut t = String::from("vm-run: exits                       count   handling ms\n");
        let mut line = |what: &str, s: &Slot| {
            if s.count > 0 {
                let _ = writeln!(t, "vm-run:   {what:<28}{:>8}{:>14.3}", s.count, ms(s.ns));
            }
        };
        for (name, s) in KINDS.iter().zip(&self.kinds) {
            line(name, s);
        }
        for (i, s) in self.pio.iter().enumerate() {
            let base = (i << PIO_SHIFT) as u16;
            let end = base | ((1 << PIO_SHIFT) - 1);
            let name = PORT_NAMES.iter().find(|(p, _)| *p == base);
            let what = match name {
                Some((_, n)) => format!("port {base:#x}-{end:#x} {n}"),
                None => format!("port {base:#x}-{end:#x}"),
            };
            line(&what, s);
        }
        let mut pages = self.mmio[..self.mmio_used].to_vec();
        pages.sort_by_key(|(p, _)| *p);
        for (page, s) in &pages {
            line(&format!("MMIO page {page:#x}"), s);
        }
        line("MMIO, further pages", &self.mmio_other);
        let start = START_NS.load(Ordering::Relaxed);
        let _ = writeln!(
            t,
            "vm-run: in KVM_RUN {:.3} ms, all vCPUs together",
            ms(self.in_run_ns)
        );
        if let (Some(first), true) = (self.first_entry_ns, start > 0) {
            let _ = writeln!(
                t,
                "vm-run: first vCPU entry {:.3} ms after start, last exit {:.3} ms, table {:.3} ms",
                ms(first.saturating_sub(start)),
                ms(self.last_exit_ns.saturating_sub(start)),
                ms(now_ns().saturating_sub(start)),
            );
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_and_print() {
        let mut a = ExitStats::default();
        a.ran(100, 200, Kind::IoOut, Target::Port(0x3f8));
        a.ran(250, 300, Kind::MmioWrite, Target::Mmio(0xd000_0010));
        let mut total = ExitStats::default();
        total.merge_from(&mut a);
        let mut b = ExitStats::default();
        b.ran(50, 60, Kind::IoOut, Target::Port(0x3fd));
        total.merge_from(&mut b);
        let t = total.table();
        assert!(t.contains("port 0x3f8-0x3ff COM1"), "{t}");
        assert!(
            t.lines().any(|l| l.contains("0x3f8") && l.contains(" 2 ")),
            "{t}"
        );
        assert!(t.contains("MMIO page 0xd0000000"), "{t}");
        assert_eq!(total.first_entry_ns, Some(50));
        assert_eq!(total.in_run_ns, 100 + 50 + 10);
        // merged away, a's counts are not counted twice
        assert!(!a.table().contains("port 0x3f8"));
    }
}
