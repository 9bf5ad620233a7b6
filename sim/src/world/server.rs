//! The database side: requests arrive, run against [`SimDb`](crate::SimDb)
//! on the connection's session, and replies travel back.

use regent_core::{BackendError, Command, CommandId, CommandOutput, CommandResult, Role, Term};

use super::{Ev, Request, World};
use crate::db::{FencedOutcome, RowLockMode, SessionEnd};

impl World {
    pub(super) fn at_db(&mut self, c: usize, req: Request) {
        let n = self.conns[c].node;
        let cmd = match req {
            Request::Close => {
                if let Some(pid) = self.conns[c].pid {
                    self.db.end_session(pid, SessionEnd::ClientClosed);
                }
                self.conns[c].client_gone = true;
                // Statements still queued behind a running one die with it.
                self.conns[c].queue.clear();
                return;
            }
            Request::Cmd(cmd) => cmd,
        };
        let pid = match self.conns[c].pid {
            Some(pid) => Ok(pid),
            // The client died before its connection was established.
            None if self.conns[c].client_gone => return,
            None => {
                let name = self.nodes[n].id.to_string();
                self.db.connect(&name).inspect(|pid| {
                    self.conns[c].pid = Some(*pid);
                    self.by_pid.insert(*pid, c);
                })
            }
        };
        match pid {
            Ok(_) => {
                self.conns[c].queue.push_back((cmd, self.now));
                if !self.conns[c].exec_scheduled {
                    self.run_session(c);
                }
            }
            Err(e) => {
                let id = cmd.id();
                self.log(n, "exec", None, id.0, 0);
                self.send_reply(c, id, Err(e), std::time::Duration::ZERO);
            }
        }
    }

    /// Runs statement `cmd` of node `n` on session `pid` now, and notes
    /// what the invariants need.
    pub(super) fn run_statement(&mut self, n: usize, pid: i64, cmd: Command) -> CommandResult {
        let id = cmd.id();
        let result = self.execute(n, pid, cmd);
        self.log(n, "exec", None, id.0, u64::from(result.is_ok()));
        if let Err(e) = &result
            && e.is_session_lost()
        {
            self.count("statement_on_dead_session");
        }
        result
    }

