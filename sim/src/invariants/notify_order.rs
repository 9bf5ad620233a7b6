//! **Always**: a release notification is published only after the
//! publisher's lock is free (DESIGN §2 rule 5). A standby woken earlier fails
//! its attempt and sleeps a whole retry interval.

use crate::report::Violation;
use crate::time::SimTime;

/// Stateless.
#[derive(Debug)]
pub struct NotifyOrder;

impl NotifyOrder {
    pub(crate) fn on_publish(
        &self,
        at: SimTime,
        node: usize,
        role: usize,
        still_locked: bool,
    ) -> Option<Violation> {
        still_locked.then(|| Violation {
            at,
            invariant: "notify_order",
            message: format!(
                "n{node} published the release of r{role} while its session still held the lock"
            ),
        })
    }
}
