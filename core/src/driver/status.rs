//! What a handle can read about its role: [`Leadership`], [`RoleStatus`],
//! [`DrainOverrun`], and the per-role state the node task publishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::machine::ObservedLeader;
use crate::types::{Role, Term};

/// Who leads a role, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This node leads.
    Leader {
        /// The term: pass it to anything leader-only work writes to.
        token: Term,
        /// When this node started leading.
        since: Instant,
    },
    /// Another node leads (its node id, if observed), or nobody does.
    Follower {
        /// The observed leader's node id.
        leader: Option<String>,
    },
    /// The role (or the whole elector) was shut down.
    Stopped,
}

impl Leadership {
    /// The term, if this node leads.
    pub fn token(&self) -> Option<Term> {
        match self {
            Leadership::Leader { token, .. } => Some(*token),
            _ => None,
        }
    }
}

/// How one role is doing on this node: leadership and health in one value,
/// for readiness probes and dashboards. Read it with
/// [`LeaderHandle::status`](crate::LeaderHandle::status) or follow it with
/// [`LeaderHandle::watch_status`](crate::LeaderHandle::watch_status).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoleStatus {
    /// This node leads, and its last renewal succeeded.
    Leading {
        /// The term (fencing token).
        term: Term,
        /// When this term began, by the wall clock (for display only).
        since: SystemTime,
        /// When this term began, by the monotonic clock.
        since_instant: Instant,
    },
    /// This node still leads, but renewals are failing: it steps down at
    /// `deadline` unless one succeeds first. Finish or checkpoint work now.
    AtRisk {
        /// The term (fencing token).
        term: Term,
        /// When this term began, by the wall clock (for display only).
        since: SystemTime,
        /// When this term began, by the monotonic clock.
        since_instant: Instant,
        /// When leadership ends unless a renewal succeeds.
        deadline: Instant,
    },
    /// This node campaigns and does not lead; the leader and its term when
    /// known.
    Following {
        /// The leader this node last saw, if its lease was running.
        leader: Option<ObservedLeader>,
    },
    /// This node campaigns but cannot win until something is fixed or comes
    /// back; it follows meanwhile.
    Unhealthy {
        /// What is wrong.
        reason: Unhealthy,
    },
    /// The role (or the whole elector) was shut down.
    Stopped,
}

impl RoleStatus {
    /// The term, if this node leads (healthy or at risk).
    pub fn term(&self) -> Option<Term> {
        match self {
            RoleStatus::Leading { term, .. } | RoleStatus::AtRisk { term, .. } => Some(*term),
            _ => None,
        }
    }
}

/// Why a role is [`RoleStatus::Unhealthy`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unhealthy {
    /// The database session is gone (connection closed, server restarted,
    /// backend terminated). The node reconnects by itself; if this lasts,
    /// check that the database is reachable.
    SessionDown {
        /// What the backend said.
        detail: String,
    },
    /// The backend is set up in a way that cannot work — a missing table, a
    /// transaction pooler in front of the database, a missing privilege. The
    /// detail says what to fix; retrying will not help until it is fixed.
    Misconfigured {
        /// The backend call that failed.
        command: &'static str,
        /// What the backend said, naming the fix.
        detail: String,
    },
}

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unhealthy::SessionDown { detail } => write!(f, "database session down: {detail}"),
            Unhealthy::Misconfigured { command, detail } => {
                write!(f, "{command} cannot succeed until fixed: {detail}")
            }
        }
    }
}

/// Leader-only work outlived the drain bound
/// ([`Config::drain_timeout`](crate::Config::drain_timeout)) on a resign or
/// shutdown, and the lease was released anyway. From then on another node
/// may lead while that work still runs: only the fencing token protects
/// what it writes. Logged at `warn`, counted in the
/// `regent_drain_timeouts_total` counter, and kept on the handle
/// ([`LeaderHandle::last_drain_overrun`](crate::LeaderHandle::last_drain_overrun)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainOverrun {
    /// The role.
    pub role: Role,
    /// How long the node waited for the work before releasing.
    pub waited: Duration,
    /// How many `run_while_leader` bodies were still running.
    pub still_running: usize,
}

/// What the node task publishes for one role.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    pub(crate) leadership: Leadership,
    /// The local deadline while leading.
    pub(crate) deadline: Option<Instant>,
    pub(crate) health: RoleStatus,
    pub(crate) overrun: Option<DrainOverrun>,
}

