//! Undo records of recent lease-row changes, so that a failover to an
//! asynchronous replica can lose the last commits
//! ([`SimDb::lose_tail`]). Kept only when asked for: most runs never lose
//! a commit and need not pay for the records.

use std::collections::VecDeque;
use std::time::Duration;

use regent_core::{LeaseRecord, Namespace, Role};

use super::SimDb;

/// One change: when (true database time, microseconds), which row, and
/// the row as it was before.
#[derive(Debug, Clone)]
struct Undo {
    at: i64,
    namespace: Namespace,
    role: Role,
    before: Option<LeaseRecord>,
}

/// The undo records of the last `horizon`.
#[derive(Debug, Clone)]
pub(super) struct History {
    horizon_micros: i64,
    undo: VecDeque<Undo>,
}

impl SimDb {
    /// Keeps undo records of row changes for `horizon`, the most a
    /// [`SimDb::lose_tail`] may take back.
    pub fn keep_history(&mut self, horizon: Duration) {
        self.history = Some(History {
            horizon_micros: i64::try_from(horizon.as_micros()).unwrap_or(i64::MAX),
            undo: VecDeque::new(),
        });
    }

    /// Called before `role`'s row changes.
    pub(super) fn record(&mut self, namespace: &Namespace, role: &Role) {
        if self.history.is_none() {
            return;
        }
        let at = self.base.as_micros();
        let before = self.rows.get(namespace, role).cloned();
        let Some(h) = self.history.as_mut() else {
            return;
        };
        while h
            .undo
            .front()
            .is_some_and(|u| u.at < at.saturating_sub(h.horizon_micros))
        {
            h.undo.pop_front();
        }
        h.undo.push_back(Undo {
            at,
            namespace: namespace.clone(),
            role: role.clone(),
            before,
        });
    }

    /// Takes back every row change of the last `lost` of true time, newest
    /// first, as a failover to a replica that lagged by `lost` would.
    /// Returns how many changes were lost.
    pub fn lose_tail(&mut self, lost: Duration) -> usize {
        let cutoff = self
            .base
            .as_micros()
            .saturating_sub(i64::try_from(lost.as_micros()).unwrap_or(i64::MAX));
        let mut undone = Vec::new();
        if let Some(h) = self.history.as_mut() {
            while h.undo.back().is_some_and(|u| u.at > cutoff) {
                if let Some(u) = h.undo.pop_back() {
                    undone.push(u);
                }
            }
        }
        let n = undone.len();
        for u in undone {
            match u.before {
                Some(row) => self.rows.insert(&u.namespace, &u.role, row),
                None => {
                    self.rows.remove(&u.namespace, &u.role);
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use regent_core::{DbTimestamp, Term};

    #[test]
    fn a_lost_tail_takes_back_the_last_claims() {
        let (mut db, ns, role, a) = super::super::tests::setup();
        db.keep_history(Duration::from_secs(5));
        let pid = db.connect("a").unwrap();
        let lease = Duration::from_secs(10);
        db.claim(pid, &ns, &role, &a, lease).unwrap();
        db.set_now(DbTimestamp::from_micros(3_000_000));
        db.claim(pid, &ns, &role, &a, lease).unwrap();
        db.set_now(DbTimestamp::from_micros(3_500_000));
        assert_eq!(db.lose_tail(Duration::from_secs(1)), 1);
        let key = (ns.clone(), role.clone());
        assert_eq!(db.row(&key).map(|r| r.term), Some(Term(1)));
        // The next claim hands out term 2 again.
        assert_eq!(db.claim(pid, &ns, &role, &a, lease).unwrap().term, Term(2));
    }
}
