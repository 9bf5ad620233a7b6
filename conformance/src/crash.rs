//! A backend wrapper that can "crash" its node: from [`Crashable::crash`]
//! on, every call hangs forever (the process is gone) and the engine closes
//! the session without releasing anything ([`Engine::crash`]), exactly as
//! when a leader process is killed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::Engine;
use async_trait::async_trait;
use regent_core::{
    Backend, BackendError, ClaimOutcome, DbTimestamp, Depose, HeldLease, Lease, LeaseRecord, Lock,
    Namespace, NodeId, Notify, PreemptOutcome, Released, RenewOutcome, Role, Subscription, Term,
    TryLockOutcome,
};

/// See the module docs.
#[derive(Clone)]
pub struct Crashable<B> {
    inner: B,
    crashed: Arc<AtomicBool>,
}

impl<B: Backend + Clone> Crashable<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            crashed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Kills the node: from now on every call through this wrapper hangs,
    /// and `engine` closes the node's session the way a dead process does
    /// (its locks go, its lease row stays until it runs out). Work the node
    /// opened outside the session (a fenced transaction on a pool) is left
    /// as it is.
    pub async fn crash<E: Engine<Node = B>>(&self, engine: &E) {
        self.crashed.store(true, Ordering::SeqCst);
        engine.crash(&self.inner).await;
    }

    async fn gate(&self) {
        if self.crashed.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl<B: Backend + Clone> Backend for Crashable<B> {
    fn notifier(&self) -> Option<&dyn Notify> {
        self.inner.notifier().map(|_| self as &dyn Notify)
    }
    fn deposer(&self) -> Option<&dyn Depose> {
        self.inner.deposer().map(|_| self as &dyn Depose)
    }
    async fn release(
        &self,
        ns: &Namespace,
        role: &Role,
        holder: &NodeId,
        term: Option<Term>,
    ) -> Result<Released, BackendError> {
        self.gate().await;
        self.inner.release(ns, role, holder, term).await
    }
}

#[async_trait]
impl<B: Backend + Clone> Lock for Crashable<B> {
    async fn connect(&self) -> Result<(), BackendError> {
        self.gate().await;
        self.inner.connect().await
    }
    async fn try_lock(
        &self,
        ns: &Namespace,
        roles: &[Role],
    ) -> Result<TryLockOutcome, BackendError> {
        self.gate().await;
        self.inner.try_lock(ns, roles).await
    }
    async fn unlock(&self, ns: &Namespace, role: &Role) -> Result<(), BackendError> {
        self.gate().await;
        self.inner.unlock(ns, role).await
    }
    async fn held(&self, ns: &Namespace, roles: &[Role]) -> Result<Vec<Role>, BackendError> {
        self.gate().await;
        self.inner.held(ns, roles).await
    }
    async fn ping(&self) -> Result<(), BackendError> {
        self.gate().await;
        self.inner.ping().await
    }
    async fn reset(&self) {
        self.gate().await;
        self.inner.reset().await
    }
    async fn session_closed(&self) {
        self.gate().await;
        self.inner.session_closed().await
    }
}

#[async_trait]
impl<B: Backend + Clone> Lease for Crashable<B> {
    async fn read(
        &self,
        ns: &Namespace,
        roles: &[Role],
    ) -> Result<(DbTimestamp, Vec<LeaseRecord>), BackendError> {
        self.gate().await;
        self.inner.read(ns, roles).await
    }
    async fn claim(
        &self,
        ns: &Namespace,
        role: &Role,
        holder: &NodeId,
        lease: Duration,
    ) -> Result<ClaimOutcome, BackendError> {
        self.gate().await;
        self.inner.claim(ns, role, holder, lease).await
    }
    async fn renew(
        &self,
        ns: &Namespace,
        holder: &NodeId,
        held: &[HeldLease],
        lease: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        self.gate().await;
        self.inner.renew(ns, holder, held, lease).await
    }
    async fn expire(
        &self,
        ns: &Namespace,
        role: &Role,
        holder: &NodeId,
        term: Term,
    ) -> Result<(), BackendError> {
        self.gate().await;
        self.inner.expire(ns, role, holder, term).await
    }
    async fn list(&self, ns: Option<&Namespace>) -> Result<Vec<LeaseRecord>, BackendError> {
        self.gate().await;
        self.inner.list(ns).await
    }
}

#[async_trait]
impl<B: Backend + Clone> Notify for Crashable<B> {
    async fn publish_release(&self, ns: &Namespace, role: &Role) -> Result<(), BackendError> {
        self.gate().await;
        match self.inner.notifier() {
            Some(n) => n.publish_release(ns, role).await,
            None => Ok(()),
        }
    }
    async fn subscribe(&self, ns: &Namespace) -> Result<Box<dyn Subscription>, BackendError> {
        self.gate().await;
        match self.inner.notifier() {
            Some(n) => n.subscribe(ns).await,
            None => Err(BackendError::Misconfigured("no notifications".to_owned())),
        }
    }
}

#[async_trait]
impl<B: Backend + Clone> Depose for Crashable<B> {
    async fn depose(&self, l: &LeaseRecord, g: Duration) -> Result<PreemptOutcome, BackendError> {
        self.gate().await;
        match self.inner.deposer() {
            Some(d) => d.depose(l, g).await,
            None => Ok(PreemptOutcome::NotPermitted),
        }
    }
}
