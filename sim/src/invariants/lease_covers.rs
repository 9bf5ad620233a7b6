//! **Always** (both policies): a node believes it leads a role only while
//! the database still runs a lease of that node's term — `db now <
//! lease_until` as set by the last claim or renewal of that term (or cut
//! short by its own expire). This is rule 2 of the safety argument checked
//! directly, one step before two leaders overlap.
//!
//! Database time here is *true* database time: each lease is measured as
//! the database granted it, `L` of real time from its statement, whatever
//! steps the server clock took since (`db-clock`, `failover`). A forward
//! step beyond the margin really does end leases early for everyone who
//! reads the stepped clock; where that does harm — a new holder leading
//! while the old one still believes — [`super::one_leader`] reports it.

use std::collections::BTreeMap;

use regent_core::{DbTimestamp, Term};

use crate::report::Violation;
use crate::time::SimTime;

/// Terms below this are kept in a vector indexed by term (the database
/// numbers terms 1, 2, 3, ... per role, so this is every term in practice);
/// any others in a map.
const DENSE_TERMS: u64 = 1 << 20;

/// The lease ends of one role, by term.
#[derive(Debug, Default)]
struct Ends {
    dense: Vec<Option<DbTimestamp>>,
    sparse: BTreeMap<Term, DbTimestamp>,
}

impl Ends {
    fn get(&self, term: Term) -> Option<DbTimestamp> {
        if term.0 < DENSE_TERMS {
            self.dense.get(term.0 as usize).copied().flatten()
        } else {
            self.sparse.get(&term).copied()
        }
    }

    fn slot(&mut self, term: Term) -> &mut Option<DbTimestamp> {
        let i = term.0 as usize;
        if self.dense.len() <= i {
            self.dense.resize(i + 1, None);
        }
        &mut self.dense[i]
    }

    fn granted(&mut self, term: Term, until: DbTimestamp) {
        if term.0 < DENSE_TERMS {
            let e = self.slot(term);
            *e = Some(e.map_or(until, |e| e.max(until)));
        } else {
            let e = self.sparse.entry(term).or_insert(until);
            *e = (*e).max(until);
        }
    }

    fn expired(&mut self, term: Term, now: DbTimestamp) {
        let e = if term.0 < DENSE_TERMS {
            self.dense.get_mut(term.0 as usize).and_then(Option::as_mut)
        } else {
            self.sparse.get_mut(&term)
        };
        if let Some(e) = e {
            *e = (*e).min(now);
        }
    }
}

/// Per role: the lease end the database granted to each term.
#[derive(Debug)]
pub struct LeaseCovers {
    ends: Vec<Ends>,
    /// Some lease end moved earlier (an expire) since the last
    /// [`LeaseCovers::take_shortened`].
    shortened: bool,
}

impl LeaseCovers {
    pub(crate) fn new(roles: usize) -> Self {
        Self {
            ends: (0..roles).map(|_| Ends::default()).collect(),
            shortened: false,
        }
    }

    /// Whether a lease end moved earlier since the last call. (Grants only
    /// move ends later.)
    pub(crate) fn take_shortened(&mut self) -> bool {
        std::mem::take(&mut self.shortened)
    }

    /// The lease end of `term` for `role`, if one was granted.
    pub(crate) fn end(&self, role: usize, term: Option<Term>) -> Option<DbTimestamp> {
        term.and_then(|t| self.ends.get(role).and_then(|m| m.get(t)))
    }

    /// A claim or renewal of `term` set the lease to end at `until`.
    pub(crate) fn granted(&mut self, role: usize, term: Term, until: DbTimestamp) {
        if let Some(m) = self.ends.get_mut(role) {
            m.granted(term, until);
        }
    }

    /// The holder expired `term`'s lease at `now`.
    pub(crate) fn expired(&mut self, role: usize, term: Term, now: DbTimestamp) {
        if let Some(m) = self.ends.get_mut(role) {
            m.expired(term, now);
            self.shortened = true;
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
        let end = self.end(role, term);
        match (term, end) {
            (Some(_), Some(end)) if db_now < end => None,
            (term, end) => Some(violation(at, db_now, node, role, term, end)),
        }
    }
}

/// The report of a failed check, kept out of the checked path.
#[cold]
#[inline(never)]
fn violation(
    at: SimTime,
    db_now: DbTimestamp,
    node: usize,
    role: usize,
    term: Option<Term>,
    end: Option<DbTimestamp>,
) -> Violation {
    Violation {
        at,
        invariant: "lease_covers",
        message: format!(
            "n{node} believes it leads r{role} with term {} but the database lease of that term {} (db now {db_now})",
            term.map_or("-".to_owned(), |t| t.to_string()),
            end.map_or("was never granted".to_owned(), |e| format!("ended at {e}"))
        ),
    }
}
