//! The tokio driver: runs a [`Machine`](crate::Machine) over a backend.
//!
//! It owns no policy: every decision is the machine's. The driver only
//! turns [`Command`](crate::Command)s into backend calls (each with its own
//! timeout), feeds results, notifications and time back in, and publishes
//! leadership to [`LeaderHandle`]s.
//!
//! ```no_run
//! # async fn demo(backend: impl regent_core::Backend) -> Result<(), regent_core::ElectorError> {
//! use regent_core::{CancellationToken, Elector, Role};
//!
//! let handle = Elector::builder(backend).spawn(Role::new("scheduler")?).await?;
//! let stop = CancellationToken::new();
//! handle
//!     .run_each_term(stop.clone(), |cancel, fence| async move {
//!         // Leader-only work, once per term this node leads: stop when
//!         // `cancel` fires; pass `fence` (or `i64::from(fence.term())`) to
//!         // downstream systems so they can reject a deposed leader.
//!         cancel.cancelled().await;
//!         let _ = fence;
//!     })
//!     .await;
//! handle.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Lifecycle
//!
//! A campaign lasts while any clone of its [`LeaderHandle`] does, until
//! [`LeaderHandle::shutdown`] or [`Elector::shutdown`]. Dropping the last
//! clone withdraws the role (stepping down and releasing if it leads);
//! [`Elector::spawn`] is cancellation-safe. Resign and shutdown drain
//! leader-only work before they release the lease, for at most
//! [`Config::drain_timeout`]; work still running then is reported as a
//! [`DrainOverrun`] and the lease released anyway. [`Elector::shutdown`]
//! takes at most [`Elector::shutdown_bound`].
//!
//! # Metrics
//!
//! Through the [`metrics`](https://docs.rs/metrics) facade, labelled with
//! `namespace` and `role`:
//! - `regent_elections_won_total` (counter): terms this node began to lead.
//! - `regent_leadership_lost_total` (counter, also `reason`): terms that
//!   ended, by [`StepDownReason`](crate::StepDownReason).
//! - `regent_is_leader` (gauge): 1 while leading.
//! - `regent_drain_timeouts_total` (counter): drains that ended with
//!   leader-only work still running ([`DrainOverrun`]).
//! - `regent_renew_latency_seconds` (histogram, `namespace` only).

mod clock;
mod events;
mod exec;
mod handle;
mod node;
mod observe;
mod run;
mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

use crate::backend::{Backend, BackendError};
use crate::config::{Config, ConfigError};
use crate::types::{NameError, Namespace, NodeId, Role};

pub use handle::LeaderHandle;
pub use observe::{ObservedLease, Observer};
pub use status::{DrainOverrun, Leadership, RoleStatus, Unhealthy};
/// The token leader-only work watches (from `tokio-util`, re-exported so
/// callers need no version-matched dependency of their own).
pub use tokio_util::sync::CancellationToken;

use handle::Campaign;
use node::{Ctrl, NodeTask};
use status::RoleShared;

