//! Driver tests: `mockall` mocks of the backend traits on tokio's paused
//! clock, so every timing assertion is exact and nothing flakes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mockall::mock;
use tokio::time::Instant;

use crate::backend::*;
use crate::driver::{Elector, ElectorError, Leadership};
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
/// and a session that closes on demand.
struct Harness {
    db: MockDb,
    hang_renew: AtomicBool,
    closed: tokio::sync::Notify,
}

impl crate::Backend for Harness {}

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
    async fn preempt(&self, l: &LeaseRecord, g: Duration) -> Result<PreemptOutcome, BackendError> {
        self.db.preempt(l, g)
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
        self.db.subscribe(ns)
    }
}

struct Silent;

#[async_trait]
impl Subscription for Silent {
    async fn recv(&mut self) -> Result<NotifyEvent, BackendError> {
        std::future::pending().await
    }
}

type Log = Arc<Mutex<Vec<String>>>;

fn log(l: &Log, s: impl Into<String>) {
    l.lock().unwrap().push(s.into());
}

fn entries(l: &Log) -> Vec<String> {
    l.lock().unwrap().clone()
}

fn role() -> Role {
    Role::new("scheduler").unwrap()
}

/// A mock database that grants the lock, claims term 7, and answers
/// renewals with `renew_ok` (or a transient error).
fn granting_db(l: &Log, renew_ok: Arc<AtomicBool>) -> MockDb {
    let mut db = MockDb::new();
    db.expect_connect().returning(|| Ok(()));
    db.expect_subscribe()
        .returning(|_| Ok(Box::new(Silent) as Box<dyn Subscription>));
    db.expect_try_lock().returning(|_, roles| {
        Ok(TryLockOutcome {
            db_now: DbTimestamp::from_micros(0),
            attempts: roles
                .iter()
                .map(|r| LockAttempt {
                    role: r.clone(),
                    granted: true,
                    lease: None,
                })
                .collect(),
        })
    });
    db.expect_claim().returning(|_, _, _, _| {
        Ok(ClaimOutcome {
            term: Term(7),
            previous: None,
            db_now: DbTimestamp::from_micros(0),
        })
    });
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
fn holding_db(l: &Log, renew_ok: bool) -> MockDb {
    let mut db = granting_db(l, Arc::new(AtomicBool::new(renew_ok)));
    db.expect_held().returning(|_, roles| Ok(roles.to_vec()));
    db
}

fn harness(db: MockDb) -> Arc<Harness> {
    Arc::new(Harness {
        db,
        hang_renew: AtomicBool::new(false),
        closed: tokio::sync::Notify::new(),
    })
}

async fn elector(h: Arc<Harness>) -> Elector {
    Elector::builder_shared(h)
        .node_id(NodeId::new("node-a").unwrap())
        .seed(1)
        .build()
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn failing_renewals_step_down_exactly_at_the_deadline_and_cancel_work() {
    let l = Log::default();
    let db = holding_db(&l, false);
    let e = elector(harness(db)).await;
    let h = e.spawn(role()).await.unwrap();
    let start = Instant::now();
    let token = h.wait_until_leader().await.unwrap();
    assert_eq!(token, Term(7));
    assert_eq!(start.elapsed(), Duration::ZERO);
    let cancelled_at = h
        .run_while_leader(|cancel, _| async move {
            cancel.cancelled().await;
            Instant::now()
        })
        .await
        .unwrap();
    // lease 10 s · (1 - 1e-3) - 200 ms, counted from sending the claim.
    assert_eq!(cancelled_at - start, Duration::from_millis(9790));
    assert!(!h.is_leader());
    assert!(entries(&l).iter().filter(|s| *s == "renew").count() >= 4);
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn is_leader_checks_the_deadline_even_if_the_driver_is_late() {
    let l = Log::default();
    let db = holding_db(&l, false);
    let e = elector(harness(db)).await;
    let h = e.spawn(role()).await.unwrap();
    h.wait_until_leader().await.unwrap();
    // Jump the clock without letting any task run.
    tokio::time::advance(Duration::from_millis(9790)).await;
    assert!(!h.is_leader());
    assert!(h.token().is_none());
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_hung_renew_does_not_hold_leadership_past_the_deadline() {
    let l = Log::default();
    let db = holding_db(&l, true);
    let h = harness(db);
    let e = elector(h.clone()).await;
    let lh = e.spawn(role()).await.unwrap();
    let start = Instant::now();
    lh.wait_until_leader().await.unwrap();
    // Renewals succeed for a while, then hang forever.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(lh.is_leader());
    h.hang_renew.store(true, Ordering::SeqCst);
    let mut w = lh.watch();
    w.wait_for(|l| matches!(l, Leadership::Follower { .. }))
        .await
        .unwrap();
    // The last successful renewal was sent at 4 s: deadline 4 s + 9.79 s.
    assert_eq!(start.elapsed(), Duration::from_millis(4000 + 9790));
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn lost_lock_steps_down_at_the_next_validation() {
    let l = Log::default();
    let ok = Arc::new(AtomicBool::new(true));
    let mut db = granting_db(&l, ok);
    let lost = Arc::new(AtomicBool::new(false));
    let lost2 = lost.clone();
    db.expect_held().returning(move |_, roles| {
        if lost2.load(Ordering::SeqCst) {
            Ok(vec![])
        } else {
            Ok(roles.to_vec())
        }
    });
    let e = elector(harness(db)).await;
    let h = e.spawn(role()).await.unwrap();
    h.wait_until_leader().await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let t = Instant::now();
    lost.store(true, Ordering::SeqCst);
    let cancelled = h.run_while_leader(|c, _| async move {
        c.cancelled().await;
        Instant::now()
    });
    let at = cancelled.await.unwrap();
    // Validations run every second (at 1 s, 2 s, 3 s, 4 s, ...).
    assert_eq!(at - t, Duration::from_millis(500));
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn session_closed_steps_down_immediately() {
    let l = Log::default();
    let ok = Arc::new(AtomicBool::new(true));
    let mut db = granting_db(&l, ok);
    db.expect_held().returning(|_, _| Ok(vec![]));
    let h = harness(db);
    let e = elector(h.clone()).await;
    let lh = e.spawn(role()).await.unwrap();
    lh.wait_until_leader().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let work = lh.run_while_leader(|c, _| async move {
        c.cancelled().await;
        Instant::now()
    });
    let closer = async {
        tokio::task::yield_now().await;
        h.closed.notify_one();
    };
    let (at, ()) = tokio::join!(work, closer);
    assert_eq!(at.unwrap() - t, Duration::ZERO);
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn resign_drains_work_then_releases_then_notifies() {
    let l = Log::default();
    let db = holding_db(&l, true);
    let e = elector(harness(db)).await;
    let h = e.spawn(role()).await.unwrap();
    h.wait_until_leader().await.unwrap();
    let ll = l.clone();
    let worker = {
        let h = h.clone();
        tokio::spawn(async move {
            h.run_while_leader(|cancel, _| async move {
                cancel.cancelled().await;
                // Cleanup takes a while; the lease must not be released yet.
                tokio::time::sleep(Duration::from_millis(700)).await;
                log(&ll, "work done");
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    h.resign().await;
    assert_eq!(t.elapsed(), Duration::from_millis(700));
    worker.await.unwrap().unwrap();
    let seq: Vec<String> = entries(&l).into_iter().filter(|s| s != "renew").collect();
    assert_eq!(
        seq,
        vec![
            "work done",
            "expire scheduler 7",
            "unlock scheduler",
            "notify scheduler"
        ]
    );
    assert!(!h.is_leader());
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_twice_is_fine_and_releases() {
    let l = Log::default();
    let db = holding_db(&l, true);
    let e = elector(harness(db)).await;
    let h = e.spawn(role()).await.unwrap();
    h.wait_until_leader().await.unwrap();
    e.shutdown().await;
    e.shutdown().await;
    h.shutdown().await;
    assert!(e.is_stopped());
    assert_eq!(h.leadership(), Leadership::Stopped);
    assert!(matches!(
        h.wait_until_leader().await,
        Err(ElectorError::Stopped)
    ));
    assert!(matches!(e.spawn(role()).await, Err(ElectorError::Stopped)));
    let seq = entries(&l);
    assert!(seq.contains(&"expire scheduler 7".to_owned()), "{seq:?}");
    assert!(seq.contains(&"notify scheduler".to_owned()), "{seq:?}");
}

#[tokio::test(start_paused = true)]
async fn bad_config_and_dead_database_fail_at_build() {
    let mut db = MockDb::new();
    db.expect_connect()
        .returning(|| Err(BackendError::Transient("connection refused".into())));
    let err = Elector::builder_shared(harness(db))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, ElectorError::Backend(_)), "{err}");
    assert!(err.to_string().contains("connection refused"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn one_node_many_roles_renews_in_one_call() {
    let l = Log::default();
    let db = holding_db(&l, true);
    let e = elector(harness(db)).await;
    let mut handles = Vec::new();
    for i in 0..20 {
        handles.push(
            e.spawn(Role::new(format!("shard-{i}")).unwrap())
                .await
                .unwrap(),
        );
    }
    for h in &handles {
        h.wait_until_leader().await.unwrap();
    }
    let before = entries(&l).iter().filter(|s| *s == "renew").count();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let renews = entries(&l).iter().filter(|s| *s == "renew").count() - before;
    // One renew call every 2 s for all 20 roles, not 20 calls.
    assert!((4..=6).contains(&renews), "{renews} renew calls");
    assert!(handles.iter().all(|h| h.is_leader()));
    assert!(matches!(
        e.spawn(Role::new("shard-0").unwrap()).await,
        Err(ElectorError::AlreadyCampaigning(_))
    ));
    e.shutdown().await;
}
