//! [`SimBackend`]: the core's backend traits over the simulated database,
//! so the real tokio driver runs against it — typically on tokio's paused
//! clock — and a test can inject faults with a [`SimCluster`].
//!
//! ```
//! use std::time::Duration;
//! use regent_core::{Elector, Role};
//! use regent_sim::backend::SimCluster;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let cluster = SimCluster::new();
//! let a = Elector::builder(cluster.backend("node-a")).spawn(Role::new("jobs").unwrap()).await.unwrap();
//! a.wait_until_leader().await.unwrap();
//! let b = Elector::builder(cluster.backend("node-b")).spawn(Role::new("jobs").unwrap()).await.unwrap();
//!
//! // node-a's process dies: its session closes, its lease runs out.
//! cluster.crash("node-a");
//! tokio::time::timeout(Duration::from_secs(30), b.wait_until_leader()).await.unwrap().unwrap();
//! # }
//! ```
//!
//! Time: the database clock is tokio's clock (so `tokio::time::pause()`
//! makes runs exact and instant). Faults are per node, by the name given to
//! [`SimCluster::backend`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use regent_core::{
    Backend, BackendError, ClaimOutcome, DbTimestamp, Depose, HeldLease, Lease, LeaseRecord, Lock,
    Namespace, NodeId, Notify, NotifyEvent, PreemptOutcome, RenewOutcome, Role, Subscription, Term,
    TryLockOutcome,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::db::{FencedOutcome, Pid, SessionEnd, SimDb, TerminatePrivilege};

/// The database clock at the cluster's start: 2026-01-01T00:00:00Z.
const EPOCH_MICROS: i64 = 1_767_225_600_000_000;

#[derive(Debug, Default)]
struct NodeState {
    pid: Option<Pid>,
    crashed: bool,
    /// Bumped when the node's session ends by itself.
    closed: Option<watch::Sender<u64>>,
    subscribers: Vec<(Namespace, mpsc::UnboundedSender<NotifyEvent>)>,
}

#[derive(Debug)]
struct State {
    db: SimDb,
    origin: Instant,
    nodes: BTreeMap<String, NodeState>,
}

impl State {
    fn tick(&mut self) {
        let elapsed = Instant::now().saturating_duration_since(self.origin);
        self.db
            .set_now(DbTimestamp::from_micros(EPOCH_MICROS) + elapsed);
    }

    /// Tells nodes whose sessions ended by themselves.
    fn settle(&mut self) {
        for (pid, _) in self.db.take_ended() {
            for node in self.nodes.values_mut() {
                if node.pid == Some(pid)
                    && let Some(tx) = &node.closed
                {
                    tx.send_modify(|n| *n += 1);
                }
            }
        }
    }
}

/// One simulated PostgreSQL shared by the [`SimBackend`]s of a test, and
/// the handle to inject faults. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SimCluster {
    state: Arc<Mutex<State>>,
    partitions: Arc<watch::Sender<BTreeMap<String, bool>>>,
}

impl Default for SimCluster {
    fn default() -> Self {
        Self::new()
    }
}

