//! A simulated PostgreSQL: the server clock, sessions with backend pids,
//! session-bound re-entrant advisory locks, the lease table, a fenced
//! resource, `pg_terminate_backend`, and restarts.
//!
//! It is a plain value with synchronous methods, usable on its own (for
//! example by a future `SimBackend`): set the clock with [`SimDb::set_now`],
//! then call statements on a session pid from [`SimDb::connect`]. Statements
//! on a session that is gone fail with [`BackendError::SessionLost`], just as
//! a real backend reports them; while the server is down every statement
//! fails.

mod fenced;
mod history;
mod lease;
mod rowlock;

use std::collections::BTreeMap;
use std::time::Duration;

use regent_core::{
    BackendError, DbTimestamp, LeaseRecord, LockAttempt, Namespace, PreemptOutcome, Role,
    TryLockOutcome,
};

pub use fenced::{FencedOutcome, FencedResource};
pub use rowlock::{RowLockMode, TxId};

/// A backend process id, as `pg_backend_pid()` returns it.
pub type Pid = i64;

/// The key of an advisory lock and of a lease row.
pub type LockKey = (Namespace, Role);

/// A map keyed by `(namespace, role)`, nested so that lookups borrow the
/// names instead of cloning them into a key (the simulator looks up locks
/// and rows several times per step). Iterates in `(namespace, role)` order,
/// like a map keyed by [`LockKey`].
#[derive(Debug, Clone)]
pub(crate) struct Keyed<V>(BTreeMap<Namespace, BTreeMap<Role, V>>);

impl<V> Default for Keyed<V> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

impl<V> Keyed<V> {
    pub(crate) fn get(&self, namespace: &Namespace, role: &Role) -> Option<&V> {
        self.0.get(namespace).and_then(|m| m.get(role))
    }

    pub(crate) fn get_mut(&mut self, namespace: &Namespace, role: &Role) -> Option<&mut V> {
        self.0.get_mut(namespace).and_then(|m| m.get_mut(role))
    }

    pub(crate) fn insert(&mut self, namespace: &Namespace, role: &Role, v: V) {
        if let Some(slot) = self.get_mut(namespace, role) {
            *slot = v;
        } else {
            self.0
                .entry(namespace.clone())
                .or_default()
                .insert(role.clone(), v);
        }
    }

    pub(crate) fn remove(&mut self, namespace: &Namespace, role: &Role) -> Option<V> {
        self.0.get_mut(namespace).and_then(|m| m.remove(role))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.0.values().flat_map(BTreeMap::values)
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        for m in self.0.values_mut() {
            m.retain(|_, v| keep(v));
        }
    }
}

/// What the server says to `pg_terminate_backend` when preempting zombies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TerminatePrivilege {
    /// The role has `pg_signal_backend`: zombies are terminated.
    Permitted,
    /// The role lacks it: preemption answers `NotPermitted`.
    Denied,
}

/// One server-side session (a backend process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The backend pid.
    pub pid: Pid,
    /// A label of the client that opened it (the node), for logs.
    pub client: String,
    /// When it was opened.
    pub opened_at: DbTimestamp,
}

/// Why a session ended, for logs and coverage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionEnd {
    /// The client closed it (or its socket closed).
    ClientClosed,
    /// TCP keepalives found the client gone.
    KeepaliveTimeout,
    /// `pg_terminate_backend` from an operator.
    OperatorTerminated,
    /// `pg_terminate_backend` from zombie preemption.
    Preempted,
    /// The server restarted.
    ServerRestart,
}

/// The simulated server. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct SimDb {
    /// `now()`: `base` plus the clock offset.
    now: DbTimestamp,
    /// True database time (what [`SimDb::set_now`] was given).
    base: DbTimestamp,
    /// How far the server clock has been stepped from true time.
    offset_micros: i64,
    up: bool,
    next_pid: Pid,
    privilege: TerminatePrivilege,
    sessions: BTreeMap<Pid, Session>,
    /// Lock → (holding pid, re-entrancy count).
    locks: Keyed<(Pid, u32)>,
    rows: Keyed<LeaseRecord>,
    fenced: Keyed<FencedResource>,
    /// Row locks of open transactions, per lease row.
    row_locks: Keyed<Vec<(TxId, RowLockMode)>>,
    /// Undo records of recent row changes, kept only when a failover may
    /// lose the last commits (see [`SimDb::keep_history`]).
    history: Option<history::History>,
    /// Sessions that ended since the last [`SimDb::take_ended`].
    ended: Vec<(Pid, SessionEnd)>,
}

