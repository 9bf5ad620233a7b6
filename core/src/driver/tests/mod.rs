//! Driver tests: `mockall` mocks of the backend traits on tokio's paused
//! clock, so every timing assertion is exact and nothing flakes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mockall::mock;

use crate::backend::*;
use crate::driver::Elector;
use crate::types::{DbTimestamp, LeaseRecord, Namespace, NodeId, Role, Term};

mock! {
    /// The backend calls, mocked as plain methods; [`Harness`] adapts them
    /// to the async traits.
    pub Db {
        fn connect(&self) -> Result<(), BackendError>;
        fn try_lock(&self, namespace: &Namespace, roles: &[Role]) -> Result<TryLockOutcome, BackendError>;
        fn unlock(&self, namespace: &Namespace, role: &Role) -> Result<(), BackendError>;
        fn held(&self, namespace: &Namespace, roles: &[Role]) -> Result<Vec<Role>, BackendError>;
        fn ping(&self) -> Result<(), BackendError>;
        fn preempt(&self, lease: &LeaseRecord, grace: Duration) -> Result<PreemptOutcome, BackendError>;
        fn reset(&self);
        fn read(&self, namespace: &Namespace, roles: &[Role]) -> Result<(DbTimestamp, Vec<LeaseRecord>), BackendError>;
        fn claim(&self, namespace: &Namespace, role: &Role, holder: &NodeId, lease: Duration) -> Result<ClaimOutcome, BackendError>;
        fn renew(&self, namespace: &Namespace, holder: &NodeId, held: &[HeldLease], lease: Duration) -> Result<RenewOutcome, BackendError>;
        fn expire(&self, namespace: &Namespace, role: &Role, holder: &NodeId, term: Term) -> Result<(), BackendError>;
        fn list(&self, namespace: Option<Namespace>) -> Result<Vec<LeaseRecord>, BackendError>;
        fn publish_release(&self, namespace: &Namespace, role: &Role) -> Result<(), BackendError>;
        fn subscribe(&self, namespace: &Namespace) -> Result<Box<dyn Subscription>, BackendError>;
    }
}

/// Wraps the mock with what `mockall` cannot express: a renew that hangs,
/// a session that closes on demand, and a subscribe that completes only
/// when the test opens its gate.
pub(super) struct Harness {
    pub(super) db: MockDb,
    pub(super) hang_renew: AtomicBool,
    pub(super) closed: tokio::sync::Notify,
    pub(super) subscribe_gate: Option<tokio::sync::Notify>,
}

impl crate::Backend for Harness {
    fn notifier(&self) -> Option<&dyn Notify> {
        Some(self)
    }
    fn deposer(&self) -> Option<&dyn Depose> {
        Some(self)
    }
}

#[async_trait]
impl Depose for Harness {
    async fn depose(&self, l: &LeaseRecord, g: Duration) -> Result<PreemptOutcome, BackendError> {
        self.db.preempt(l, g)
    }
}

#[async_trait]
impl Lock for Harness {
    async fn connect(&self) -> Result<(), BackendError> {
        self.db.connect()
    }
    async fn try_lock(
        &self,
        ns: &Namespace,
        roles: &[Role],
    ) -> Result<TryLockOutcome, BackendError> {
        self.db.try_lock(ns, roles)
    }
    async fn unlock(&self, ns: &Namespace, role: &Role) -> Result<(), BackendError> {
        self.db.unlock(ns, role)
    }
    async fn held(&self, ns: &Namespace, roles: &[Role]) -> Result<Vec<Role>, BackendError> {
        self.db.held(ns, roles)
    }
    async fn ping(&self) -> Result<(), BackendError> {
        self.db.ping()
    }
    async fn reset(&self) {
        self.db.reset()
    }
    async fn session_closed(&self) {
        self.closed.notified().await
    }
}

#[async_trait]
impl Lease for Harness {
    async fn read(
        &self,
        ns: &Namespace,
        roles: &[Role],
    ) -> Result<(DbTimestamp, Vec<LeaseRecord>), BackendError> {
        self.db.read(ns, roles)
    }
    async fn claim(
        &self,
        ns: &Namespace,
        role: &Role,
        holder: &NodeId,
        lease: Duration,
    ) -> Result<ClaimOutcome, BackendError> {
        self.db.claim(ns, role, holder, lease)
    }
    async fn renew(
        &self,
        ns: &Namespace,
        holder: &NodeId,
        held: &[HeldLease],
        lease: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        if self.hang_renew.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.db.renew(ns, holder, held, lease)
    }
    async fn expire(
        &self,
        ns: &Namespace,
        role: &Role,
        holder: &NodeId,
        term: Term,
    ) -> Result<(), BackendError> {
        self.db.expire(ns, role, holder, term)
    }
    async fn list(&self, ns: Option<&Namespace>) -> Result<Vec<LeaseRecord>, BackendError> {
        self.db.list(ns.cloned())
    }
}

