//! Row locks on lease rows, with PostgreSQL's conflict table for the four
//! row-level lock modes (PostgreSQL docs, "Explicit Locking", table
//! "Conflicting Row-Level Locks").
//!
//! Only locks that outlive a statement are stored: those of open
//! transactions (fenced work). A single statement's own lock (a claim's
//! `FOR UPDATE`, a renewal's `FOR NO KEY UPDATE`) is taken and released
//! within the statement, so it is checked against the stored ones with
//! [`SimDb::row_blocker`] and never stored.

use regent_core::{Namespace, Role};

use super::SimDb;

/// A row-level lock mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RowLockMode {
    /// `FOR KEY SHARE`: what `check_fence` takes. Blocks only `FOR UPDATE`.
    KeyShare,
    /// `FOR SHARE`: blocks `FOR NO KEY UPDATE` and `FOR UPDATE`, so a
    /// fence taken this way blocks its own leader's renewal.
    Share,
    /// `FOR NO KEY UPDATE`: an `UPDATE` of non-key columns (renew, expire).
    NoKeyUpdate,
    /// `FOR UPDATE`: a claim's `SELECT … FOR UPDATE NOWAIT`.
    Update,
}

impl RowLockMode {
    /// Whether a lock in `self` mode held by one transaction blocks
    /// `other` requested by another one.
    pub fn conflicts(self, other: RowLockMode) -> bool {
        use RowLockMode::{KeyShare, NoKeyUpdate, Share, Update};
        match (self, other) {
            (Update, _) | (_, Update) => true,
            (NoKeyUpdate, NoKeyUpdate | Share) | (Share, NoKeyUpdate) => true,
            (KeyShare, KeyShare | Share | NoKeyUpdate)
            | (Share, KeyShare | Share)
            | (NoKeyUpdate, KeyShare) => false,
        }
    }

    /// The SQL spelling, for logs.
    pub fn sql(self) -> &'static str {
        match self {
            RowLockMode::KeyShare => "FOR KEY SHARE",
            RowLockMode::Share => "FOR SHARE",
            RowLockMode::NoKeyUpdate => "FOR NO KEY UPDATE",
            RowLockMode::Update => "FOR UPDATE",
        }
    }
}

/// The owner of a row lock: an open transaction's id.
pub type TxId = u64;

impl SimDb {
    /// Transaction `tx` locks `role`'s row in `mode` (until
    /// [`SimDb::end_tx`]). The caller checked [`SimDb::row_blocker`].
    pub fn lock_row(&mut self, tx: TxId, namespace: &Namespace, role: &Role, mode: RowLockMode) {
        if let Some(v) = self.row_locks.get_mut(namespace, role) {
            v.push((tx, mode));
        } else {
            self.row_locks.insert(namespace, role, vec![(tx, mode)]);
        }
    }

    /// Transaction `tx` commits or rolls back: its row locks are released.
    /// Returns whether it held any (false after a restart dropped them).
    pub fn end_tx(&mut self, tx: TxId) -> bool {
        let mut found = false;
        for m in self.row_locks.0.values_mut() {
            for v in m.values_mut() {
                let before = v.len();
                v.retain(|(t, _)| *t != tx);
                found |= v.len() != before;
            }
        }
        found
    }

    /// The first open transaction (other than `me`) whose lock on `role`'s
    /// row conflicts with `mode`, if any.
    pub fn row_blocker(
        &self,
        me: Option<TxId>,
        namespace: &Namespace,
        role: &Role,
        mode: RowLockMode,
    ) -> Option<TxId> {
        self.row_locks.get(namespace, role).and_then(|v| {
            v.iter()
                .find(|(t, m)| Some(*t) != me && m.conflicts(mode))
                .map(|(t, _)| *t)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::RowLockMode::{self, KeyShare, NoKeyUpdate, Share, Update};

    /// PostgreSQL's table, row by row (X = conflict).
    #[test]
    fn conflict_table_matches_postgres() {
        let modes = [KeyShare, Share, NoKeyUpdate, Update];
        let table: [[bool; 4]; 4] = [
            [false, false, false, true],
            [false, false, true, true],
            [false, true, true, true],
            [true, true, true, true],
        ];
        for (i, a) in modes.iter().enumerate() {
            for (j, b) in modes.iter().enumerate() {
                assert_eq!(a.conflicts(*b), table[i][j], "{a:?} vs {b:?}");
                assert_eq!(a.conflicts(*b), b.conflicts(*a));
            }
        }
        let _: RowLockMode = KeyShare;
    }

    #[test]
    fn a_key_share_fence_blocks_claims_not_renewals() {
        let (mut db, ns, role, _) = super::super::tests::setup();
        db.lock_row(7, &ns, &role, KeyShare);
        assert_eq!(db.row_blocker(None, &ns, &role, Update), Some(7));
        assert_eq!(db.row_blocker(None, &ns, &role, NoKeyUpdate), None);
        db.lock_row(8, &ns, &role, Share);
        assert_eq!(db.row_blocker(None, &ns, &role, NoKeyUpdate), Some(8));
        assert!(db.end_tx(8));
        assert!(!db.end_tx(8));
        db.stop();
        assert_eq!(db.row_blocker(None, &ns, &role, Update), None);
    }
}
