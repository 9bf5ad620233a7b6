//! The traits a backend implements: [`Lock`], [`Lease`] and [`Notify`].
//!
//! A backend is the only place that talks to the database. It carries out
//! the state machine's commands and nothing more: it never decides who
//! leads, never retries on its own, and never hides lock loss.
//!
//! # The session
//!
//! Locks are bound to a *session* — one dedicated database connection per
//! node, shared by all of that node's roles. When the session dies the locks
//! are gone. A backend must report that as [`BackendError::SessionLost`]
//! (from whichever call notices it, and from [`Lock::session_closed`] if it
//! can see the connection close), never as a transient error. The next call
//! that needs a session opens a new one.
//!
//! # Errors
//!
//! Ordinary outcomes are values, not errors: losing the race for a lock is
//! `granted: false`, a renewal refused because someone else took over is a
//! role missing from [`RenewOutcome::renewed`]. `Err` means the call could
//! not be carried out; [`BackendError::is_retryable`] says whether trying
//! again later may help.

use std::time::Duration;

use async_trait::async_trait;
use thiserror::Error;

use crate::types::{DbTimestamp, LeaseRecord, Namespace, NodeId, Role, Term};

/// A backend call that could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BackendError {
    /// The session (and with it every lock it held) is gone: the connection
    /// closed, the server restarted, an operator terminated the backend, or
    /// a statement on the session failed. The engine steps down from every
    /// role held on it; the next call opens a new session.
    #[error("database session lost ({reason}); all locks held on it are gone")]
    SessionLost {
        /// What happened, for logs.
        reason: String,
    },
    /// The call failed but the session may be intact (a timeout, a
    /// connection error on a pooled connection). Retry later.
    #[error("transient backend error: {0}")]
    Transient(String),
    /// The engine could not do it now without waiting on someone else's
    /// work (for example, a claim found the lease row held by an in-flight
    /// fenced transaction). Nothing changed; retry later. An engine returns
    /// this instead of waiting, so one role's contention never delays the
    /// node's calls for its other roles.
    #[error("busy: {0}")]
    Busy(String),
    /// The call took longer than its per-attempt timeout and was abandoned.
    #[error("backend call timed out after {0:?}")]
    Timeout(Duration),
    /// The backend is set up in a way that can never work (a connection
    /// that cannot carry session state, a missing table, no permission).
    /// The message says what to fix. Retrying will not help.
    #[error("{0}")]
    Misconfigured(String),
}

impl BackendError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, BackendError::Misconfigured(_))
    }

    /// Whether the session's locks are gone.
    pub fn is_session_lost(&self) -> bool {
        matches!(self, BackendError::SessionLost { .. })
    }
}

/// The result of one role in a [`Lock::try_lock`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockAttempt {
    /// The role tried.
    pub role: Role,
    /// Whether this session now holds the role's lock.
    pub granted: bool,
    /// The role's lease row as read in the same call, if there is one.
    pub lease: Option<LeaseRecord>,
}

/// The result of a whole [`Lock::try_lock`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TryLockOutcome {
    /// The database clock when the call ran.
    pub db_now: DbTimestamp,
    /// One entry per requested role, in any order.
    pub attempts: Vec<LockAttempt>,
}

/// What [`Depose::depose`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreemptOutcome {
    /// The holder's session was terminated; its lock is free (or about to be).
    Terminated,
    /// The holder was no longer the zombie described (it renewed, released,
    /// or its session already ended): nothing was done.
    NotZombie,
    /// The engine refused: this node lacks the privilege to depose another
    /// holder; the backend's docs name the grant.
    NotPermitted,
}

/// The result of [`Lease::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimOutcome {
    /// The new term (the previous term + 1, or 1 for a new row).
    pub term: Term,
    /// The row as it was before the claim, if there was one. Its
    /// `lease_until` is what a `WaitForLease` holder must wait out.
    pub previous: Option<LeaseRecord>,
    /// The database clock when the claim ran.
    pub db_now: DbTimestamp,
}

/// The result of [`Lease::renew`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewOutcome {
    /// The database clock when the renewal ran.
    pub db_now: DbTimestamp,
    /// The roles whose rows still named this node and term and were
    /// extended. A requested role missing here has been taken over.
    pub renewed: Vec<Role>,
}

