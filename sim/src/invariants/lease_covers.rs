//! **Always** (both policies): a node believes it leads a role only while
//! the database still runs a lease of that node's term — `db now <
//! lease_until` as set by the last claim or renewal of that term (or cut
//! short by its own expire). This is rule 2 of the safety argument checked
//! directly, one step before two leaders overlap.

use std::collections::BTreeMap;

use regent_core::{DbTimestamp, Term};

use crate::report::Violation;
use crate::time::SimTime;

/// Per role: the lease end the database granted to each term.
#[derive(Debug)]
pub struct LeaseCovers {
    ends: Vec<BTreeMap<Term, DbTimestamp>>,
}

impl LeaseCovers {
    pub(crate) fn new(roles: usize) -> Self {
        Self {
            ends: vec![BTreeMap::new(); roles],
        }
    }

    /// A claim or renewal of `term` set the lease to end at `until`.
    pub(crate) fn granted(&mut self, role: usize, term: Term, until: DbTimestamp) {
        if let Some(m) = self.ends.get_mut(role) {
            let e = m.entry(term).or_insert(until);
            *e = (*e).max(until);
        }
    }

    /// The holder expired `term`'s lease at `now`.
    pub(crate) fn expired(&mut self, role: usize, term: Term, now: DbTimestamp) {
        if let Some(e) = self.ends.get_mut(role).and_then(|m| m.get_mut(&term)) {
            *e = (*e).min(now);
        }
    }

    /// Node `node` believes it leads `role` with `term` at database time
    /// `db_now`.
    pub(crate) fn check(
        &self,
        at: SimTime,
        db_now: DbTimestamp,
        node: usize,
        role: usize,
        term: Option<Term>,
    ) -> Option<Violation> {
        let end = term.and_then(|t| self.ends.get(role).and_then(|m| m.get(&t)).copied());
        match (term, end) {
            (Some(_), Some(end)) if db_now < end => None,
            (term, end) => Some(Violation {
                at,
                invariant: "lease_covers",
                message: format!(
                    "n{node} believes it leads r{role} with term {} but the database lease of that term {} (db now {db_now})",
                    term.map_or("-".to_owned(), |t| t.to_string()),
                    end.map_or("was never granted".to_owned(), |e| format!("ended at {e}"))
                ),
            }),
        }
    }
}
