//! What the application holds: [`LeaderHandle`].

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::ElectorError;
use crate::driver::node::Ctrl;
use crate::driver::status::{DrainOverrun, Leadership, RoleShared, RoleStatus, mapped_watch};
use crate::types::{Fence, Namespace, NodeId, Role, Term};

/// One campaign: shared by every clone of a handle. Dropping the last clone
/// withdraws the role.
pub(crate) struct Campaign {
    pub(crate) role: Role,
    pub(crate) namespace: Namespace,
    pub(crate) node: NodeId,
    pub(crate) shared: RoleShared,
    pub(crate) ctrl: mpsc::UnboundedSender<Ctrl>,
    pub(crate) done: watch::Receiver<bool>,
    /// Set for a handle from [`ElectorBuilder::spawn`](crate::ElectorBuilder::spawn),
    /// whose elector nobody else holds: its `shutdown` shuts the node down
    /// (closing the session) instead of only this role.
    pub(crate) owns_node: std::sync::atomic::AtomicBool,
}

impl Drop for Campaign {
    fn drop(&mut self) {
        // Mark first, then tell the node task: a `spawn` racing this drop
        // either sees the mark and attaches a new campaign (which the node
        // task then prefers over this withdrawal), or fails as before.
        self.shared.mark_withdrawn();
        let _ = self
            .ctrl
            .send(Ctrl::Withdraw(self.role.clone(), self.shared.clone()));
    }
}

/// One role's campaign on one node. Cheap to clone.
///
/// The campaign lasts as long as any clone does: dropping the last clone
/// withdraws the role as [`LeaderHandle::shutdown`] would (stepping down
/// and releasing if this node leads), without waiting. Observers
/// ([`Elector::observe`](crate::Elector::observe)) are separate and keep
/// working.
#[derive(Clone)]
pub struct LeaderHandle {
    pub(crate) campaign: Arc<Campaign>,
}

impl std::fmt::Debug for LeaderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderHandle")
            .field("role", &self.campaign.role)
            .field("leadership", &self.leadership())
            .finish()
    }
}

impl LeaderHandle {
    pub(crate) fn new(campaign: Campaign) -> Self {
        Self {
            campaign: Arc::new(campaign),
        }
    }

    pub(crate) fn shared(&self) -> &RoleShared {
        &self.campaign.shared
    }

    /// The role.
    pub fn role(&self) -> &Role {
        &self.campaign.role
    }

    /// Whether this node may act as leader right now. Checks the local
    /// deadline on every call: a leader whose renewals stopped succeeding
    /// answers `false` from its deadline on, even before the driver runs.
    pub fn is_leader(&self) -> bool {
        self.shared().status.borrow().is_leader_now()
    }

    /// The current leadership. `Leader` is reported only while
    /// [`LeaderHandle::is_leader`] holds.
    pub fn leadership(&self) -> Leadership {
        self.shared().status.borrow().leadership_now()
    }

    /// Leadership and health in one value (see [`RoleStatus`]); as cheap
    /// as [`LeaderHandle::leadership`]. `Leading` and `AtRisk` are reported
    /// only while [`LeaderHandle::is_leader`] holds.
    pub fn status(&self) -> RoleStatus {
        self.shared().status.borrow().health_now()
    }

    /// The term while leading.
    pub fn token(&self) -> Option<Term> {
        self.shared().status.borrow().term_now()
    }

    /// The fence of the current term while leading: the term together with
    /// the namespace, role and this node's id, for downstream systems that
    /// reject writes from deposed leaders.
    pub fn fence(&self) -> Option<Fence> {
        self.token().map(|term| self.fence_for(term))
    }

    pub(crate) fn fence_for(&self, term: Term) -> Fence {
        let c = &self.campaign;
        Fence::new(c.namespace.clone(), c.role.clone(), c.node.clone(), term)
    }

    /// A receiver that sees every leadership change of this role.
    pub fn watch(&self) -> watch::Receiver<Leadership> {
        mapped_watch(self.shared().status.subscribe(), |s| s.leadership_now())
    }

    /// A receiver that sees every change of [`LeaderHandle::status`]:
    /// leading, at risk, following (and who leads), unhealthy, stopped.
    pub fn watch_status(&self) -> watch::Receiver<RoleStatus> {
        mapped_watch(self.shared().status.subscribe(), |s| s.health_now())
    }

    /// The last time leader-only work outlived the drain bound of a resign
    /// or shutdown of this role, if it ever did (see [`DrainOverrun`]).
    pub fn last_drain_overrun(&self) -> Option<DrainOverrun> {
        self.shared().status.borrow().overrun.clone()
    }

    /// Waits until this node leads and returns its term.
    ///
    /// # Errors
    /// [`ElectorError::Stopped`] if the role or the elector stops first.
    pub async fn wait_until_leader(&self) -> Result<Term, ElectorError> {
        let mut rx = self.shared().status.subscribe();
        loop {
            {
                let status = rx.borrow_and_update();
                if let Some(term) = status.term_now() {
                    return Ok(term);
                }
                if status.leadership == Leadership::Stopped {
                    return Err(ElectorError::Stopped);
                }
            }
            if rx.changed().await.is_err() {
                return Err(ElectorError::Stopped);
            }
        }
    }

    /// Steps down (after draining `run_while_leader` work), releases the
    /// lease so a standby takes over at once, and keeps campaigning after a
    /// short hold-off. Returns once the lease is released. Does nothing
    /// harmful if this node does not lead.
    pub async fn resign(&self) {
        let (tx, rx) = oneshot::channel();
        let c = &self.campaign;
        if c.ctrl
            .send(Ctrl::Resign(c.role.clone(), c.shared.clone(), tx))
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Stops campaigning for this role, stepping down and releasing as
    /// [`LeaderHandle::resign`] does. Idempotent.
    ///
    /// For a handle from the [`ElectorBuilder::spawn`](crate::ElectorBuilder::spawn)
    /// shortcut (no [`Elector`](crate::Elector) left to shut down), this
    /// shuts the whole node down as [`Elector::shutdown`](crate::Elector::shutdown)
    /// does, so its database session is closed too; it takes at most
    /// [`Elector::shutdown_bound`](crate::Elector::shutdown_bound).
    pub async fn shutdown(&self) {
        let c = &self.campaign;
        if *c.done.borrow() {
            return;
        }
        if c.owns_node.load(std::sync::atomic::Ordering::Relaxed) {
            let (tx, rx) = oneshot::channel();
            if c.ctrl.send(Ctrl::Shutdown(tx)).is_ok() {
                let _ = rx.await;
            }
            let mut done = c.done.clone();
            let _ = done.wait_for(|d| *d).await;
            return;
        }
        if c.shared.is_stopped() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if c.ctrl
            .send(Ctrl::Stop(c.role.clone(), c.shared.clone(), tx))
            .is_ok()
        {
            let _ = rx.await;
        }
    }
}
