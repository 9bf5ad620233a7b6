//! The conformance kit against regent-sim's `SimBackend`, on tokio's paused
//! clock: the whole kit runs in virtual time, fast and deterministic.
//!
//! Skipped here: `unreachable_store_fails_at_start` (the simulated database
//! is always reachable; a partitioned node hangs instead of failing) and the
//! two scenarios about fenced work in flight (`blocked_claim_keeps_other_roles`,
//! `takeover_waits_for_fenced_work`): the simulator's fenced write is one
//! atomic check at commit, so there is no open fenced work for a takeover to
//! wait for.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use regent_conformance::{
    Engine, FenceError, FencedEntry, FencedWork, Fencing, Terminate, conformance_tests,
};
use regent_core::{Namespace, NodeId, Role, Term};
use regent_sim::backend::{SimBackend, SimCluster};
use regent_sim::db::FencedOutcome;

type Log = Arc<Mutex<Vec<(Namespace, Role, FencedEntry)>>>;

/// A fresh simulated database per scenario.
struct SimEngine {
    cluster: SimCluster,
    log: Log,
}

impl SimEngine {
    fn new() -> Self {
        Self {
            cluster: SimCluster::new(),
            log: Log::default(),
        }
    }
}

#[async_trait]
impl Engine for SimEngine {
    type Node = SimBackend;

    fn name(&self) -> &str {
        "sim"
    }

    async fn node(&self, name: &str) -> SimBackend {
        self.cluster.backend(name)
    }

    async fn prepare(&self, _node: &SimBackend) -> Result<(), String> {
        Ok(())
    }

    async fn crash(&self, node: &SimBackend) {
        self.cluster.crash(node.name());
    }

    fn terminate(&self) -> Option<&dyn Terminate<SimBackend>> {
        Some(self)
    }

    fn fencing(&self) -> Option<&dyn Fencing<SimBackend>> {
        Some(self)
    }
}

#[async_trait]
impl Terminate<SimBackend> for SimEngine {
    async fn terminate_session(&self, node: &SimBackend) -> bool {
        self.cluster.terminate_session(node.name())
    }
}

/// Fenced work on the simulator: the token is checked at begin (like a
/// fenced transaction's first statement) and again, atomically, at commit.
struct SimWork {
    cluster: SimCluster,
    log: Log,
    namespace: Namespace,
    role: Role,
    holder: NodeId,
    token: Term,
    pending: u64,
}

#[async_trait]
impl Fencing<SimBackend> for SimEngine {
    fn work_holds_off_takeover(&self) -> bool {
        false
    }

    async fn begin(
        &self,
        _node: &SimBackend,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        token: Term,
    ) -> Result<Box<dyn FencedWork>, FenceError> {
        let current = self.cluster.lease(namespace, role);
        if !current.is_some_and(|l| l.holder == holder.as_str() && l.term == token) {
            return Err(FenceError::Stale);
        }
        Ok(Box::new(SimWork {
            cluster: self.cluster.clone(),
            log: self.log.clone(),
            namespace: namespace.clone(),
            role: role.clone(),
            holder: holder.clone(),
            token,
            pending: 0,
        }))
    }

    async fn log(&self, namespace: &Namespace, role: &Role) -> Result<Vec<FencedEntry>, String> {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(log
            .iter()
            .filter(|(ns, r, _)| ns == namespace && r == role)
            .map(|(_, _, e)| e.clone())
            .collect())
    }
}

#[async_trait]
impl FencedWork for SimWork {
    async fn append(&mut self) -> Result<(), FenceError> {
        self.pending += 1;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), FenceError> {
        let outcome = self
            .cluster
            .fenced_write(&self.namespace, &self.role, &self.holder, self.token)
            .map_err(|e| FenceError::Other(e.to_string()))?;
        match outcome {
            FencedOutcome::Accepted => {
                // Atomic: the commit sees every earlier commit.
                let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
                for _ in 0..self.pending {
                    let seen = log
                        .iter()
                        .filter(|(ns, r, _)| *ns == self.namespace && *r == self.role)
                        .count() as u64;
                    log.push((
                        self.namespace.clone(),
                        self.role.clone(),
                        FencedEntry {
                            holder: self.holder.as_str().to_owned(),
                            term: self.token,
                            seq: seen + 1,
                        },
                    ));
                }
                Ok(())
            }
            FencedOutcome::Rejected { .. } => Err(FenceError::Stale),
        }
    }
}

conformance_tests!(
    #[tokio::test(start_paused = true)]
    SimEngine::new()
);
