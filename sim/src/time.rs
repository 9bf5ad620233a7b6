//! Virtual time: the true clock of the world, node clocks that drift and
//! jump, and the database clock.

use std::fmt;
use std::ops::Add;
use std::time::Duration;

use regent_core::{DbTimestamp, LocalInstant};

/// True simulated time: nanoseconds since the start of the run. Only the
/// world sees it; nodes read their own [`NodeClock`], the database reads
/// [`db_time`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SimTime(u64);

impl SimTime {
    /// The start of the run.
    pub const ZERO: SimTime = SimTime(0);

    /// `nanos` nanoseconds after the start.
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// `d` after the start (saturating).
    pub fn from_duration(d: Duration) -> Self {
        Self(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Nanoseconds since the start.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time since the start.
    pub const fn as_duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// Seconds since the start, for display.
    pub fn as_secs_f64(self) -> f64 {
        self.as_duration().as_secs_f64()
    }

    /// `self - earlier`, or zero.
    pub fn saturating_since(self, earlier: SimTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for SimTime {
    type Output = SimTime;
    fn add(self, d: Duration) -> SimTime {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        SimTime(self.0.saturating_add(nanos))
    }
}

impl fmt::Display for SimTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>9.3}s", self.as_secs_f64())
    }
}

/// The database clock at true time zero (2025-06-15, in microseconds since
/// the Unix epoch). Any value works; a realistic one makes logs readable.
pub const DB_EPOCH_MICROS: i64 = 1_750_000_000_000_000;

/// The database server's clock at true time `t`. The database clock is the
/// true clock: drift is always measured relative to it.
pub fn db_time(t: SimTime) -> DbTimestamp {
    let micros = i64::try_from(t.as_nanos() / 1000).unwrap_or(i64::MAX);
    DbTimestamp::from_micros(DB_EPOCH_MICROS.saturating_add(micros))
}

const BILLION: i128 = 1_000_000_000;

/// A node's clocks: a monotonic clock that runs at `1 + drift` times the true
/// rate from a random origin, and a wall clock that follows it but also has
/// an offset that can jump (NTP steps, operator mistakes).
///
/// The state machine only ever sees the monotonic clock
/// ([`NodeClock::local`]); the wall clock exists so that a mutant that trusts
/// it can be caught.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeClock {
    /// Drift in parts per billion (1e-3 is 1_000_000).
    drift_ppb: i64,
    /// Local reading at true time zero.
    origin: u64,
    /// Wall clock minus (database epoch + local elapsed), in microseconds.
    wall_offset_micros: i64,
    /// Nanoseconds the monotonic clock was pushed ahead (only by the
    /// `waits-in-db-time` mutant, see [`NodeClock::skip_ahead`]).
    skew: u64,
}

impl NodeClock {
    /// A clock with `drift_ppb` parts-per-billion drift, reading `origin`
    /// nanoseconds at true time zero, and a wall clock offset.
    pub fn new(drift_ppb: i64, origin: u64, wall_offset_micros: i64) -> Self {
        Self {
            drift_ppb,
            origin,
            wall_offset_micros,
            skew: 0,
        }
    }

    /// The drift rate in parts per billion.
    pub fn drift_ppb(&self) -> i64 {
        self.drift_ppb
    }

    /// The current wall clock offset in microseconds.
    pub fn wall_offset_micros(&self) -> i64 {
        self.wall_offset_micros
    }

    fn elapsed(&self, t: SimTime) -> u64 {
        // t + floor(t·drift / 1e9), split into whole seconds and the rest
        // so that everything stays in i64 (no 128-bit division).
        let t = t.as_nanos();
        let secs = i64::try_from(t / 1_000_000_000).unwrap_or(i64::MAX);
        let rest = (t % 1_000_000_000) as i64;
        let skew = secs
            .saturating_mul(self.drift_ppb)
            .saturating_add((rest * self.drift_ppb).div_euclid(1_000_000_000));
        if skew >= 0 {
            t.saturating_add(skew.unsigned_abs())
        } else {
            t.saturating_sub(skew.unsigned_abs())
        }
    }

    /// The node's monotonic clock at true time `t`.
    pub fn local(&self, t: SimTime) -> LocalInstant {
        LocalInstant::from_nanos(
            self.origin
                .saturating_add(self.skew)
                .saturating_add(self.elapsed(t)),
        )
    }

    /// Pushes the monotonic clock ahead by `nanos` (it stays monotonic).
    /// Real monotonic clocks never do this; the `waits-in-db-time` mutant
    /// uses it to follow the database clock's forward steps.
    pub fn skip_ahead(&mut self, nanos: u64) {
        self.skew = self.skew.saturating_add(nanos);
    }

    /// The earliest true time at which the monotonic clock reads at least
    /// `local`.
    pub fn true_at(&self, local: LocalInstant) -> SimTime {
        let Some(elapsed) = local
            .as_nanos()
            .checked_sub(self.origin.saturating_add(self.skew))
        else {
            return SimTime::ZERO;
        };
        let rate = BILLION + i128::from(self.drift_ppb);
        let guess = i128::from(elapsed) * BILLION / rate.max(1);
        let mut t = u64::try_from(guess.max(0)).unwrap_or(u64::MAX);
        while self.elapsed(SimTime(t)) < elapsed {
            t = t.saturating_add(1);
        }
        while t > 0 && self.elapsed(SimTime(t - 1)) >= elapsed {
            t -= 1;
        }
        SimTime(t)
    }

    /// The node's wall clock at true time `t`, in the database's format.
    pub fn wall(&self, t: SimTime) -> DbTimestamp {
        let micros = i64::try_from(self.elapsed(t) / 1000).unwrap_or(i64::MAX);
        DbTimestamp::from_micros(
            DB_EPOCH_MICROS
                .saturating_add(micros)
                .saturating_add(self.wall_offset_micros),
        )
    }

    /// Steps the wall clock by `micros` (positive: forward).
    pub fn jump_wall(&mut self, micros: i64) {
        self.wall_offset_micros = self.wall_offset_micros.saturating_add(micros);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_at_inverts_local() {
        for drift in [-999_000_i64, 0, 1, 999_000] {
            let c = NodeClock::new(drift, 12_345, 0);
            for t in [0_u64, 1, 999, 1_000_000_007, 600_000_000_000] {
                let l = c.local(SimTime(t));
                let back = c.true_at(l);
                assert!(back <= SimTime(t), "drift {drift} t {t}");
                assert!(c.local(back) >= l);
            }
        }
    }

    #[test]
    fn local_is_exact_and_monotonic() {
        for drift in [-999_000_i64, -1, 0, 7, 999_000] {
            let c = NodeClock::new(drift, 0, 0);
            let mut last = 0;
            for t in (0_u64..3_000_000_000).step_by(99_999_937) {
                let exact =
                    i128::from(t) + (i128::from(t) * i128::from(drift)).div_euclid(1_000_000_000);
                let l = c.local(SimTime(t)).as_nanos();
                assert_eq!(i128::from(l), exact);
                assert!(l >= last);
                last = l;
            }
        }
    }

    #[test]
    fn wall_follows_jumps() {
        let mut c = NodeClock::new(0, 0, 0);
        let t = SimTime::from_duration(Duration::from_secs(1));
        assert_eq!(c.wall(t), db_time(t));
        c.jump_wall(5_000_000);
        assert_eq!(c.wall(t), db_time(t) + Duration::from_secs(5));
    }
}