    fn execute(&mut self, n: usize, pid: i64, cmd: Command) -> CommandResult {
        let lease = self.machine_cfg.lease_duration();
        match cmd {
            Command::TryLock { roles, .. } => {
                if self.db.is_alive(pid) {
                    for role in &roles {
                        let held = self.db.holds(pid, &self.ns, role);
                        if let Some(r) = self.role_ix(role) {
                            let now = self.now;
                            self.checker.on_try_lock(now, n, r, held);
                        }
                    }
                }
                let out = self.db.try_lock(pid, &self.ns, &roles)?;
                for a in out.attempts.iter().filter(|a| a.granted) {
                    let r = self.role_ix(&a.role);
                    self.log(n, "db:lock_granted", r, pid as u64, 0);
                }
                Ok(CommandOutput::TryLock(out))
            }
            Command::Claim { role, .. } => {
                if self.cfg.mutant != Some(crate::mutant::Mutant::ClaimWaitsOnRowLock)
                    && self.db.is_alive(pid)
                    && self
                        .db
                        .row_blocker(None, &self.ns, &role, RowLockMode::Update)
                        .is_some()
                {
                    // `SELECT … FOR UPDATE NOWAIT` meets fenced work's
                    // lock: nothing changes, the claim fails at once.
                    self.count("claim_busy_fenced_work");
                    return Err(BackendError::Busy(
                        "could not obtain lock on row in relation \"regent_leases\"".to_owned(),
                    ));
                }
                let out = self
                    .db
                    .claim(pid, &self.ns, &role, &self.nodes[n].id, lease)?;
                let r = self.role_ix(&role).unwrap_or(0);
                self.log(n, "db:claim", Some(r), out.term.0, pid as u64);
                let now = self.now;
                self.checker.on_claim(now, n, r, out.term);
                self.checker
                    .lease_covers
                    .granted(r, out.term, self.true_db(out.db_now) + lease);
                if out
                    .previous
                    .as_ref()
                    .is_some_and(|p| !p.expired_at(out.db_now))
                {
                    self.count("claim_over_unexpired_lease");
                }
                Ok(CommandOutput::Claim(out))
            }
            Command::Renew { leases, .. } => {
                let out = self
                    .db
                    .renew(pid, &self.ns, &self.nodes[n].id, &leases, lease)?;
                for l in &leases {
                    if let (Some(r), true) = (self.role_ix(&l.role), out.renewed.contains(&l.role))
                    {
                        self.checker.lease_covers.granted(
                            r,
                            l.term,
                            self.true_db(out.db_now) + lease,
                        );
                    }
                }
                if out.renewed.len() < leases.len() {
                    self.count("renew_refused_taken_over");
                }
                Ok(CommandOutput::Renew(out))
            }
            Command::Validate { roles, .. } => Ok(CommandOutput::Validate(
                self.db.held(pid, &self.ns, &roles)?,
            )),
            Command::Ping { .. } => {
                self.db.ping(pid)?;
                Ok(CommandOutput::Ping)
            }
            Command::Preempt {
                lease: row, grace, ..
            } => {
                let key = (row.namespace.clone(), row.role.clone());
                let holder = self.db.lock_holder(&key).map(|(p, _)| p);
                if holder.is_some() && holder != row.session {
                    // The lock holder is not the session the row names: it
                    // took the lock but never claimed. Preemption cannot
                    // reach it.
                    self.count("preempt_lock_holder_not_in_row");
                }
                let out = self.db.preempt(pid, &row, grace)?;
                self.log(n, "db:preempt", self.role_ix(&row.role), 0, 0);
                Ok(CommandOutput::Preempt(out))
            }
            Command::Release { role, term, .. } => {
                if let Some(term) = term
                    && self
                        .db
                        .expire(pid, &self.ns, &role, &self.nodes[n].id, term)?
                {
                    let db_now = self.true_db(self.db.now());
                    if let Some(r) = self.role_ix(&role) {
                        self.checker.lease_covers.expired(r, term, db_now);
                        self.released[r] = Some((self.now, n));
                    }
                }
                self.db.unlock(pid, &self.ns, &role)?;
                self.log(n, "db:released", self.role_ix(&role), pid as u64, 0);
                // One statement: the notification goes out at its commit,
                // once the lock is free.
                if self.db.holds(pid, &self.ns, &role) {
                    Ok(CommandOutput::Released)
                } else {
                    self.publish(n, pid, &role);
                    Ok(CommandOutput::ReleasedAndNotified)
                }
            }
            Command::Notify { role, .. } => {
                self.db.ping(pid)?;
                self.publish(n, pid, &role);
                Ok(CommandOutput::Notified)
            }
            Command::ResetSession { .. } => Ok(CommandOutput::Reset),
        }
    }

    /// A reading of the (possibly stepped) server clock, in true database
    /// time: `lease_covers` measures each lease as the database granted
    /// it, `L` of real time from the statement, so that a clock step shows
    /// where it does harm — as an overlap of two leaders (`one_leader`) —
    /// instead of at every believer whose lease the step shortened.
    pub(super) fn true_db(&self, t: regent_core::DbTimestamp) -> regent_core::DbTimestamp {
        regent_core::DbTimestamp::from_micros(t.as_micros() - self.db.clock_offset_micros())
    }

    /// `NOTIFY`: checks the publisher no longer holds the lock, then sends
    /// the message to every listening node.
    fn publish(&mut self, n: usize, pid: i64, role: &Role) {
        let Some(r) = self.role_ix(role) else { return };
        let still_locked = self.db.holds(pid, &self.ns, role);
        let now = self.now;
        self.checker.on_publish(now, n, r, still_locked);
        self.log(n, "db:notify", Some(r), u64::from(still_locked), 0);
        for m in 0..self.nodes.len() {
            let node = &self.nodes[m];
            if !node.up() || !node.listener_up || node.cut_from_db() {
                continue;
            }
            let inc = node.inc;
            if !self.healed && self.rng.chance(self.knobs.notify_loss) {
                self.count("notification_lost");
                continue;
            }
            let d = self.delay();
            self.after(
                d,
                Ev::Notification {
                    node: m,
                    inc,
                    role: r,
                },
            );
        }
    }