/// A role this node wants renewed, with the term it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    /// The role.
    pub role: Role,
    /// The term this node claimed.
    pub term: Term,
}

/// Mutual exclusion bound to the node's session.
///
/// Contract, checked by the conformance suite:
/// - `try_lock` never blocks waiting for a lock, and never takes a lock the
///   session already holds (locks may be re-entrant in the database; one
///   unlock would then leave it held).
/// - A lock is held until `unlock` or until the session ends, nothing else.
/// - Any failure of a statement on the session is reported as
///   [`BackendError::SessionLost`] after the backend has closed the session,
///   so no lock can outlive the error unnoticed or leak into a pool.
#[async_trait]
pub trait Lock: Send + Sync {
    /// Opens (or checks) the session. Called once when an elector starts, so
    /// a database that is down or a connection that cannot hold a session is an
    /// error at start, not a silent failure later.
    async fn connect(&self) -> Result<(), BackendError>;

    /// Tries, without waiting, to take the lock of each role, and reads each
    /// role's lease row in the same round trip.
    async fn try_lock(
        &self,
        namespace: &Namespace,
        roles: &[Role],
    ) -> Result<TryLockOutcome, BackendError>;

    /// Gives up the lock of `role` if this session holds it. Unlocking a
    /// role that is not held is not an error.
    async fn unlock(&self, namespace: &Namespace, role: &Role) -> Result<(), BackendError>;

    /// Which of `roles` this session still holds, checked against the
    /// database in one call (lock validation).
    async fn held(&self, namespace: &Namespace, roles: &[Role]) -> Result<Vec<Role>, BackendError>;

    /// A cheap round trip on the session, so a dead connection shows up.
    async fn ping(&self) -> Result<(), BackendError>;

    /// Closes the session, if one is open, so that every lock on it is gone
    /// for certain; the next call opens a new one. The machine asks for this
    /// when it can no longer tell which locks the session holds.
    async fn reset(&self);

    /// Completes when the backend sees the session close by itself (for
    /// example, the client library reports the connection ended). Backends that
    /// cannot see this keep the default, which never completes; lock loss is
    /// then found by the next validation. A backend must not complete this
    /// for a session that closed before it was called.
    async fn session_closed(&self) {
        std::future::pending::<()>().await;
    }
}

/// Optional capability: deposing a *zombie* holder — one whose lock
/// outlives its lease because its client is gone but its session is not
/// (a crashed host behind a pooler, a frozen process).
///
/// Contract: act only if `lease` still describes the current holder (same
/// holder, term and holder session) and its lease ended more than `grace`
/// ago in the engine's own time; afterwards that holder's claim on the lock
/// is gone (or about to be), and so is anything its in-flight fenced work
/// holds against a claim. An engine whose locks cannot outlive their lease
/// does not implement this (see [`Backend::deposer`]).
#[async_trait]
pub trait Depose: Send + Sync {
    /// Deposes the holder `lease` describes, if it still is that zombie.
    async fn depose(
        &self,
        lease: &LeaseRecord,
        grace: Duration,
    ) -> Result<PreemptOutcome, BackendError>;
}

/// The lease table: who holds each role, for which term, until when.
///
/// Contract: every time is the database's clock; `claim`, `renew` and
/// `expire` run on the lock session; `renew` and `expire` change a row only
/// if holder and term still match.
#[async_trait]
pub trait Lease: Send + Sync {
    /// Reads the rows of `roles` (missing rows are left out) and the
    /// database clock.
    async fn read(
        &self,
        namespace: &Namespace,
        roles: &[Role],
    ) -> Result<(DbTimestamp, Vec<LeaseRecord>), BackendError>;

    /// Makes `holder` the holder of `role` with term + 1 and a lease of
    /// `lease` from the database's now. The caller holds the role's lock.
    async fn claim(
        &self,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        lease: Duration,
    ) -> Result<ClaimOutcome, BackendError>;

    /// Extends, in one statement, the lease of every role in `held` whose
    /// row still names `holder` and the given term.
    async fn renew(
        &self,
        namespace: &Namespace,
        holder: &NodeId,
        held: &[HeldLease],
        lease: Duration,
    ) -> Result<RenewOutcome, BackendError>;

