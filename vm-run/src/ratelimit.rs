//! Messages the guest can cause, at a rate it cannot choose: a guest that
//! repeats what makes vm-run complain (moving one BAR onto another, over
//! and over) must not fill the host's log. A few lines a minute go out;
//! the rest are counted, and the count is told with the next line that
//! does.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines let through per window, and the window.
const BURST: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);

/// One limiter serves every device: a guest has many devices to misuse.
static GUEST: Limiter = Limiter::new(BURST, WINDOW);

/// Writes `vm-run: <msg>` to stderr, unless the guest has already caused
/// BURST lines in this window. Not eprintln!: a closed stderr must not
/// panic a device thread.
pub fn warn(msg: std::fmt::Arguments) {
    match GUEST.admit(Instant::now()) {
        Admit::Drop => {}
        Admit::Print { suppressed } => {
            let mut err = std::io::stderr().lock();
            if suppressed > 0 {
                let _ = writeln!(
                    err,
                    "vm-run: {suppressed} more messages caused by the guest were suppressed"
                );
            }
            let _ = writeln!(err, "vm-run: {msg}");
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Print it; `suppressed` lines were dropped since the last one printed.
    Print {
        suppressed: u64,
    },
    Drop,
}

/// At most `burst` admissions in each `window`, windows starting with the
/// first admission after the last one ended.
pub struct Limiter {
    burst: u32,
    window: Duration,
    state: Mutex<State>,
}

struct State {
    start: Option<Instant>,
    used: u32,
    dropped: u64,
}

impl Limiter {
    pub const fn new(burst: u32, window: Duration) -> Limiter {
        Limiter {
            burst,
            window,
            state: Mutex::new(State {
                start: None,
                used: 0,
                dropped: 0,
            }),
        }
    }

    pub fn admit(&self, now: Instant) -> Admit {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut suppressed = 0;
        let expired = st
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.window);
        if expired {
            suppressed = std::mem::take(&mut st.dropped);
            st.start = Some(now);
            st.used = 0;
        }
        if st.used < self.burst {
            st.used += 1;
            Admit::Print { suppressed }
        } else {
            st.dropped += 1;
            Admit::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_burst_and_counted() {
        let l = Limiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let first: Vec<Admit> = (0..7410)
            .map(|i| l.admit(t0 + Duration::from_millis(i * 8)))
            .collect();
        let printed = first.iter().filter(|a| **a != Admit::Drop).count();
        // 7410 lines over 59 s: three printed.
        assert_eq!(printed, 3);
        assert_eq!(first[0], Admit::Print { suppressed: 0 });
        assert_eq!(first[3], Admit::Drop);
        // The next window starts with how many were dropped.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(l.admit(later), Admit::Print { suppressed: 7407 });
        assert_eq!(l.admit(later), Admit::Print { suppressed: 0 });
        assert_eq!(l.admit(later), Admit::Print { suppressed: 0 });
        assert_eq!(l.admit(later), Admit::Drop);
    }

    #[test]
    fn a_quiet_guest_loses_nothing() {
        let l = Limiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..10 {
            let at = t0 + Duration::from_secs(60 * i);
            assert_eq!(l.admit(at), Admit::Print { suppressed: 0 }, "{i}");
        }
    }
}
