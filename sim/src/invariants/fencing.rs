//! **Always**: the fenced resource of a role never accepts a write whose
//! token is older than a token it already accepted. Writes are accepted by
//! the database only when the lease row names the writer and its term (the
//! `fenced(token)` transaction), so this holds exactly when fencing works:
//! terms never go back in the row and a deposed leader's write is refused.

use regent_core::Term;

use crate::report::Violation;
use crate::time::SimTime;

/// The highest accepted token per role.
#[derive(Debug)]
pub struct Fencing {
    highest: Vec<Option<(Term, usize)>>,
}

impl Fencing {
    pub(crate) fn new(roles: usize) -> Self {
        Self {
            highest: vec![None; roles],
        }
    }

    pub(crate) fn on_accept(
        &mut self,
        at: SimTime,
        node: usize,
        role: usize,
        token: Term,
    ) -> Option<Violation> {
        let slot = self.highest.get_mut(role)?;
        match *slot {
            Some((high, by)) if token < high => Some(Violation {
                at,
                invariant: "fencing",
                message: format!(
                    "role r{role}: accepted token {token} from n{node} after token {high} from n{by}"
                ),
            }),
            Some((high, _)) if token == high => None,
            _ => {
                *slot = Some((token, node));
                None
            }
        }
    }
}