    /// Ends the lease of `role` now, if the row still names `holder` and
    /// `term`. Expiring a lease this node no longer holds is not an error.
    async fn expire(
        &self,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        term: Term,
    ) -> Result<(), BackendError>;

    /// Every row, of one namespace or of all, for status displays.
    async fn list(&self, namespace: Option<&Namespace>) -> Result<Vec<LeaseRecord>, BackendError>;
}

/// A message on a namespace's release channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyEvent {
    /// The named role's holder released it; its lock is free.
    Released(Role),
    /// The subscription reconnected or overflowed: messages may have been
    /// missed, so the engine should poll every role it waits for.
    MaybeMissed,
}

/// A live subscription to a namespace's release channel.
#[async_trait]
pub trait Subscription: Send {
    /// The next event. Reconnecting after a dropped connection is the
    /// subscription's job, and it must then yield [`NotifyEvent::MaybeMissed`].
    /// `Err` means the subscription cannot continue; the engine subscribes
    /// again after its retry interval.
    async fn recv(&mut self) -> Result<NotifyEvent, BackendError>;
}

/// Optional capability: release notifications, so standbys take over as
/// soon as a role is released instead of at their next retry (see
/// [`Backend::notifier`]).
///
/// Contract: a publish reaches subscribers only after the lock is free; a
/// subscriber that may have missed messages (including before its first
/// subscribe took effect) says [`NotifyEvent::MaybeMissed`] or is treated
/// as having done so by the driver.
#[async_trait]
pub trait Notify: Send + Sync {
    /// Tells every subscriber of `namespace` that `role` is free. Called only
    /// after the lock has been released.
    async fn publish_release(&self, namespace: &Namespace, role: &Role)
    -> Result<(), BackendError>;

    /// Subscribes to `namespace`'s release channel.
    async fn subscribe(&self, namespace: &Namespace)
    -> Result<Box<dyn Subscription>, BackendError>;
}

/// What [`Backend::release`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Released {
    /// Whether the release was also published to the namespace's
    /// subscribers (after the lock was free), so no
    /// [`Notify::publish_release`] is needed.
    pub notified: bool,
    /// Why ending the lease failed, if it did while the unlock went
    /// through: standbys then wait for the lease to run out by itself.
    pub expire_failed: Option<BackendError>,
}

impl Released {
    /// Released, with the notification sent or not.
    pub fn new(notified: bool) -> Self {
        Self {
            notified,
            expire_failed: None,
        }
    }
}

/// Everything the driver needs from a backend: [`Lock`] and [`Lease`],
/// [`Backend::release`] (which an engine may do in one step), and the
/// optional capabilities [`Notify`] and [`Depose`]. `impl Backend for
/// MyBackend {}` keeps every default: release as expire + unlock, no
/// notifications (standbys poll at their retry interval), no deposing.
#[async_trait]
pub trait Backend: Lock + Lease + 'static {
    /// Release notifications, if the engine has them.
    fn notifier(&self) -> Option<&dyn Notify> {
        None
    }

    /// Deposing zombie holders, if the engine can.
    fn deposer(&self) -> Option<&dyn Depose> {
        None
    }

    /// Gives up `role`: ends its lease now when `term` is given (only while
    /// the row still names `holder` at `term`), *then* unlocks — in this
    /// order, so a standby that takes the lock finds the lease ended and
    /// need not wait it out. An engine that can also publish the release
    /// after the lock is free, in the same step, does so and reports
    /// `notified: true`; the machine then sends no `Notify`.
    ///
    /// The default calls [`Lease::expire`] and [`Lock::unlock`]. A failed
    /// expiry other than a lost session does not stop the unlock (freeing
    /// the lock matters more; the lease runs out by itself) and is reported
    /// in [`Released::expire_failed`].
    async fn release(
        &self,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        term: Option<Term>,
    ) -> Result<Released, BackendError> {
        let mut expire_failed = None;
        if let Some(term) = term {
            match self.expire(namespace, role, holder, term).await {
                Ok(()) => {}
                Err(e @ BackendError::SessionLost { .. }) => return Err(e),
                Err(e) => expire_failed = Some(e),
            }
        }
        self.unlock(namespace, role).await?;
        Ok(Released {
            notified: false,
            expire_failed,
        })
    }
}