fn lost(pid: Pid) -> BackendError {
    BackendError::SessionLost {
        reason: format!("backend {pid} is gone (connection closed)"),
    }
}

impl SimDb {
    /// A server that is up, with no sessions and an empty lease table.
    pub fn new(now: DbTimestamp, privilege: TerminatePrivilege) -> Self {
        Self {
            now,
            base: now,
            offset_micros: 0,
            row_locks: Keyed::default(),
            history: None,
            up: true,
            next_pid: 1000,
            privilege,
            sessions: BTreeMap::new(),
            locks: Keyed::default(),
            rows: Keyed::default(),
            fenced: Keyed::default(),
            ended: Vec::new(),
        }
    }

    /// Moves true database time to `now` (never backwards); the server
    /// clock (`now()`) reads it plus the offset of any clock steps.
    pub fn set_now(&mut self, now: DbTimestamp) {
        if now > self.base {
            self.base = now;
            self.now = DbTimestamp::from_micros(self.base.as_micros() + self.offset_micros);
        }
    }

    /// Steps the server clock by `micros` (positive: forward), as an NTP
    /// step or an operator would; `now()` may go backwards.
    pub fn step_clock(&mut self, micros: i64) {
        self.offset_micros = self.offset_micros.saturating_add(micros);
        self.now = DbTimestamp::from_micros(self.base.as_micros() + self.offset_micros);
    }

    /// How far the server clock is from true time, in microseconds.
    pub fn clock_offset_micros(&self) -> i64 {
        self.offset_micros
    }

    /// The server clock.
    pub fn now(&self) -> DbTimestamp {
        self.now
    }

    /// Whether the server accepts connections and statements.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Whether `pg_terminate_backend` is permitted for preemption.
    pub fn privilege(&self) -> TerminatePrivilege {
        self.privilege
    }

    /// Sets whether preemption is permitted.
    pub fn set_privilege(&mut self, privilege: TerminatePrivilege) {
        self.privilege = privilege;
    }

    /// The server goes down: every session and every advisory lock is gone;
    /// lease rows stay.
    pub fn stop(&mut self) {
        self.up = false;
        // Open transactions are aborted: their row locks vanish.
        self.row_locks = Keyed::default();
        let pids: Vec<Pid> = self.sessions.keys().copied().collect();
        for pid in pids {
            self.end_session(pid, SessionEnd::ServerRestart);
        }
    }

    /// The server is back up.
    pub fn start(&mut self) {
        self.up = true;
    }

    /// Opens a session for `client`.
    ///
    /// # Errors
    /// [`BackendError::Transient`] while the server is down.
    pub fn connect(&mut self, client: &str) -> Result<Pid, BackendError> {
        if !self.up {
            return Err(BackendError::Transient(
                "connection refused: the database system is starting up".to_owned(),
            ));
        }
        self.next_pid += 1;
        let pid = self.next_pid;
        self.sessions.insert(
            pid,
            Session {
                pid,
                client: client.to_owned(),
                opened_at: self.now,
            },
        );
        Ok(pid)
    }

    /// Whether session `pid` is alive.
    pub fn is_alive(&self, pid: Pid) -> bool {
        self.sessions.contains_key(&pid)
    }

    /// Every live session, by pid.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// Ends session `pid` (client close, keepalive, termination); its locks
    /// are released. Returns whether it was alive.
    pub fn end_session(&mut self, pid: Pid, why: SessionEnd) -> bool {
        if self.sessions.remove(&pid).is_none() {
            return false;
        }
        self.locks.retain(|(holder, _)| *holder != pid);
        self.ended.push((pid, why));
        true
    }

    /// Sessions that ended since the last call, with the reason.
    pub fn take_ended(&mut self) -> Vec<(Pid, SessionEnd)> {
        std::mem::take(&mut self.ended)
    }

    fn session(&self, pid: Pid) -> Result<(), BackendError> {
        if !self.up || !self.sessions.contains_key(&pid) {
            return Err(lost(pid));
        }
        Ok(())
    }

    /// The pid holding `key`'s advisory lock and its re-entrancy count.
    pub fn lock_holder(&self, key: &LockKey) -> Option<(Pid, u32)> {
        self.locks.get(&key.0, &key.1).copied()
    }

    /// Whether session `pid` holds the lock of `(namespace, role)`.
    pub fn holds(&self, pid: Pid, namespace: &Namespace, role: &Role) -> bool {
        self.locks
            .get(namespace, role)
            .is_some_and(|(p, _)| *p == pid)
    }

