//! **Always**: terms strictly increase per role. Every claim the database
//! commits has a higher term than any before it; and under `WaitForLease`
//! nodes start leading a role in strictly increasing term order (a later
//! leader never announces an older token).

use regent_core::{TakeoverPolicy, Term};

use crate::report::Violation;
use crate::time::SimTime;

/// The last claimed and last started term per role.
#[derive(Debug)]
pub struct Terms {
    policy: TakeoverPolicy,
    claimed: Vec<Option<(Term, usize)>>,
    started: Vec<Option<(Term, usize)>>,
}

impl Terms {
    pub(crate) fn new(roles: usize, policy: TakeoverPolicy) -> Self {
        Self {
            policy,
            claimed: vec![None; roles],
            started: vec![None; roles],
        }
    }

    pub(crate) fn on_claim(
        &mut self,
        at: SimTime,
        node: usize,
        role: usize,
        term: Term,
    ) -> Option<Violation> {
        let slot = self.claimed.get_mut(role)?;
        if let Some((last, by)) = *slot
            && term <= last
        {
            return Some(Violation {
                at,
                invariant: "terms",
                message: format!(
                    "role r{role}: n{node} claimed term {term} after n{by} claimed {last}"
                ),
            });
        }
        *slot = Some((term, node));
        None
    }

    pub(crate) fn on_started(
        &mut self,
        at: SimTime,
        node: usize,
        role: usize,
        term: Term,
    ) -> Option<Violation> {
        let slot = self.started.get_mut(role)?;
        let prev = *slot;
        if prev.is_none_or(|(last, _)| term > last) {
            *slot = Some((term, node));
        }
        match prev {
            Some((last, by)) if term <= last && self.policy == TakeoverPolicy::WaitForLease => {
                Some(Violation {
                    at,
                    invariant: "terms",
                    message: format!(
                        "role r{role}: n{node} started leading with term {term} after n{by} led with {last}"
                    ),
                })
            }
            _ => None,
        }
    }
}