impl SimCluster {
    /// A database that is up, empty, and lets nodes preempt zombies. Must be
    /// called inside a tokio runtime (its clock is tokio's).
    pub fn new() -> Self {
        let state = State {
            db: SimDb::new(
                DbTimestamp::from_micros(EPOCH_MICROS),
                TerminatePrivilege::Permitted,
            ),
            origin: Instant::now(),
            nodes: BTreeMap::new(),
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            partitions: Arc::new(watch::channel(BTreeMap::new()).0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.tick();
        s
    }

    /// A backend for the node called `name` (one session, opened lazily).
    pub fn backend(&self, name: &str) -> SimBackend {
        let (tx, _) = watch::channel(0);
        self.lock().nodes.entry(name.to_owned()).or_default().closed = Some(tx);
        SimBackend {
            cluster: self.clone(),
            name: name.to_owned(),
        }
    }

    /// The node's traffic is cut both ways: its calls hang (and time out in
    /// the driver) until [`SimCluster::heal`]. Its server session stays.
    pub fn partition(&self, name: &str) {
        self.partitions.send_modify(|p| {
            p.insert(name.to_owned(), true);
        });
    }

    /// Restores a partitioned node's traffic. Its listener reconnects and
    /// reports that it may have missed notifications.
    pub fn heal(&self, name: &str) {
        self.partitions.send_modify(|p| {
            p.remove(name);
        });
        if let Some(node) = self.lock().nodes.get_mut(name) {
            node.subscribers
                .retain(|(_, tx)| tx.send(NotifyEvent::MaybeMissed).is_ok());
        }
    }

    /// The node's process dies: every later call hangs forever, its session
    /// closes (its locks go), its lease row stays until it runs out.
    pub fn crash(&self, name: &str) {
        let mut s = self.lock();
        let pid = s.nodes.get_mut(name).and_then(|n| {
            n.crashed = true;
            n.subscribers.clear();
            n.pid.take()
        });
        if let Some(pid) = pid {
            s.db.end_session(pid, SessionEnd::ClientClosed);
            s.settle();
        }
    }

    /// An operator runs `pg_terminate_backend` on the node's session.
    pub fn terminate_session(&self, name: &str) -> bool {
        let mut s = self.lock();
        let pid = s.nodes.get(name).and_then(|n| n.pid);
        let done = pid.is_some_and(|pid| s.db.end_session(pid, SessionEnd::OperatorTerminated));
        s.settle();
        done
    }

    /// The database restarts: every session and lock is gone, rows stay.
    pub fn restart_database(&self) {
        let mut s = self.lock();
        s.db.stop();
        s.db.start();
        s.settle();
    }

    /// Whether nodes may terminate zombie holders.
    pub fn set_preempt_permitted(&self, permitted: bool) {
        let privilege = if permitted {
            TerminatePrivilege::Permitted
        } else {
            TerminatePrivilege::Denied
        };
        self.lock().db.set_privilege(privilege);
    }

    /// A write to the role's fenced resource with `writer`'s token: accepted
    /// only if the lease row still names `writer` at `token`.
    ///
    /// # Errors
    /// [`BackendError`] if the database is down.
    pub fn fenced_write(
        &self,
        namespace: &Namespace,
        role: &Role,
        writer: &NodeId,
        token: Term,
    ) -> Result<FencedOutcome, BackendError> {
        self.lock().db.fenced_write(namespace, role, writer, token)
    }

    /// The role's lease row, if any.
    pub fn lease(&self, namespace: &Namespace, role: &Role) -> Option<LeaseRecord> {
        self.lock()
            .db
            .row(&(namespace.clone(), role.clone()))
            .cloned()
    }

    /// The database clock.
    pub fn db_now(&self) -> DbTimestamp {
        self.lock().db.now()
    }
}

/// One node's backend over a [`SimCluster`]. Implements
/// [`Lock`], [`Lease`] and [`Notify`].
#[derive(Debug, Clone)]
pub struct SimBackend {
    cluster: SimCluster,
    name: String,
}

impl SimBackend {
    /// The node's name in the cluster.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits while the node is partitioned; forever once it crashed.
    async fn reach(&self) {
        if self
            .cluster
            .lock()
            .nodes
            .get(&self.name)
            .is_some_and(|n| n.crashed)
        {
            std::future::pending::<()>().await;
        }
        let mut rx = self.cluster.partitions.subscribe();
        let _ = rx.wait_for(|p| !p.contains_key(&self.name)).await;
    }

    /// Runs `f` on the node's session, opening one if needed. A session that
    /// ended is reported once as [`BackendError::SessionLost`].
    async fn on_session<T>(
        &self,
        f: impl FnOnce(&mut SimDb, Pid) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        self.reach().await;
        let mut guard = self.cluster.lock();
        let s = &mut *guard;
        let node = s.nodes.entry(self.name.clone()).or_default();
        let pid = match node.pid {
            Some(pid) if s.db.is_alive(pid) => pid,
            Some(pid) => {
                node.pid = None;
                return Err(BackendError::SessionLost {
                    reason: format!("backend {pid} is gone"),
                });
            }
            None => {
                let pid = s.db.connect(&self.name)?;
                node.pid = Some(pid);
                pid
            }
        };
        let result = f(&mut s.db, pid);
        if result.as_ref().is_err_and(BackendError::is_session_lost)
            && let Some(node) = s.nodes.get_mut(&self.name)
        {
            node.pid = None;
        }
        s.settle();
        result
    }

    async fn on_db<T>(&self, f: impl FnOnce(&mut SimDb) -> T) -> T {
        self.reach().await;
        let mut guard = self.cluster.lock();
        let out = f(&mut guard.db);
        guard.settle();
        out
    }
}

/// The default release (expire, then unlock): the simulated database
/// publishes nothing by itself. It has both optional capabilities, like
/// PostgreSQL: release notifications and deposing zombies.
impl Backend for SimBackend {
    fn notifier(&self) -> Option<&dyn Notify> {
        Some(self)
    }

    fn deposer(&self) -> Option<&dyn Depose> {
        Some(self)
    }
}

#[async_trait]
impl Depose for SimBackend {
    async fn depose(
        &self,
        lease: &LeaseRecord,
        grace: Duration,
    ) -> Result<PreemptOutcome, BackendError> {
        self.on_session(|db, pid| db.preempt(pid, lease, grace))
            .await
    }
}

#[async_trait]
impl Lock for SimBackend {
    async fn connect(&self) -> Result<(), BackendError> {
        self.on_session(|_, _| Ok(())).await
    }

    async fn try_lock(
        &self,
        namespace: &Namespace,
        roles: &[Role],
    ) -> Result<TryLockOutcome, BackendError> {
        self.on_session(|db, pid| {
            // Never take a key twice on one session.
            let fresh: Vec<Role> = roles
                .iter()
                .filter(|r| !db.holds(pid, namespace, r))
                .cloned()
                .collect();
            db.try_lock(pid, namespace, &fresh)
        })
        .await
    }

    async fn unlock(&self, namespace: &Namespace, role: &Role) -> Result<(), BackendError> {
        self.on_session(|db, pid| db.unlock(pid, namespace, role).map(|_| ()))
            .await
    }

    async fn held(&self, namespace: &Namespace, roles: &[Role]) -> Result<Vec<Role>, BackendError> {
        self.on_session(|db, pid| db.held(pid, namespace, roles))
            .await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.on_session(|db, pid| db.ping(pid)).await
    }

    async fn reset(&self) {
        let mut s = self.cluster.lock();
        let pid = s.nodes.get_mut(&self.name).and_then(|n| n.pid.take());
        if let Some(pid) = pid {
            s.db.end_session(pid, SessionEnd::ClientClosed);
            // Our own close is not news to us: drain it without signalling.
            let _ = s.db.take_ended();
        }
    }

    async fn session_closed(&self) {
        let rx = self
            .cluster
            .lock()
            .nodes
            .get(&self.name)
            .and_then(|n| n.closed.as_ref().map(watch::Sender::subscribe));
        match rx {
            Some(mut rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

#[async_trait]
impl Lease for SimBackend {
    async fn read(
        &self,
        namespace: &Namespace,
        roles: &[Role],
    ) -> Result<(DbTimestamp, Vec<LeaseRecord>), BackendError> {
        self.on_db(|db| db.read(namespace, roles)).await
    }

    async fn claim(
        &self,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        lease: Duration,
    ) -> Result<ClaimOutcome, BackendError> {
        self.on_session(|db, pid| db.claim(pid, namespace, role, holder, lease))
            .await
    }

    async fn renew(
        &self,
        namespace: &Namespace,
        holder: &NodeId,
        held: &[HeldLease],
        lease: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        self.on_session(|db, pid| db.renew(pid, namespace, holder, held, lease))
            .await
    }

    async fn expire(
        &self,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        term: Term,
    ) -> Result<(), BackendError> {
        self.on_session(|db, pid| db.expire(pid, namespace, role, holder, term).map(|_| ()))
            .await
    }

    async fn list(&self, namespace: Option<&Namespace>) -> Result<Vec<LeaseRecord>, BackendError> {
        self.on_db(|db| db.list(namespace)).await
    }
}

struct SimSubscription {
    rx: mpsc::UnboundedReceiver<NotifyEvent>,
}

#[async_trait]
impl Subscription for SimSubscription {
    async fn recv(&mut self) -> Result<NotifyEvent, BackendError> {
        self.rx.recv().await.ok_or_else(|| {
            BackendError::Transient("the simulated listener connection closed".to_owned())
        })
    }
}

#[async_trait]
impl Notify for SimBackend {
    async fn publish_release(
        &self,
        namespace: &Namespace,
        role: &Role,
    ) -> Result<(), BackendError> {
        self.reach().await;
        let partitioned = self.cluster.partitions.borrow().clone();
        let mut s = self.cluster.lock();
        if !s.db.is_up() {
            return Err(BackendError::Transient("the database is down".to_owned()));
        }
        for (name, node) in s.nodes.iter_mut() {
            if partitioned.contains_key(name) {
                continue; // lost on the cut link
            }
            node.subscribers.retain(|(ns, tx)| {
                ns != namespace || tx.send(NotifyEvent::Released(role.clone())).is_ok()
            });
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        namespace: &Namespace,
    ) -> Result<Box<dyn Subscription>, BackendError> {
        self.reach().await;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = self.cluster.lock();
        if !s.db.is_up() {
            return Err(BackendError::Transient("the database is down".to_owned()));
        }
        s.nodes
            .entry(self.name.clone())
            .or_default()
            .subscribers
            .push((namespace.clone(), tx));
        Ok(Box::new(SimSubscription { rx }))
    }
}
