//! **Always**: one role's trouble never costs a node its other roles
//! (DESIGN §4 "Blast radius", §6 "one role's fenced transaction or claim
//! is slow: zero roles lost").
//!
//! A node may step down at its local deadline or on losing its lock only
//! if a fault hit it recently: its process paused, its network cut, a
//! message on its session lost or held up, one of its statements stalled,
//! its backend terminated, the database restarted, failed over or had its
//! clock stepped. Each such fault marks the node disturbed until the
//! fault ends plus a lease, an attempt timeout and the longest delay
//! spike (`World::disturb`). Fenced work (its own or another node's) and
//! claims that meet it are not faults: a step-down they cause is a
//! violation. This is what a fence taken `FOR SHARE` (blocking its own
//! leader's renewal) or a claim that waits on row locks (stalling the
//! node's session) breaks.
//!
//! And the latency half of the same promise (`BackendError::Busy`: "one
//! role's contention never delays the node's calls for its other roles"):
//! no call waits on a node's session for longer than an attempt timeout
//! behind a statement that waits for a row lock (`held_up`). With the
//! server's 5 s statement timeout a single waiting claim delays the
//! renewal past its attempt timeout without yet costing the role; this
//! catches it at the first such wait.

use crate::report::Violation;
use crate::time::SimTime;

/// Node `node` stepped down from `role` at `at` for `reason`; no fault
/// disturbed it after `disturbed_until`.
pub(crate) fn check(
    at: SimTime,
    node: usize,
    role: usize,
    reason: &str,
    disturbed_until: SimTime,
) -> Option<Violation> {
    if at <= disturbed_until {
        return None;
    }
    Some(Violation {
        at,
        invariant: "blast_radius",
        message: format!(
            "n{node} lost r{role} ({reason}) though no fault hit it since {}: \
             its session was held up by row locks (fenced work or a waiting claim)",
            if disturbed_until == SimTime::ZERO {
                "the start".to_owned()
            } else {
                format!("{disturbed_until}")
            }
        ),
    })
}

/// A call (`id`) of node `node` waited `waited` on its session behind a
/// statement that waited for a row lock.
pub(crate) fn held_up(at: SimTime, node: usize, id: u64, waited: std::time::Duration) -> Violation {
    Violation {
        at,
        invariant: "blast_radius",
        message: format!(
            "n{node}'s call #{id} waited {:.3}s on its session behind a statement waiting for a row lock",
            waited.as_secs_f64()
        ),
    }
}
