//! The modelled database (advisory locks bound to sessions, lease rows
//! with growing terms), how commands run in it and fail, how replies
//! reach the nodes, and the external holder.

use std::collections::BTreeMap;

use super::world::World;
use crate::backend::{
    BackendError, ClaimOutcome, LockAttempt, PreemptOutcome, RenewOutcome, TryLockOutcome,
};
use crate::machine::{Command, CommandOutput, CommandResult};
use crate::types::{DbTimestamp, LeaseRecord, Namespace, Role, Term};

/// The database time, in µs, at which the model starts.
pub(super) const EPOCH_US: i64 = 1_700_000_000_000_000;
/// The external holder's node id.
const EXT: &str = "node-ext";
/// The external holder's session.
const EXT_SESSION: u64 = 0;

/// A lease row.
#[derive(Debug, Clone)]
pub(super) struct Row {
    /// The holder's node id.
    holder: String,
    /// The term; only grows.
    term: u64,
    /// The holder's session.
    session: u64,
    /// When the term was claimed, in µs.
    acquired: i64,
    /// When it was last renewed, in µs.
    renewed: i64,
    /// When the lease ends, in µs.
    until: i64,
}

/// The modelled database.
#[derive(Debug)]
pub(super) struct Db {
    /// Nanoseconds since the model started.
    pub(super) now_ns: f64,
    /// The session holding each advisory lock.
    pub(super) locks: BTreeMap<Role, u64>,
    /// The lease row of each role.
    pub(super) rows: BTreeMap<Role, Row>,
    /// When the lease of (node, role, term) ends in database µs, as the
    /// database has it now.
    pub(super) lease_end: BTreeMap<(usize, Role, u64), i64>,
    /// Whether preemption (terminating a backend) is allowed.
    pub(super) preempt_permitted: bool,
    /// The last session id handed out.
    pub(super) next_session: u64,
}

impl Db {
    /// The database clock, in µs.
    pub(super) fn now_us(&self) -> i64 {
        EPOCH_US + (self.now_ns / 1000.0) as i64
    }

    /// The database clock as a timestamp.
    fn ts(&self) -> DbTimestamp {
        DbTimestamp::from_micros(self.now_us())
    }

    /// The row of `role` as a backend returns it.
    fn record(&self, role: &Role, row: &Row) -> LeaseRecord {
        LeaseRecord {
            namespace: Namespace::default(),
            role: role.clone(),
            holder: row.holder.clone(),
            term: Term(row.term),
            session: Some(row.session as i64),
            acquired_at: DbTimestamp::from_micros(row.acquired),
            renewed_at: DbTimestamp::from_micros(row.renewed),
            lease_until: DbTimestamp::from_micros(row.until),
        }
    }

    /// Drops every lock of `session`.
    fn free_session(&mut self, session: u64) {
        self.locks.retain(|_, s| *s != session);
    }
}

/// How a command fares in the database.
#[derive(Debug, Clone, Copy)]
pub(super) enum Fault {
    /// It runs and answers.
    None,
    /// It fails transiently without running.
    Transient,
    /// It times out without running.
    Timeout,
    /// It fails as misconfigured without running.
    Misconfigured,
    /// The session is lost; it does not run.
    SessionLost,
    /// It runs; the reply is lost.
    LoseReply,
    /// It runs; the caller sees a timeout.
    RunThenTimeout,
}

/// A fault drawn from `x`; most commands run.
pub(super) fn fault(x: u16) -> Fault {
    match x % 100 {
        0..=54 => Fault::None,
        55..=61 => Fault::Transient,
        62..=67 => Fault::Timeout,
        68..=70 => Fault::Misconfigured,
        71..=76 => Fault::SessionLost,
        77..=88 => Fault::LoseReply,
        _ => Fault::RunThenTimeout,
    }
}

impl World {
    // ----- the database side -------------------------------------------

    /// Node `j`'s backend reconnects: its old session and locks go.
    pub(super) fn new_session(&mut self, j: usize) {
        let old = self.nodes[j].session;
        self.db.free_session(old);
        self.db.next_session += 1;
        self.nodes[j].session = self.db.next_session;
        self.nodes[j].session_dead = false;
    }

    /// An operator terminates node `j`'s session; the node has not
    /// noticed yet.
    pub(super) fn kill_session(&mut self, j: usize) {
        let s = self.nodes[j].session;
        self.db.free_session(s);
        self.nodes[j].session_dead = true;
    }

