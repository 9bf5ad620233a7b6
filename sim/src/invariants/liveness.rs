//! **Eventually**: once every fault has healed, every role is led by some
//! node within a bound (by default two leases, plus the retry interval and
//! jitter, plus the keepalive timeout, plus a few seconds).

use std::time::Duration;

use crate::report::Violation;
use crate::time::SimTime;

/// Which roles have been led since the heal.
#[derive(Debug)]
pub struct Liveness {
    bound: Duration,
    healed_at: Option<SimTime>,
    led: Vec<bool>,
}

impl Liveness {
    pub(crate) fn new(roles: usize, bound: Duration) -> Self {
        Self {
            bound,
            healed_at: None,
            led: vec![false; roles],
        }
    }

    /// The bound in force.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    pub(crate) fn heal(&mut self, at: SimTime) {
        self.healed_at = Some(at);
        self.led.iter_mut().for_each(|l| *l = false);
    }

    pub(crate) fn observe(&mut self, _at: SimTime, leaders: &[Vec<usize>]) {
        if self.healed_at.is_none() {
            return;
        }
        for (l, who) in self.led.iter_mut().zip(leaders) {
            *l |= !who.is_empty();
        }
    }

    pub(crate) fn deadline(&mut self, at: SimTime) -> Option<Violation> {
        let healed = self.healed_at?;
        let missing: Vec<String> = self
            .led
            .iter()
            .enumerate()
            .filter(|(_, l)| !**l)
            .map(|(r, _)| format!("r{r}"))
            .collect();
        (!missing.is_empty()).then(|| Violation {
            at,
            invariant: "liveness",
            message: format!(
                "no leader for {} within {:.1}s after every fault healed at {}",
                missing.join(", "),
                self.bound.as_secs_f64(),
                healed
            ),
        })
    }
}