/// Why an elector or a handle could not do what was asked.
#[derive(Debug, Error)]
pub enum ElectorError {
    /// The configuration breaks a rule.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A role, namespace or node name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The backend could not start (database down, transaction pooler,
    /// missing table); the message says what to fix.
    #[error("backend failed to start: {0}")]
    Backend(#[from] BackendError),
    /// The elector (or this role) has been shut down.
    #[error("the elector has been shut down; build a new one to campaign again")]
    Stopped,
    /// This elector already campaigns for the role.
    #[error("this elector already campaigns for role {0:?}; use the handle it returned")]
    AlreadyCampaigning(Role),
}

/// Builds an [`Elector`]. Start with [`Elector::builder`].
pub struct ElectorBuilder {
    backend: Arc<dyn Backend>,
    config: Config,
    namespace: Namespace,
    node_id: Option<NodeId>,
    seed: Option<u64>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for ElectorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElectorBuilder")
            .field("config", &self.config)
            .field("namespace", &self.namespace)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl ElectorBuilder {
    /// Timing and policy; [`Config::default`] if not set. The config is
    /// checked again when the elector is built.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The namespace of every role of this elector; `"default"` if not set.
    pub fn namespace(mut self, namespace: Namespace) -> Self {
        self.namespace = namespace;
        self
    }

    /// This node's id; if not set, the host name (from `HOSTNAME`) plus a
    /// random suffix.
    pub fn node_id(mut self, node_id: NodeId) -> Self {
        self.node_id = Some(node_id);
        self
    }

    /// Seeds the retry jitter (for reproducible tests); random if not set.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// How long [`ElectorBuilder::build`] waits for the backend's session
    /// before it fails; default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Checks the config, connects the backend's session (so a database
    /// that is down or a transaction pooler is an error here) and starts the
    /// node task. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`ElectorError::Config`] or [`ElectorError::Backend`].
    pub async fn build(self) -> Result<Elector, ElectorError> {
        self.config.validate()?;
        match tokio::time::timeout(self.connect_timeout, self.backend.connect()).await {
            Ok(connected) => connected?,
            Err(_) => return Err(BackendError::Timeout(self.connect_timeout).into()),
        }
        let seed = self.seed.unwrap_or_else(random_seed);
        let node_id = match self.node_id {
            Some(id) => id,
            None => {
                let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".to_owned());
                NodeId::generate(&host, seed.rotate_left(17))
            }
        };
        let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let (done_tx, done_rx) = watch::channel(false);
        let task = NodeTask::new(
            self.backend.clone(),
            node_id.clone(),
            self.namespace.clone(),
            self.config.clone(),
            seed,
            ctrl_rx,
            ctrl_tx.downgrade(),
            done_tx,
        );
        tokio::spawn(task.run());
        Ok(Elector {
            inner: Arc::new(Inner {
                backend: self.backend,
                node_id,
                namespace: self.namespace,
                config: self.config,
                ctrl: ctrl_tx,
                shared,
                done: done_rx,
            }),
        })
    }

    /// Builds the elector and campaigns for one role: the common case.
    ///
    /// # Errors
    /// As [`ElectorBuilder::build`].
    /// The handle's [`LeaderHandle::shutdown`] then shuts the whole node
    /// down, closing its session (no `Elector` is left to do it).
    pub async fn spawn(self, role: Role) -> Result<LeaderHandle, ElectorError> {
        let elector = self.build().await?;
        let handle = elector.spawn(role).await?;
        handle
            .campaign
            .owns_node
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(handle)
    }
}

fn random_seed() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// How long the node task gives a shutdown before it closes the session
/// (which drops every lock), not counting that last reset.
pub(crate) fn release_bound(config: &Config) -> Duration {
    config.drain_timeout() + config.attempt_timeout() * 4
}

/// [`Elector::shutdown_bound`].
fn shutdown_bound(config: &Config) -> Duration {
    release_bound(config) + config.attempt_timeout()
}

/// The campaigns of an elector, by role, to refuse a second live one.
#[derive(Default)]
pub(crate) struct Shared {
    roles: Mutex<HashMap<Role, RoleShared>>,
}

impl Shared {
    /// Registers a new campaign for `role` unless a live one exists (one
    /// that is neither stopped nor withdrawn by dropping its handles).
    fn insert_new(&self, role: &Role, shared: RoleShared) -> bool {
        let mut roles = self.roles.lock().unwrap_or_else(PoisonError::into_inner);
        match roles.get(role) {
            Some(existing) if !existing.is_over() => false,
            _ => {
                roles.insert(role.clone(), shared);
                true
            }
        }
    }
}

struct Inner {
    backend: Arc<dyn Backend>,
    node_id: NodeId,
    namespace: Namespace,
    config: Config,
    ctrl: mpsc::UnboundedSender<Ctrl>,
    shared: Arc<Shared>,
    done: watch::Receiver<bool>,
}

/// One node: a session with the database and any number of roles.
/// Cheap to clone; every clone drives the same node.
#[derive(Clone)]
pub struct Elector {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("node_id", &self.inner.node_id)
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

impl Elector {
    /// Starts building an elector over `backend`.
    pub fn builder(backend: impl Backend) -> ElectorBuilder {
        Self::builder_shared(Arc::new(backend))
    }