    /// `pg_try_advisory_lock` for each role, plus a read of each role's row,
    /// in one round trip. Re-entrant like PostgreSQL: a session that already
    /// holds a lock gets it again and must unlock it twice.
    ///
    /// # Errors
    /// [`BackendError::SessionLost`] if the session is gone.
    pub fn try_lock(
        &mut self,
        pid: Pid,
        namespace: &Namespace,
        roles: &[Role],
    ) -> Result<TryLockOutcome, BackendError> {
        self.session(pid)?;
        let mut attempts = Vec::with_capacity(roles.len());
        for role in roles {
            let granted = match self.locks.get_mut(namespace, role) {
                None => {
                    self.locks.insert(namespace, role, (pid, 1));
                    true
                }
                Some((holder, count)) if *holder == pid => {
                    *count += 1;
                    true
                }
                Some(_) => false,
            };
            attempts.push(LockAttempt {
                role: role.clone(),
                granted,
                lease: self.rows.get(namespace, role).cloned(),
            });
        }
        Ok(TryLockOutcome {
            db_now: self.now,
            attempts,
        })
    }

    /// `pg_advisory_unlock`: releases one level of the lock if `pid` holds
    /// it; returns whether it did.
    ///
    /// # Errors
    /// [`BackendError::SessionLost`] if the session is gone.
    pub fn unlock(
        &mut self,
        pid: Pid,
        namespace: &Namespace,
        role: &Role,
    ) -> Result<bool, BackendError> {
        self.session(pid)?;
        match self.locks.get_mut(namespace, role) {
            Some((holder, count)) if *holder == pid => {
                *count -= 1;
                if *count == 0 {
                    self.locks.remove(namespace, role);
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Which of `roles` session `pid` holds (the `pg_locks` query).
    ///
    /// # Errors
    /// [`BackendError::SessionLost`] if the session is gone.
    pub fn held(
        &self,
        pid: Pid,
        namespace: &Namespace,
        roles: &[Role],
    ) -> Result<Vec<Role>, BackendError> {
        self.session(pid)?;
        Ok(roles
            .iter()
            .filter(|r| self.holds(pid, namespace, r))
            .cloned()
            .collect())
    }

    /// `SELECT 1` on the session.
    ///
    /// # Errors
    /// [`BackendError::SessionLost`] if the session is gone.
    pub fn ping(&self, pid: Pid) -> Result<(), BackendError> {
        self.session(pid)
    }

    /// Zombie preemption, run on session `pid`, as the shared SQL does it:
    /// terminates backend `lease.session`, but only if the row still names
    /// `lease.holder`, `lease.term` and that pid, that lease ended more than
    /// `grace` ago on the server clock, and that pid still holds the role's
    /// advisory lock (so a reused pid is never hit).
    ///
    /// A session that took the lock but never committed its claim is not in
    /// the row, so it cannot be preempted this way.
    ///
    /// # Errors
    /// [`BackendError::SessionLost`] if the calling session is gone.
    pub fn preempt(
        &mut self,
        pid: Pid,
        lease: &LeaseRecord,
        grace: Duration,
    ) -> Result<PreemptOutcome, BackendError> {
        self.session(pid)?;
        let (namespace, role) = (&lease.namespace, &lease.role);
        let Some(target) = lease.session else {
            return Ok(PreemptOutcome::NotZombie);
        };
        let row_matches = self.rows.get(namespace, role).is_some_and(|row| {
            row.holder == lease.holder
                && row.term == lease.term
                && row.session == Some(target)
                && self.now > row.lease_until + grace
        });
        let holds = self
            .locks
            .get(namespace, role)
            .is_some_and(|(p, _)| *p == target);
        if !row_matches || !holds {
            return Ok(PreemptOutcome::NotZombie);
        }
        if self.privilege == TerminatePrivilege::Denied {
            return Ok(PreemptOutcome::NotPermitted);
        }
        self.end_session(target, SessionEnd::Preempted);
        Ok(PreemptOutcome::Terminated)
    }

    /// The fenced resource of `(namespace, role)`, if anything was written.
    pub fn fenced(&self, key: &LockKey) -> Option<&FencedResource> {
        self.fenced.get(&key.0, &key.1)
    }

    /// The lease row of `(namespace, role)`.
    pub fn row(&self, key: &LockKey) -> Option<&LeaseRecord> {
        self.rows.get(&key.0, &key.1)
    }
}

#[cfg(test)]
mod tests;