#[async_trait]
impl Notify for Harness {
    async fn publish_release(&self, ns: &Namespace, role: &Role) -> Result<(), BackendError> {
        self.db.publish_release(ns, role)
    }
    async fn subscribe(&self, ns: &Namespace) -> Result<Box<dyn Subscription>, BackendError> {
        if let Some(gate) = &self.subscribe_gate {
            gate.notified().await;
        }
        self.db.subscribe(ns)
    }
}

pub(super) struct Silent;

#[async_trait]
impl Subscription for Silent {
    async fn recv(&mut self) -> Result<NotifyEvent, BackendError> {
        std::future::pending().await
    }
}

pub(super) type Log = Arc<Mutex<Vec<String>>>;

pub(super) fn log(l: &Log, s: impl Into<String>) {
    l.lock().unwrap().push(s.into());
}

pub(super) fn entries(l: &Log) -> Vec<String> {
    l.lock().unwrap().clone()
}

pub(super) fn role() -> Role {
    Role::new("scheduler").unwrap()
}

/// A `try_lock` answer that grants (or denies) every role asked for.
pub(super) fn lock_outcome(roles: &[Role], granted: bool) -> TryLockOutcome {
    TryLockOutcome {
        db_now: DbTimestamp::from_micros(0),
        attempts: roles
            .iter()
            .map(|r| LockAttempt {
                role: r.clone(),
                granted,
                lease: None,
            })
            .collect(),
    }
}

/// A mock database that grants the lock, claims term 7, and answers
/// renewals with `renew_ok` (or a transient error).
pub(super) fn granting_db(l: &Log, renew_ok: Arc<AtomicBool>) -> MockDb {
    let mut db = base_db(l, renew_ok);
    db.expect_try_lock()
        .returning(|_, roles| Ok(lock_outcome(roles, true)));
    db.expect_claim().returning(|_, _, _, _| {
        Ok(ClaimOutcome {
            term: Term(7),
            previous: None,
            db_now: DbTimestamp::from_micros(0),
        })
    });
    db
}

/// Everything of [`granting_db`] but `try_lock` and `claim`, which the
/// test sets.
pub(super) fn base_db(l: &Log, renew_ok: Arc<AtomicBool>) -> MockDb {
    let mut db = MockDb::new();
    db.expect_connect().returning(|| Ok(()));
    db.expect_subscribe()
        .returning(|_| Ok(Box::new(Silent) as Box<dyn Subscription>));
    let ll = l.clone();
    db.expect_renew().returning(move |_, _, held, _| {
        log(&ll, "renew");
        if renew_ok.load(Ordering::SeqCst) {
            Ok(RenewOutcome {
                db_now: DbTimestamp::from_micros(0),
                renewed: held.iter().map(|h| h.role.clone()).collect(),
            })
        } else {
            Err(BackendError::Transient("connection refused".into()))
        }
    });
    db.expect_ping().returning(|| Ok(()));
    let ll = l.clone();
    db.expect_expire().returning(move |_, r, _, t| {
        log(&ll, format!("expire {r} {t}"));
        Ok(())
    });
    let ll = l.clone();
    db.expect_unlock().returning(move |_, r| {
        log(&ll, format!("unlock {r}"));
        Ok(())
    });
    let ll = l.clone();
    db.expect_publish_release().returning(move |_, r| {
        log(&ll, format!("notify {r}"));
        Ok(())
    });
    let ll = l.clone();
    db.expect_reset().returning(move || log(&ll, "reset"));
    db
}

/// [`granting_db`] whose renewals succeed (or not) for good, and whose
/// validation always finds every lock still held.
pub(super) fn holding_db(l: &Log, renew_ok: bool) -> MockDb {
    let mut db = granting_db(l, Arc::new(AtomicBool::new(renew_ok)));
    db.expect_held().returning(|_, roles| Ok(roles.to_vec()));
    db
}

pub(super) fn harness(db: MockDb) -> Arc<Harness> {
    Arc::new(Harness {
        db,
        hang_renew: AtomicBool::new(false),
        closed: tokio::sync::Notify::new(),
        subscribe_gate: None,
    })
}

pub(super) async fn elector(h: Arc<Harness>) -> Elector {
    Elector::builder_shared(h)
        .node_id(NodeId::new("node-a").unwrap())
        .seed(1)
        .build()
        .await
        .unwrap()
}

mod basics;
mod lifecycle;
mod notify;
mod status;
