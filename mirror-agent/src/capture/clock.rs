//! The one clock of [`Segment::ts_ns`](super::Segment::ts_ns): Unix time in nanoseconds.
//!
//! Owns the conversion of the kernel's stamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to Unix time
//! and the "now" on the same scale for the consumers' timers. pcap files already carry Unix time
//! and need neither.
//!
//! The offset CLOCK_REALTIME - CLOCK_MONOTONIC is measured once per process, at the first call:
//! live stamps and [`wall_clock_ns`] then advance together even when NTP steps the wall clock, so
//! a step never fires (or holds back) every gap timeout at once.

use std::sync::OnceLock;

/// CLOCK_REALTIME - CLOCK_MONOTONIC in nanoseconds, measured at the first call and fixed after.
pub fn wall_minus_monotonic_ns() -> u64 {
    static OFFSET: OnceLock<u64> = OnceLock::new();
    *OFFSET.get_or_init(|| read(libc::CLOCK_REALTIME).wrapping_sub(read(libc::CLOCK_MONOTONIC)))
}

/// Now, in Unix nanoseconds, on the scale of the live source's segment stamps.
pub fn wall_clock_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC).wrapping_add(wall_minus_monotonic_ns())
}

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass; CLOCK_REALTIME and CLOCK_MONOTONIC
    // always exist on Linux, so it cannot fail.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_unix_time_and_the_offset_is_fixed() {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64;
        let now = wall_clock_ns();
        // Same scale as SystemTime (within a minute: the test does not measure time).
        assert!(now.abs_diff(unix) < 60_000_000_000, "{now} vs {unix}");
        assert_eq!(wall_minus_monotonic_ns(), wall_minus_monotonic_ns());
    }
}
