//! **Always**: a session never asks for an advisory lock it already holds
//! (DESIGN §4). PostgreSQL would grant it again, and one unlock would then
//! leave the lock held — leaked into the session for as long as it lives.

use crate::report::Violation;
use crate::time::SimTime;

/// Stateless.
#[derive(Debug)]
pub struct NoReentry;

impl NoReentry {
    pub(crate) fn on_try_lock(
        &self,
        at: SimTime,
        node: usize,
        role: usize,
        already_held: bool,
    ) -> Option<Violation> {
        already_held.then(|| Violation {
            at,
            invariant: "no_reentry",
            message: format!("n{node} tried the lock of r{role} that its session already holds"),
        })
    }
}
