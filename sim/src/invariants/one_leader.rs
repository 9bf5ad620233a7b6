//! **Always**: under `TakeoverPolicy::WaitForLease`, at most one node's
//! `is_leader(role, its local now)` is true per role at any true instant.
//! Paused nodes count (their belief resumes with them); crashed ones do not.
//! Under `Immediate` overlaps are allowed and only counted.

use regent_core::TakeoverPolicy;

use crate::report::{Coverage, Violation};
use crate::time::SimTime;

/// State of the check: the previous number of believers per role.
#[derive(Debug)]
pub struct OneLeader {
    policy: TakeoverPolicy,
    prev: Vec<usize>,
}

impl OneLeader {
    pub(crate) fn new(roles: usize, policy: TakeoverPolicy) -> Self {
        Self {
            policy,
            prev: vec![0; roles],
        }
    }

    /// Checks one step. A belief can only end between steps (as local
    /// deadlines pass), never start, so checking at every step is exact.
    pub(crate) fn check(
        &mut self,
        at: SimTime,
        leaders: &[Vec<usize>],
        cov: &mut Coverage,
    ) -> Option<Violation> {
        let mut found = None;
        for (role, who) in leaders.iter().enumerate() {
            let before = self.prev.get(role).copied().unwrap_or(0);
            if who.len() > 1 && before <= 1 {
                *cov.entry("belief_overlap").or_default() += 1;
                if self.policy == TakeoverPolicy::WaitForLease && found.is_none() {
                    let names: Vec<String> = who.iter().map(|n| format!("n{n}")).collect();
                    found = Some(Violation {
                        at,
                        invariant: "one_leader",
                        message: format!(
                            "role r{role}: {} nodes believe they lead at once: {}",
                            who.len(),
                            names.join(", ")
                        ),
                    });
                }
            }
            if let Some(p) = self.prev.get_mut(role) {
                *p = who.len();
            }
        }
        found
    }
}