    /// Sends the reply of a statement that ends `after` from now.
    pub(super) fn send_reply(
        &mut self,
        c: usize,
        id: CommandId,
        result: CommandResult,
        after: std::time::Duration,
    ) {
        let (n, inc) = (self.conns[c].node, self.conns[c].inc);
        if self.nodes[n].inc != inc {
            return;
        }
        if self.nodes[n].cut_from_db() {
            self.count("message_lost_partition");
            return;
        }
        if self.lost_on(n) {
            self.count("message_lost");
            return;
        }
        if !self.healed && self.rng.chance(self.knobs.reply_loss) {
            self.log(n, "lost:reply_after_apply", None, id.0, 0);
            self.count("reply_lost_after_apply");
            self.fault_hits(Some(n), None);
            return;
        }
        let d = self.delay_on(n);
        let mut at = self.now + after + d;
        if !self.knobs.reorder {
            at = at.max(self.conns[c].reply_fifo);
            self.conns[c].reply_fifo = at;
        }
        self.schedule(
            at,
            Ev::ToNode {
                node: n,
                inc,
                conn: c,
                id,
                result,
            },
        );
    }

    pub(super) fn fenced_at_db(&mut self, n: usize, r: usize, token: Term) {
        match self
            .db
            .fenced_write(&self.ns, &self.roles[r], &self.nodes[n].id, token)
        {
            Ok(FencedOutcome::Accepted) => {
                self.log(n, "db:fenced_accepted", Some(r), token.0, 0);
                self.count("fenced_write_accepted");
                let now = self.now;
                self.checker.on_fenced_accept(now, n, r, token);
            }
            Ok(FencedOutcome::Rejected { row_term }) => {
                self.log(
                    n,
                    "db:fenced_rejected",
                    Some(r),
                    token.0,
                    row_term.map_or(0, |t| t.0),
                );
                self.count("deposed_fenced_write_rejected");
            }
            Err(_) => self.count("fenced_write_db_down"),
        }
    }

    /// Sessions the server ended since the last step: a driver that can see
    /// connections close is told.
    pub(super) fn sessions_ended(&mut self) {
        for (pid, why) in self.db.take_ended() {
            let Some(&c) = self.by_pid.get(&pid) else {
                continue;
            };
            let n = self.conns[c].node;
            let label = match why {
                SessionEnd::ClientClosed => "db:session_closed",
                SessionEnd::KeepaliveTimeout => "db:session_keepalive_drop",
                SessionEnd::OperatorTerminated => "db:session_terminated",
                SessionEnd::Preempted => "db:session_preempted",
                SessionEnd::ServerRestart => "db:session_restart",
            };
            self.log(n, label, None, pid as u64, c as u64);
            if matches!(why, SessionEnd::OperatorTerminated | SessionEnd::Preempted)
                && self.nodes[n].inc == self.conns[c].inc
            {
                let now = self.now;
                for r in 0..self.roles.len() {
                    if self.leaders[r].contains(&n) {
                        self.nodes[n].terminated_while_leading[r] = Some(now);
                    }
                }
            }
            match why {
                SessionEnd::Preempted if self.conns[c].zombie => {
                    self.count("zombie_preempted_at_db")
                }
                SessionEnd::Preempted => self.count("live_session_preempted"),
                SessionEnd::OperatorTerminated => self.count("operator_terminated_session"),
                _ => {}
            }
            let (inc, gone) = (self.conns[c].inc, self.conns[c].client_gone);
            if !self.knobs.sees_session_close || gone || self.nodes[n].inc != inc {
                continue;
            }
            if self.nodes[n].cut_from_db() {
                continue;
            }
            let d = self.delay();
            self.after(
                d,
                Ev::SessionClosed {
                    node: n,
                    inc,
                    conn: c,
                },
            );
        }
    }

    /// A server-side drop of connection `c` (FIN or keepalive timeout).
    pub(super) fn server_drop(&mut self, c: usize) {
        if self.conns[c].zombie {
            return;
        }
        if let Some(pid) = self.conns[c].pid {
            self.db.end_session(pid, SessionEnd::KeepaliveTimeout);
        }
    }
}
