//! Runs one [`Command`] against the backend.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Backend, BackendError, PreemptOutcome};
use crate::machine::{Command, CommandOutput, CommandResult};
use crate::types::{Namespace, NodeId};

/// Everything a command needs besides itself.
#[derive(Clone)]
pub(crate) struct ExecContext {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) namespace: Namespace,
    pub(crate) node: NodeId,
    pub(crate) lease: Duration,
    pub(crate) timeout: Duration,
}

/// Runs `command` with the per-attempt timeout. A call that takes longer is
/// dropped and reported as [`BackendError::Timeout`].
pub(crate) async fn execute(ctx: ExecContext, command: Command) -> CommandResult {
    let started = tokio::time::Instant::now();
    let name = command.name();
    let result = match tokio::time::timeout(ctx.timeout, run(&ctx, command)).await {
        Ok(result) => result,
        Err(_) => Err(BackendError::Timeout(ctx.timeout)),
    };
    if name == "renew" {
        metrics::histogram!("regent_renew_latency_seconds", "namespace" => ctx.namespace.to_string())
            .record(started.elapsed().as_secs_f64());
    }
    result
}

async fn run(ctx: &ExecContext, command: Command) -> CommandResult {
    let b = &ctx.backend;
    let ns = &ctx.namespace;
    Ok(match command {
        Command::TryLock { roles, .. } => CommandOutput::TryLock(b.try_lock(ns, &roles).await?),
        Command::Claim { role, .. } => {
            CommandOutput::Claim(b.claim(ns, &role, &ctx.node, ctx.lease).await?)
        }
        Command::Renew { leases, .. } => {
            CommandOutput::Renew(b.renew(ns, &ctx.node, &leases, ctx.lease).await?)
        }
        Command::Validate { roles, .. } => CommandOutput::Validate(b.held(ns, &roles).await?),
        Command::Ping { .. } => {
            b.ping().await?;
            CommandOutput::Ping
        }
        Command::Preempt { lease, grace, .. } => {
            CommandOutput::Preempt(match b.deposer() {
                Some(d) => d.depose(&lease, grace).await?,
                // The machine reports it once and stops asking.
                None => PreemptOutcome::NotPermitted,
            })
        }
        Command::Release { role, term, .. } => {
            let released = b.release(ns, &role, &ctx.node, term).await?;
            if let (Some(e), Some(term)) = (&released.expire_failed, term) {
                // The lease runs out by itself; freeing the lock mattered more.
                tracing::warn!(
                    role = %role, term = %term, error = %e,
                    "could not expire the lease on release; standbys wait for it to run out"
                );
            }
            if released.notified {
                CommandOutput::ReleasedAndNotified
            } else {
                CommandOutput::Released
            }
        }
        Command::Notify { role, .. } => {
            if let Some(n) = b.notifier() {
                n.publish_release(ns, &role).await?;
            }
            CommandOutput::Notified
        }
        Command::ResetSession { .. } => {
            b.reset().await;
            CommandOutput::Reset
        }
    })
}
