//! The host's wall clock, which the guest's clocks are kept against: the
//! RTC's offset, and how long a paused or sent guest stood still.

/// Host wall-clock time, in ns since the epoch (0 before it).
pub fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
