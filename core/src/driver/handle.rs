//! What the application holds: [`LeaderHandle`] and [`Leadership`].

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::driver::ElectorError;
use crate::driver::node::Ctrl;
use crate::types::{FencingToken, Role};

/// Who leads a role, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This node leads.
    Leader {
        /// The fencing token: pass it to anything leader-only work writes to.
        token: FencingToken,
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
    /// The fencing token, if this node leads.
    pub fn token(&self) -> Option<FencingToken> {
        match self {
            Leadership::Leader { token, .. } => Some(*token),
            _ => None,
        }
    }
}

/// What the node task publishes for one role.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    pub(crate) leadership: Leadership,
    /// The local deadline while leading.
    pub(crate) deadline: Option<Instant>,
}

/// The per-role channels shared by the node task and the handles.
#[derive(Clone)]
pub(crate) struct RoleShared {
    pub(crate) status: Arc<watch::Sender<Status>>,
    /// How many `run_while_leader` bodies are running.
    pub(crate) work: Arc<watch::Sender<usize>>,
}

impl RoleShared {
    pub(crate) fn new() -> Self {
        let (status, _) = watch::channel(Status {
            leadership: Leadership::Follower { leader: None },
            deadline: None,
        });
        let (work, _) = watch::channel(0usize);
        Self {
            status: Arc::new(status),
            work: Arc::new(work),
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.status.borrow().leadership == Leadership::Stopped
    }
}

fn is_leader_now(status: &Status) -> bool {
    matches!(status.leadership, Leadership::Leader { .. })
        && status.deadline.is_some_and(|d| Instant::now() < d)
}

/// Decrements the running-work count when leader-only work ends.
struct WorkGuard(Arc<watch::Sender<usize>>);

impl WorkGuard {
    fn new(work: Arc<watch::Sender<usize>>) -> Self {
        work.send_modify(|n| *n += 1);
        Self(work)
    }
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// One role's campaign on one node. Cheap to clone.
#[derive(Clone)]
pub struct LeaderHandle {
    role: Role,
    shared: RoleShared,
    ctrl: mpsc::UnboundedSender<Ctrl>,
    done: watch::Receiver<bool>,
}

impl std::fmt::Debug for LeaderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderHandle")
            .field("role", &self.role)
            .field("leadership", &self.leadership())
            .finish()
    }
}

impl LeaderHandle {
    pub(crate) fn new(
        role: Role,
        shared: RoleShared,
        ctrl: mpsc::UnboundedSender<Ctrl>,
        done: watch::Receiver<bool>,
    ) -> Self {
        Self {
            role,
            shared,
            ctrl,
            done,
        }
    }

    /// The role.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// Whether this node may act as leader right now. Checks the local
    /// deadline on every call: a leader whose renewals stopped succeeding
    /// answers `false` from its deadline on, even before the driver runs.
    pub fn is_leader(&self) -> bool {
        is_leader_now(&self.shared.status.borrow())
    }

    /// The current leadership. `Leader` is reported only while
    /// [`LeaderHandle::is_leader`] holds.
    pub fn leadership(&self) -> Leadership {
        let status = self.shared.status.borrow();
        match &status.leadership {
            Leadership::Leader { .. } if !is_leader_now(&status) => {
                Leadership::Follower { leader: None }
            }
            other => other.clone(),
        }
    }

    /// The fencing token while leading.
    pub fn token(&self) -> Option<FencingToken> {
        if self.is_leader() {
            self.shared.status.borrow().leadership.token()
        } else {
            None
        }
    }

    /// A receiver that sees every leadership change of this role.
    pub fn watch(&self) -> watch::Receiver<Leadership> {
        let (tx, rx) = watch::channel(self.leadership());
        let mut status = self.shared.status.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = status.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let next = status.borrow_and_update().leadership.clone();
                        let stop = next == Leadership::Stopped;
                        tx.send_if_modified(|cur| {
                            if *cur == next {
                                false
                            } else {
                                *cur = next;
                                true
                            }
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

    /// Waits until this node leads and returns its fencing token.
    ///
    /// # Errors
    /// [`ElectorError::Stopped`] if the role or the elector stops first.
    pub async fn wait_until_leader(&self) -> Result<FencingToken, ElectorError> {
        let mut rx = self.shared.status.subscribe();
        loop {
            {
                let status = rx.borrow_and_update();
                if is_leader_now(&status)
                    && let Some(token) = status.leadership.token()
                {
                    return Ok(token);
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

    /// Waits until this node leads, then runs `work(cancel, token)`. `cancel`
    /// fires the moment leadership ends (deadline, lock loss, takeover,
    /// resign, shutdown); `work` should then stop promptly. Returns `work`'s
    /// output once it finishes.
    ///
    /// On resign and shutdown the lease is released only after `work` has
    /// finished (or after [`Config::drain_timeout`](crate::Config::drain_timeout)),
    /// so no other node leads while it still runs.
    ///
    /// # Errors
    /// [`ElectorError::Stopped`] if the role stops before this node leads.
    pub async fn run_while_leader<F, Fut, T>(&self, work: F) -> Result<T, ElectorError>
    where
        F: FnOnce(CancellationToken, FencingToken) -> Fut,
        Fut: Future<Output = T>,
    {
        let token = self.wait_until_leader().await?;
        let _guard = WorkGuard::new(self.shared.work.clone());
        let cancel = CancellationToken::new();
        let fut = work(cancel.clone(), token);
        tokio::pin!(fut);
        let mut rx = self.shared.status.subscribe();
        loop {
            let (still, deadline) = {
                let status = rx.borrow_and_update();
                let same = status.leadership.token() == Some(token);
                (same && is_leader_now(&status), status.deadline)
            };
            if !still {
                cancel.cancel();
                break;
            }
            let deadline = deadline.unwrap_or_else(Instant::now);
            tokio::select! {
                out = &mut fut => return Ok(out),
                _ = rx.changed() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
        Ok(fut.await)
    }

    /// Steps down (after draining `run_while_leader` work), releases the
    /// lease so a standby takes over at once, and keeps campaigning after a
    /// short hold-off. Returns once the lease is released. Does nothing
    /// harmful if this node does not lead.
    pub async fn resign(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ctrl.send(Ctrl::Resign(self.role.clone(), tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Stops campaigning for this role, stepping down and releasing as
    /// [`LeaderHandle::resign`] does. Idempotent.
    pub async fn shutdown(&self) {
        if self.shared.is_stopped() || *self.done.borrow() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self.ctrl.send(Ctrl::Stop(self.role.clone(), tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