impl Status {
    pub(crate) fn stop(&mut self) {
        self.leadership = Leadership::Stopped;
        self.deadline = None;
        self.health = RoleStatus::Stopped;
    }

    /// Whether this node may act as leader at this instant: the deadline is
    /// checked on every call.
    pub(crate) fn is_leader_now(&self) -> bool {
        matches!(self.leadership, Leadership::Leader { .. })
            && self
                .deadline
                .is_some_and(|d| crate::driver::clock::now() < d)
    }

    /// The term while [`Status::is_leader_now`] holds.
    pub(crate) fn term_now(&self) -> Option<Term> {
        self.leadership.token().filter(|_| self.is_leader_now())
    }

    /// [`Leadership`], with a passed deadline read as following.
    pub(crate) fn leadership_now(&self) -> Leadership {
        match &self.leadership {
            Leadership::Leader { .. } if !self.is_leader_now() => {
                Leadership::Follower { leader: None }
            }
            other => other.clone(),
        }
    }

    /// [`RoleStatus`], with a passed deadline read as following.
    pub(crate) fn health_now(&self) -> RoleStatus {
        match &self.health {
            RoleStatus::Leading { .. } | RoleStatus::AtRisk { .. } if !self.is_leader_now() => {
                RoleStatus::Following { leader: None }
            }
            other => other.clone(),
        }
    }
}

/// The per-role channels shared by the node task and the handles of one
/// campaign (one successful `spawn`).
#[derive(Clone)]
pub(crate) struct RoleShared {
    pub(crate) status: Arc<watch::Sender<Status>>,
    /// How many `run_while_leader` bodies are running.
    pub(crate) work: Arc<watch::Sender<usize>>,
    /// Set when the last handle was dropped.
    withdrawn: Arc<AtomicBool>,
}

impl RoleShared {
    pub(crate) fn new() -> Self {
        let (status, _) = watch::channel(Status {
            leadership: Leadership::Follower { leader: None },
            deadline: None,
            health: RoleStatus::Following { leader: None },
            overrun: None,
        });
        let (work, _) = watch::channel(0usize);
        Self {
            status: Arc::new(status),
            work: Arc::new(work),
            withdrawn: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether this campaign is over: stopped, or every handle dropped.
    pub(crate) fn is_over(&self) -> bool {
        self.is_stopped() || self.withdrawn.load(Ordering::SeqCst)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.status.borrow().leadership == Leadership::Stopped
    }

    pub(crate) fn mark_withdrawn(&self) {
        self.withdrawn.store(true, Ordering::SeqCst);
    }

    /// Whether `other` belongs to the same campaign.
    pub(crate) fn same(&self, other: &RoleShared) -> bool {
        Arc::ptr_eq(&self.status, &other.status)
    }

    /// Publishes `f`'s change; watchers wake only if `notify` says so.
    pub(crate) fn update(&self, notify: bool, f: impl FnOnce(&mut Status)) {
        self.status.send_if_modified(|s| {
            f(s);
            notify
        });
    }
}

/// Counts a running leader-only body for the drain; decrements on drop.
pub(crate) struct WorkGuard(Arc<watch::Sender<usize>>);

impl WorkGuard {
    pub(crate) fn new(work: Arc<watch::Sender<usize>>) -> Self {
        work.send_modify(|n| *n += 1);
        Self(work)
    }
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Forwards `status` mapped through `f` into a new receiver, waking it only
/// when the mapped value changes; ends after [`Leadership::Stopped`] or
/// when every receiver is gone.
pub(crate) fn mapped_watch<T>(
    mut status: watch::Receiver<Status>,
    f: fn(&Status) -> T,
) -> watch::Receiver<T>
where
    T: Clone + PartialEq + Send + Sync + 'static,
{
    let (tx, rx) = watch::channel(f(&status.borrow_and_update()));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = status.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let (next, stop) = {
                        let s = status.borrow_and_update();
                        (f(&s), s.leadership == Leadership::Stopped)
                    };
                    tx.send_if_modified(|cur| {
                        let changed = *cur != next;
                        *cur = next;
                        changed
                    });
                    if stop {
                        break;
                    }
                }
                () = tx.closed() => break,
            }
        }
    });
    rx
}
