//! The server side of one session: statements run one at a time, in the
//! order they arrived, each taking time.
//!
//! - A statement's duration is drawn per statement: usually a fraction of a
//!   millisecond to a few, and with `slow-db` now and then a stall of
//!   seconds. Its effects happen when it starts (PostgreSQL's `now()` is
//!   the transaction's start), its reply leaves when it ends, and the next
//!   statement of the session starts only then: a slow statement delays
//!   every later call of that node.
//! - A statement that needs a row lock another transaction holds in a
//!   conflicting mode ([`RowLockMode::conflicts`]) waits for it — the
//!   renewal (`FOR NO KEY UPDATE`) and the expire of a release — unless it
//!   is a claim, whose `FOR UPDATE NOWAIT` fails at once with `Busy` (see
//!   `execute`). Mutant `claim-waits-on-row-lock` makes the claim wait.
//! - Waits and stalls are bounded by the server's `statement_timeout`
//!   ([`STATEMENT_TIMEOUT`]): the statement is cancelled with no effect. A
//!   DML statement's failure leaves the session alone (a transient error);
//!   a statement that may have changed advisory locks (try-lock, release)
//!   closes the session, as the engine does.

use std::time::Duration;

use regent_core::{BackendError, Command};

use super::{Ev, World};
use crate::db::{RowLockMode, SessionEnd};
use crate::faults::STATEMENT_TIMEOUT;
use crate::mutant::Mutant;
use crate::time::SimTime;

/// What holds up the statement at the front of a session.
enum Hold {
    /// Nothing: it runs now.
    Run,
    /// Wait until then (a stall, or a conflicting lock's planned end).
    Until(SimTime),
    /// Its statement timeout passed: cancel it.
    Cancel,
}

impl World {
    /// Runs what session `c` can run now, and schedules its next step.
    pub(super) fn run_session(&mut self, c: usize) {
        self.conns[c].exec_scheduled = false;
        let n = self.conns[c].node;
        loop {
            let now = self.now;
            if now < self.conns[c].busy_until {
                let at = self.conns[c].busy_until;
                self.schedule_exec(c, at);
                return;
            }
            if self.conns[c].queue.is_empty() {
                return;
            }
            let first = self.conns[c].front.is_none();
            if first {
                let d = self.statement_time(n);
                self.conns[c].front = Some((now, d, false));
            }
            let (since, d, _) = self.conns[c].front.unwrap_or((now, Duration::ZERO, false));
            let deadline = since + STATEMENT_TIMEOUT;
            let hold = if d >= STATEMENT_TIMEOUT {
                if now >= deadline {
                    Hold::Cancel
                } else {
                    Hold::Until(deadline)
                }
            } else {
                let wait = self.conns[c]
                    .queue
                    .front()
                    .and_then(|(cmd, _)| self.row_wait(cmd));
                match wait {
                    None => Hold::Run,
                    Some(_) if now >= deadline => Hold::Cancel,
                    Some(until) => {
                        if let Some(f) = self.conns[c].front.as_mut()
                            && !f.2
                        {
                            f.2 = true;
                            self.count("statement_waited_on_row_lock");
                        }
                        Hold::Until(until.min(deadline))
                    }
                }
            };
            match hold {
                Hold::Until(at) => {
                    self.schedule_exec(c, at.max(now + Duration::from_micros(1)));
                    return;
                }
                Hold::Cancel => {
                    self.check_held_up(c);
                    self.conns[c].front = None;
                    if let Some((cmd, _)) = self.conns[c].queue.pop_front() {
                        self.cancel_statement(c, cmd);
                    }
                }
                Hold::Run => {
                    self.check_held_up(c);
                    self.conns[c].front = None;
                    let Some((cmd, _)) = self.conns[c].queue.pop_front() else {
                        return;
                    };
                    let id = cmd.id();
                    let result = match self.conns[c].pid {
                        Some(pid) => self.run_statement(n, pid, cmd),
                        None => return,
                    };
                    self.conns[c].busy_until = now + d;
                    self.send_reply(c, id, result, d);
                }
            }
        }
    }