    /// Runs `cmd` of node `j` in the database now.
    fn exec(&mut self, j: usize, cmd: &Command) -> CommandResult {
        if self.nodes[j].session_dead && !matches!(cmd, Command::Notify { .. }) {
            // The backend notices, reports it, and reconnects next time.
            self.new_session(j);
            return Err(BackendError::SessionLost {
                reason: "terminated".to_owned(),
            });
        }
        let now = self.db.now_us();
        let session = self.nodes[j].session;
        let name = self.nodes[j].name.clone();
        match cmd {
            Command::TryLock { roles, .. } => {
                let mut attempts = Vec::new();
                for role in roles {
                    let granted = match self.db.locks.get(role) {
                        None => {
                            self.db.locks.insert(role.clone(), session);
                            true
                        }
                        Some(s) if *s == session => self.fail(format!(
                            "node-{j} tries the lock of {role} that its session holds"
                        )),
                        Some(_) => false,
                    };
                    let lease = self.db.rows.get(role).map(|r| self.db.record(role, r));
                    attempts.push(LockAttempt {
                        role: role.clone(),
                        granted,
                        lease,
                    });
                }
                Ok(CommandOutput::TryLock(TryLockOutcome {
                    db_now: self.db.ts(),
                    attempts,
                }))
            }
            Command::Claim { role, .. } => {
                // Like the SQL upsert: it does not look at the lock.
                let prev = self.db.rows.get(role).cloned();
                let term = prev.as_ref().map_or(0, |r| r.term) + 1;
                let until = now + self.lease_us;
                self.db.rows.insert(
                    role.clone(),
                    Row {
                        holder: name,
                        term,
                        session,
                        acquired: now,
                        renewed: now,
                        until,
                    },
                );
                self.db.lease_end.insert((j, role.clone(), term), until);
                self.nodes[j]
                    .claim_prev
                    .insert((role.clone(), Term(term)), prev.as_ref().map(|r| r.until));
                Ok(CommandOutput::Claim(ClaimOutcome {
                    term: Term(term),
                    previous: prev.map(|r| self.db.record(role, &r)),
                    db_now: self.db.ts(),
                }))
            }
            Command::Renew { leases, .. } => {
                let mut renewed = Vec::new();
                for l in leases {
                    if let Some(row) = self.db.rows.get_mut(&l.role)
                        && row.holder == name
                        && row.term == l.term.0
                    {
                        row.until = now + self.lease_us;
                        row.renewed = now;
                        self.db
                            .lease_end
                            .insert((j, l.role.clone(), l.term.0), row.until);
                        renewed.push(l.role.clone());
                    }
                }
                Ok(CommandOutput::Renew(RenewOutcome {
                    db_now: self.db.ts(),
                    renewed,
                }))
            }
            Command::Validate { roles, .. } => Ok(CommandOutput::Validate(
                roles
                    .iter()
                    .filter(|r| self.db.locks.get(*r) == Some(&session))
                    .cloned()
                    .collect(),
            )),
            Command::Ping { .. } => Ok(CommandOutput::Ping),
            Command::Preempt { lease, grace, .. } => {
                let role = &lease.role;
                let zombie = match (self.db.locks.get(role), self.db.rows.get(role)) {
                    (Some(&s), Some(row))
                        if row.holder == lease.holder
                            && row.term == lease.term.0
                            && now > row.until + grace.as_micros() as i64 =>
                    {
                        Some(s)
                    }
                    _ => None,
                };
                match zombie {
                    Some(_) if !self.db.preempt_permitted => {
                        Ok(CommandOutput::Preempt(PreemptOutcome::NotPermitted))
                    }
                    Some(s) => {
                        self.db.free_session(s);
                        if let Some(k) = self.nodes.iter().position(|n| n.session == s) {
                            self.nodes[k].session_dead = true;
                        }
                        Ok(CommandOutput::Preempt(PreemptOutcome::Terminated))
                    }
                    None => Ok(CommandOutput::Preempt(PreemptOutcome::NotZombie)),
                }
            }
            Command::Release { role, term, .. } => {
                if let Some(term) = term
                    && let Some(row) = self.db.rows.get_mut(role)
                    && row.holder == name
                    && row.term == term.0
                {
                    row.until = row.until.min(now);
                    self.db
                        .lease_end
                        .insert((j, role.clone(), term.0), row.until);
                }
                if self.db.locks.get(role) == Some(&session) {
                    self.db.locks.remove(role);
                }
                Ok(CommandOutput::Released)
            }
            Command::Notify { role, .. } => {
                for k in 0..self.nodes.len() {
                    if k != j && self.nodes[k].paused_until.is_none() {
                        let local = self.nodes[k].local;
                        self.nodes[k].m.handle_release_notified(local, role);
                        self.settle(k);
                    }
                }
                Ok(CommandOutput::Notified)
            }
            Command::ResetSession { .. } => {
                self.new_session(j);
                Ok(CommandOutput::Reset)
            }
        }
    }