    /// Like [`Elector::builder`], for a backend already behind an `Arc`.
    pub fn builder_shared(backend: Arc<dyn Backend>) -> ElectorBuilder {
        ElectorBuilder {
            backend,
            config: Config::default(),
            namespace: Namespace::default(),
            node_id: None,
            seed: None,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.inner.node_id
    }

    /// The namespace of this elector's roles.
    pub fn namespace(&self) -> &Namespace {
        &self.inner.namespace
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Campaigns for `role` on this node's session. The campaign lasts
    /// until [`LeaderHandle::shutdown`], [`Elector::shutdown`], or the drop
    /// of the returned handle's last clone.
    ///
    /// Cancellation-safe: if this future is dropped before it completes, the
    /// role is withdrawn again and a later `spawn` for it succeeds.
    ///
    /// # Errors
    /// [`ElectorError::AlreadyCampaigning`] if a live handle for `role`
    /// exists; [`ElectorError::Stopped`] after shutdown.
    pub async fn spawn(&self, role: Role) -> Result<LeaderHandle, ElectorError> {
        if *self.inner.done.borrow() {
            return Err(ElectorError::Stopped);
        }
        let shared = RoleShared::new();
        if !self.inner.shared.insert_new(&role, shared.clone()) {
            return Err(ElectorError::AlreadyCampaigning(role));
        }
        // The handle exists before the node task hears of the role: if this
        // future is dropped from here on, dropping the handle withdraws it.
        let handle = LeaderHandle::new(Campaign {
            role: role.clone(),
            namespace: self.inner.namespace.clone(),
            node: self.inner.node_id.clone(),
            shared: shared.clone(),
            ctrl: self.inner.ctrl.clone(),
            done: self.inner.done.clone(),
            owns_node: std::sync::atomic::AtomicBool::new(false),
        });
        let (tx, rx) = oneshot::channel();
        self.inner
            .ctrl
            .send(Ctrl::Add(role, shared, tx))
            .map_err(|_| ElectorError::Stopped)?;
        rx.await.map_err(|_| ElectorError::Stopped)?;
        // The node task refuses new roles once it is shutting down.
        if handle.shared().is_stopped() {
            return Err(ElectorError::Stopped);
        }
        Ok(handle)
    }

    /// Watches who leads `role` without campaigning (like etcd's Observe).
    pub fn observe(&self, role: Role) -> Observer {
        Observer::spawn(
            self.inner.backend.clone(),
            self.inner.namespace.clone(),
            role,
            self.inner.config.retry_interval(),
        )
    }

    /// Resigns and releases every role (draining leader-only work first),
    /// then stops the node. Idempotent; returns once the node has stopped.
    ///
    /// # How long it takes
    /// At most [`Elector::shutdown_bound`]: the drain bound
    /// ([`Config::drain_timeout`], leader-only work still running then is
    /// reported as a [`DrainOverrun`] and the lease released anyway), then
    /// up to four backend attempts ([`Config::attempt_timeout`] each) to
    /// expire, unlock and notify, then one more to close the session, which
    /// drops every lock still held. Size the termination grace period of
    /// the process (Kubernetes `terminationGracePeriodSeconds`, systemd
    /// `TimeoutStopSec`) above it; with the default config it is
    /// 5 s + 5 × 1.5 s = 12.5 s.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.ctrl.send(Ctrl::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
        let mut done = self.inner.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    /// The longest [`Elector::shutdown`] can take with this config:
    /// `drain_timeout + 5 × attempt_timeout`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use regent_core::Config;
    /// let config = Config::default();
    /// let bound = config.drain_timeout() + config.attempt_timeout() * 5;
    /// assert_eq!(bound, Duration::from_millis(12_500));
    /// ```
    pub fn shutdown_bound(&self) -> Duration {
        shutdown_bound(&self.inner.config)
    }

    /// Whether the node has stopped.
    pub fn is_stopped(&self) -> bool {
        *self.inner.done.borrow()
    }

    /// The backend, for status queries.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }
}

#[cfg(test)]
mod tests;