    /// The front statement of session `c` ends its wait: if it waited on
    /// a row lock while a call about another role queued behind it for
    /// longer than an attempt timeout, that call was held up by someone
    /// else's row lock — what the engine promises never happens
    /// ([`crate::invariants::blast_radius`]).
    fn check_held_up(&mut self, c: usize) {
        let Some((_, _, true)) = self.conns[c].front else {
            return;
        };
        let limit = self.machine_cfg.attempt_timeout();
        let now = self.now;
        let held = self.conns[c]
            .queue
            .iter()
            .skip(1)
            .map(|(cmd, at)| (cmd.id().0, now.saturating_since(*at)))
            .find(|(_, d)| *d > limit);
        if let Some((id, d)) = held {
            let n = self.conns[c].node;
            let v = crate::invariants::blast_radius::held_up(now, n, id, d);
            self.checker.push_violation(Some(v));
        }
    }

    fn schedule_exec(&mut self, c: usize, at: SimTime) {
        self.conns[c].exec_gen += 1;
        self.conns[c].exec_scheduled = true;
        let generation = self.conns[c].exec_gen;
        self.schedule(
            at,
            Ev::DbExec {
                conn: c,
                generation,
            },
        );
    }

    /// A scheduled step of session `c` (stale ones are ignored).
    pub(super) fn db_exec(&mut self, c: usize, generation: u64) {
        if self.conns[c].exec_gen == generation {
            self.run_session(c);
        }
    }

    /// A row lock was released: sessions waiting on one look again now.
    pub(super) fn row_locks_released(&mut self) {
        for c in 0..self.conns.len() {
            let conn = &self.conns[c];
            if conn.exec_scheduled && conn.front.is_some() && conn.busy_until <= self.now {
                let now = self.now;
                self.schedule_exec(c, now);
            }
        }
    }

    /// How long the next statement of node `n` takes on the server.
    fn statement_time(&mut self, n: usize) -> Duration {
        let base = self
            .rng
            .between(Duration::from_micros(100), Duration::from_millis(3));
        if self.knobs.stall > 0.0 && !self.healed && self.rng.chance(self.knobs.stall) {
            let stall = self
                .rng
                .between(Duration::from_millis(300), self.knobs.stall_max);
            self.count("statement_stalled");
            self.disturb(n, self.now + stall.min(STATEMENT_TIMEOUT));
            self.fault_hits(Some(n), None);
            return base + stall;
        }
        base
    }

    /// If `cmd` must wait for a row lock: when the blocking transaction is
    /// planned to end.
    fn row_wait(&self, cmd: &Command) -> Option<SimTime> {
        let blocker = |role, mode| self.db.row_blocker(None, &self.ns, role, mode);
        let tx = match cmd {
            Command::Renew { leases, .. } => leases
                .iter()
                .find_map(|l| blocker(&l.role, RowLockMode::NoKeyUpdate)),
            Command::Release {
                role,
                term: Some(_),
                ..
            } => blocker(role, RowLockMode::NoKeyUpdate),
            Command::Claim { role, .. } if self.cfg.mutant == Some(Mutant::ClaimWaitsOnRowLock) => {
                blocker(role, RowLockMode::Update)
            }
            _ => None,
        }?;
        Some(self.fenced_tx_end(tx))
    }

    /// The statement timeout cancels `cmd`: nothing it would have done
    /// happens. A statement about advisory locks closes the session.
    fn cancel_statement(&mut self, c: usize, cmd: Command) {
        let n = self.conns[c].node;
        let id = cmd.id();
        self.count("statement_timeout");
        self.log(n, "db:statement_timeout", None, id.0, 0);
        let closes = matches!(cmd, Command::TryLock { .. } | Command::Release { .. });
        let result = if closes {
            if let Some(pid) = self.conns[c].pid {
                self.db.end_session(pid, SessionEnd::ClientClosed);
            }
            self.count("session_closed_after_failed_lock_statement");
            Err(BackendError::SessionLost {
                reason: "a statement about advisory locks failed: session closed".to_owned(),
            })
        } else {
            Err(BackendError::Transient(
                "canceling statement due to statement timeout".to_owned(),
            ))
        };
        self.send_reply(c, id, result, Duration::ZERO);
    }
}