    /// Node `j`'s `idx`-th pending command reaches the database.
    pub(super) fn execute(&mut self, j: usize, idx: usize, f: Fault) {
        let n = &mut self.nodes[j];
        if n.pending.is_empty() {
            return;
        }
        let sent = n.pending.remove(idx % n.pending.len());
        // A silent node's commands are lost; a driver drops calls that ran
        // past the attempt timeout.
        if n.silent_until.is_some() || n.local >= sent.at + self.cfg.attempt_timeout() {
            self.note(format!("db drops {:?} of node-{j}", sent.cmd));
            return;
        }
        let err = |e: BackendError| Some(Err(e));
        let timeout = BackendError::Timeout(self.cfg.attempt_timeout());
        let reply = match f {
            Fault::None => Some(self.exec(j, &sent.cmd)),
            Fault::Transient => err(BackendError::Transient("reset by peer".to_owned())),
            Fault::Timeout => err(timeout),
            Fault::Misconfigured => err(BackendError::Misconfigured("no table".to_owned())),
            Fault::SessionLost => {
                self.new_session(j);
                err(BackendError::SessionLost {
                    reason: "statement failed".to_owned(),
                })
            }
            Fault::LoseReply => {
                let _ = self.exec(j, &sent.cmd);
                None
            }
            Fault::RunThenTimeout => {
                let _ = self.exec(j, &sent.cmd);
                err(timeout)
            }
        };
        self.note(format!(
            "db runs {:?} of node-{j} ({f:?}) -> {reply:?}",
            sent.cmd
        ));
        if let Some(reply) = reply {
            self.nodes[j].replies.push((sent, reply));
        }
    }

    /// Node `j` receives its `idx`-th reply.
    pub(super) fn deliver(&mut self, j: usize, idx: usize) -> bool {
        let n = &mut self.nodes[j];
        if n.replies.is_empty() || n.paused_until.is_some() || n.silent_until.is_some() {
            return false;
        }
        let (sent, result) = n.replies.remove(idx % n.replies.len());
        let window = self.window;
        match (&sent.cmd, &result) {
            (Command::Claim { role, .. }, Ok(CommandOutput::Claim(out))) => {
                let e = n
                    .model_deadline
                    .entry((role.clone(), out.term))
                    .or_insert(sent.at + window);
                *e = (*e).max(sent.at + window);
            }
            (Command::Renew { leases, .. }, Ok(CommandOutput::Renew(out))) => {
                for l in leases.iter().filter(|l| out.renewed.contains(&l.role)) {
                    let e = n
                        .model_deadline
                        .entry((l.role.clone(), l.term))
                        .or_insert(sent.at + window);
                    *e = (*e).max(sent.at + window);
                }
            }
            _ => {}
        }
        let local = n.local;
        self.note(format!(
            "node-{j} @{local} gets {} -> {result:?}",
            sent.cmd.id()
        ));
        self.nodes[j].m.handle_result(local, sent.cmd.id(), result);
        self.settle(j);
        true
    }

    // ----- the external holder ------------------------------------------

    /// The external holder takes the lock of `role`, if free.
    pub(super) fn ext_lock(&mut self, role: &Role) {
        if !self.db.locks.contains_key(role) {
            self.note(format!("ext locks {role}"));
            self.db.locks.insert(role.clone(), EXT_SESSION);
        }
    }

    /// The external node claims only once the previous lease has passed.
    pub(super) fn ext_claim(&mut self, role: &Role, lease_us: i64) {
        let now = self.db.now_us();
        if self.db.locks.get(role) != Some(&EXT_SESSION) {
            return;
        }
        let prev = self.db.rows.get(role);
        if prev.is_some_and(|r| r.until > now) {
            return;
        }
        let term = prev.map_or(0, |r| r.term) + 1;
        self.note(format!("ext claims {role} term {term}"));
        self.db.rows.insert(
            role.clone(),
            Row {
                holder: EXT.to_owned(),
                term,
                session: EXT_SESSION,
                acquired: now,
                renewed: now,
                until: now + lease_us,
            },
        );
    }

    /// The external holder renews its lease of `role`, if it holds it.
    pub(super) fn ext_renew(&mut self, role: &Role, lease_us: i64) {
        let now = self.db.now_us();
        if self.db.locks.get(role) != Some(&EXT_SESSION) {
            return;
        }
        if let Some(row) = self.db.rows.get_mut(role)
            && row.holder == EXT
        {
            row.until = row.until.max(now + lease_us);
            row.renewed = now;
        }
    }

    /// The external holder releases `role` and notifies every running node.
    pub(super) fn ext_release(&mut self, role: &Role) {
        let now = self.db.now_us();
        if self.db.locks.get(role) != Some(&EXT_SESSION) {
            return;
        }
        self.note(format!("ext releases {role}"));
        if let Some(row) = self.db.rows.get_mut(role)
            && row.holder == EXT
        {
            row.until = row.until.min(now);
        }
        self.db.locks.remove(role);
        for k in 0..self.nodes.len() {
            if self.nodes[k].paused_until.is_none() {
                let local = self.nodes[k].local;
                self.nodes[k].m.handle_release_notified(local, role);
                self.settle(k);
            }
        }
    }
}
