//! Long fenced work: a leader now and then opens a fenced transaction and
//! keeps it open for seconds (`backend.fenced(&fence)`, or `check_fence`
//! in a transaction the application opened).
//!
//! The transaction runs on a pool connection, not the election session. It
//! reads the lease row `FOR KEY SHARE` (mutant `fences-with-for-share`:
//! `FOR SHARE`) and checks holder and term; a stale fence is rolled back at
//! once. Otherwise it holds that row lock until it commits, is cancelled
//! (the leader stepped down or was asked to drain: the application's work
//! is cancelled and the rollback reaches the server a network hop later),
//! or reaches the server's idle timeout ([`FENCED_IDLE_TIMEOUT`]); a
//! restart or failover aborts it. Its write is accepted at commit, so the
//! fencing invariant sees it then.

use std::time::Duration;

use regent_core::Term;

use super::{Ev, World};
use crate::db::{FencedOutcome, RowLockMode, TxId};
use crate::faults::FENCED_IDLE_TIMEOUT;
use crate::mutant::Mutant;
use crate::time::SimTime;

/// An open fenced transaction.
#[derive(Debug, Clone)]
pub(super) struct FencedTx {
    node: usize,
    /// The node's incarnation that opened it.
    inc: u32,
    /// When it began on the server.
    begin: SimTime,
    role: usize,
    token: Term,
    /// When it is planned to end.
    end: SimTime,
    /// Whether it commits then (else it is rolled back).
    commit: bool,
}

impl World {
    /// Maybe opens a long fenced transaction for role `r`, which node `n`
    /// leads with `token`.
    pub(super) fn maybe_open_fenced(&mut self, n: usize, r: usize, token: Term) {
        if self.knobs.fenced_work <= 0.0 || !self.rng.chance(self.knobs.fenced_work) {
            return;
        }
        if self.fenced_txs.values().any(|t| t.node == n && t.role == r) {
            return;
        }
        let hold = self
            .rng
            .between(Duration::from_millis(100), self.knobs.fenced_max);
        if self.nodes[n].cut_to_db() || self.lost() {
            return;
        }
        let d = self.delay();
        self.log(n, "fenced_begin", Some(r), token.0, hold.as_millis() as u64);
        self.after(
            d,
            Ev::FencedBegin {
                node: n,
                role: r,
                token,
                hold,
            },
        );
    }

    /// The fenced transaction's first statement reaches the server.
    pub(super) fn fenced_begin(&mut self, n: usize, r: usize, token: Term, hold: Duration) {
        if !self.db.is_up() {
            self.count("fenced_write_db_down");
            return;
        }
        let key = &self.lock_keys[r];
        let fresh = self
            .db
            .row(key)
            .is_some_and(|row| row.holder == self.nodes[n].id.as_str() && row.term == token);
        if !fresh {
            self.log(n, "db:fenced_tx_stale", Some(r), token.0, 0);
            self.count("deposed_fenced_write_rejected");
            return;
        }
        let mode = if self.cfg.mutant == Some(Mutant::FencesWithForShare) {
            RowLockMode::Share
        } else {
            RowLockMode::KeyShare
        };
        self.next_tx += 1;
        let tx = self.next_tx;
        let (ns, role) = (self.ns.clone(), self.roles[r].clone());
        self.db.lock_row(tx, &ns, &role, mode);
        let commit = hold <= FENCED_IDLE_TIMEOUT;
        let end = self.now + hold.min(FENCED_IDLE_TIMEOUT);
        self.count("fenced_tx_opened");
        self.fenced_txs.insert(
            tx,
            FencedTx {
                node: n,
                inc: self.nodes[n].inc,
                begin: self.now,
                role: r,
                token,
                end,
                commit,
            },
        );
        self.schedule(end, Ev::FencedEnd { tx, commit });
    }

    /// The planned end of open transaction `tx` (now if it is unknown).
    pub(super) fn fenced_tx_end(&self, tx: TxId) -> SimTime {
        self.fenced_txs.get(&tx).map_or(self.now, |t| t.end)
    }

    /// Transaction `tx` commits or rolls back (if it is still open). A
    /// client that cannot send its commit (crashed, paused, cut off) leaves
    /// the transaction idle until the server's idle timeout rolls it back
    /// — counted here from the transaction's start, where PostgreSQL counts
    /// from its last statement (a slight underestimate of the hold).
    pub(super) fn fenced_end(&mut self, tx: TxId, commit: bool) {
        if commit && let Some(t) = self.fenced_txs.get_mut(&tx) {
            let node = &self.nodes[t.node];
            let stuck = node.inc != t.inc || node.paused() || node.cut_to_db();
            let idle_end = t.begin + FENCED_IDLE_TIMEOUT;
            if stuck && self.now < idle_end {
                t.end = idle_end;
                t.commit = false;
                self.schedule(idle_end, Ev::FencedEnd { tx, commit: false });
                return;
            }
            if stuck {
                t.commit = false;
            }
        }
        let Some(t) = self.fenced_txs.remove(&tx) else {
            return;
        };
        self.db.end_tx(tx);
        let (n, r) = (t.node, t.role);
        if commit && t.commit {
            self.count("fenced_tx_committed");
            match self
                .db
                .fenced_write(&self.ns, &self.roles[r], &self.nodes[n].id, t.token)
            {
                Ok(FencedOutcome::Accepted) => {
                    self.log(n, "db:fenced_tx_committed", Some(r), t.token.0, 0);
                    let now = self.now;
                    self.checker.on_fenced_accept(now, n, r, t.token);
                }
                // The row changed under a held fence: the fence failed.
                Ok(FencedOutcome::Rejected { .. }) => self.count("fenced_tx_fence_broken"),
                Err(_) => self.count("fenced_write_db_down"),
            }
        } else if t.commit {
            self.log(n, "db:fenced_tx_cancelled", Some(r), t.token.0, 0);
            self.count("fenced_tx_cancelled");
        } else {
            self.log(n, "db:fenced_tx_idle_timeout", Some(r), t.token.0, 0);
            self.count("fenced_tx_idle_timeout");
        }
        self.row_locks_released();
    }

    /// Node `n` stops leading role `r` (or is asked to drain it): its
    /// fenced work is cancelled. Returns when the rollback reaches the
    /// server, if a transaction was open and the rollback can get there.
    pub(super) fn cancel_fenced(&mut self, n: usize, r: usize) -> Option<Duration> {
        let tx = self
            .fenced_txs
            .iter()
            .find(|(_, t)| t.node == n && t.role == r)
            .map(|(tx, _)| *tx)?;
        if self.nodes[n].cut_to_db() || self.nodes[n].paused() {
            return None;
        }
        let d = self.delay();
        self.schedule(self.now + d, Ev::FencedEnd { tx, commit: false });
        Some(d)
    }

    /// Node `n`'s process died: the server rolls its transactions back
    /// when it notices (a FIN a hop later, or keepalives).
    pub(super) fn crash_fenced(&mut self, n: usize, after: Duration) {
        let txs: Vec<TxId> = self
            .fenced_txs
            .iter()
            .filter(|(_, t)| t.node == n)
            .map(|(tx, _)| *tx)
            .collect();
        for tx in txs {
            self.schedule(self.now + after, Ev::FencedEnd { tx, commit: false });
        }
    }

    /// The server stopped: every open transaction is aborted.
    pub(super) fn abort_fenced(&mut self) {
        if !self.fenced_txs.is_empty() {
            self.count("fenced_tx_aborted_by_restart");
        }
        self.fenced_txs.clear();
    }
}
