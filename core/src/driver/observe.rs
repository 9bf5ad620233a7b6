//! Watching a role without campaigning.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::debug;

use crate::backend::Backend;
use crate::types::{DbTimestamp, Namespace, Role, Term};

/// A role's current lease as an observer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLease {
    /// The leader's node id.
    pub holder: String,
    /// The leader's term (its fencing token).
    pub term: Term,
    /// When its lease ends unless renewed, in database time.
    pub lease_until: DbTimestamp,
}

/// Follows who leads a role by reading its lease every retry interval.
/// Dropping every clone stops the polling.
#[derive(Debug, Clone)]
pub struct Observer {
    role: Role,
    rx: watch::Receiver<Option<ObservedLease>>,
}

impl Observer {
    pub(crate) fn spawn(
        backend: Arc<dyn Backend>,
        namespace: Namespace,
        role: Role,
        every: Duration,
    ) -> Self {
        let (tx, rx) = watch::channel(None);
        let watched = role.clone();
        tokio::spawn(async move {
            let roles = [watched];
            loop {
                match backend.read(&namespace, &roles).await {
                    Ok((now, rows)) => {
                        let current = rows
                            .into_iter()
                            .find(|r| r.role == roles[0] && !r.expired_at(now))
                            .map(|r| ObservedLease {
                                holder: r.holder,
                                term: r.term,
                                lease_until: r.lease_until,
                            });
                        tx.send_if_modified(|cur| {
                            let changed = *cur != current;
                            *cur = current;
                            changed
                        });
                    }
                    Err(e) => debug!(error = %e, "observer could not read the lease; retrying"),
                }
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Self { role, rx }
    }

    /// The observed role.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The current leader, if its lease is running.
    pub fn leader(&self) -> Option<ObservedLease> {
        self.rx.borrow().clone()
    }

    /// A receiver of every change of leader.
    pub fn watch(&self) -> watch::Receiver<Option<ObservedLease>> {
        self.rx.clone()
    }
}
