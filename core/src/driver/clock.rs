//! The driver's clock for leadership deadlines: tokio's monotonic
//! [`Instant`] plus the time the machine has spent suspended.
//!
//! `CLOCK_MONOTONIC` (what tokio and `std` use) stops while a laptop lid is
//! closed or a VM is suspended, but the lease in the database runs on.
//! Counting deadlines on it alone, a node resumed after a suspend could
//! believe it still leads past the real end of its lease. On Linux the
//! driver therefore adds the growth of `CLOCK_BOOTTIME − CLOCK_MONOTONIC`
//! (time asleep) since the process started, read through `rustix` (safe
//! bindings; regent stays `forbid(unsafe_code)`). Elsewhere the suspended
//! time counts as zero, as before.
//!
//! Under tokio's paused test clock nothing is ever suspended, so tests see
//! plain tokio time.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// Now, by a clock that keeps running while the machine is suspended.
pub(crate) fn now() -> Instant {
    Instant::now() + suspended()
}

/// The tokio instant to sleep until so as to wake at `at` (a [`now`]
/// instant): earlier by the time spent suspended so far.
pub(crate) fn sleep_target(at: Instant) -> Instant {
    let s = suspended();
    at.checked_sub(s).unwrap_or(at)
}

/// How long the machine has been suspended since this process first asked.
pub(crate) fn suspended() -> Duration {
    static BASELINE: OnceLock<Option<Duration>> = OnceLock::new();
    let base = *BASELINE.get_or_init(asleep_total);
    match (base, asleep_total()) {
        (Some(base), Some(total)) => since_baseline(base, total),
        _ => Duration::ZERO,
    }
}

/// Suspended time since the baseline: the growth of `BOOTTIME −
/// MONOTONIC`, never negative.
pub(crate) fn since_baseline(base: Duration, total: Duration) -> Duration {
    total.saturating_sub(base)
}

/// `CLOCK_BOOTTIME − CLOCK_MONOTONIC`: the time spent suspended since boot.
#[cfg(target_os = "linux")]
pub(crate) fn asleep_total() -> Option<Duration> {
    use rustix::time::{ClockId, clock_gettime};
    let as_duration = |t: rustix::time::Timespec| {
        u64::try_from(t.tv_sec)
            .ok()
            .and_then(|s| Some(Duration::new(s, u32::try_from(t.tv_nsec).ok()?)))
    };
    let boot = as_duration(clock_gettime(ClockId::Boottime))?;
    let mono = as_duration(clock_gettime(ClockId::Monotonic))?;
    Some(boot.saturating_sub(mono))
}

/// No suspend-aware clock here: suspended time counts as zero.
#[cfg(not(target_os = "linux"))]
pub(crate) fn asleep_total() -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspended_time_is_the_growth_of_boottime_over_monotonic() {
        let s = Duration::from_secs;
        // Asleep 3 s before the process started, 40 s more since.
        assert_eq!(since_baseline(s(3), s(43)), s(40));
        // Never negative, whatever the readings.
        assert_eq!(since_baseline(s(5), s(4)), Duration::ZERO);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn boottime_never_runs_behind_monotonic_here() {
        // Where the platform has CLOCK_BOOTTIME, it is readable and at least
        // CLOCK_MONOTONIC; a test run does not suspend, so the suspended
        // time since the baseline stays (close to) zero.
        let total = asleep_total().expect("CLOCK_BOOTTIME is readable on Linux");
        let again = asleep_total().expect("CLOCK_BOOTTIME is readable on Linux");
        assert!(again + Duration::from_millis(50) >= total);
        assert!(suspended() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_clock_follows_tokio_time_when_nothing_sleeps() {
        let a = now();
        tokio::time::advance(Duration::from_secs(7)).await;
        let b = now();
        let moved = b - a;
        assert!(moved >= Duration::from_secs(7) && moved < Duration::from_secs(8));
        assert_eq!(sleep_target(b) + suspended(), b);
    }
}
