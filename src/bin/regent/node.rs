//! `regent node`: campaign for roles and print every leadership change;
//! Ctrl-C (or SIGTERM) resigns gracefully.
//!
//! Each line starts with the UTC time of day:
//!
//! ```text
//! 12:00:01.250 node web-1-3fa9c2 campaigning in namespace default for: scheduler
//! 12:00:01.262 scheduler            LEADER    term 4
//! 12:00:09.020 scheduler            follower  leader web-2-77d0e1
//! ```

use std::time::Duration;

use clap::Args;
use regent::sqlx::SqlxBackend;
use regent::{Config, Elector, LeaderHandle, Leadership, Namespace, NodeId, Role, TakeoverPolicy};
use tokio::task::JoinHandle;

use crate::db::{self, DbArgs, duration, now_utc};
use crate::error::CliError;
use crate::out::say;

/// Arguments of `regent node`.
#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    #[command(flatten)]
    pub(crate) db: DbArgs,
    /// A role to campaign for (repeat for several).
    #[arg(long = "role", required = true)]
    pub(crate) roles: Vec<String>,
    /// This node's id (default: host name + random suffix).
    #[arg(long)]
    node_id: Option<String>,
    /// Namespace of the roles.
    #[arg(long, default_value = "default")]
    pub(crate) namespace: String,
    /// Lease duration.
    #[arg(long, default_value = "10s", value_parser = duration)]
    lease: Duration,
    /// Renew interval (less than half the lease).
    #[arg(long, default_value = "2s", value_parser = duration)]
    renew: Duration,
    /// Follower retry interval.
    #[arg(long, default_value = "1s", value_parser = duration)]
    retry: Duration,
    /// Lock validation interval.
    #[arg(long, default_value = "1s", value_parser = duration)]
    validate: Duration,
    /// Takeover policy: wait-for-lease or immediate.
    #[arg(long, default_value = "wait-for-lease")]
    policy: String,
    /// Terminate zombie holders whose lease expired more than the grace ago
    /// (needs pg_signal_backend).
    #[arg(long)]
    preempt_zombies: bool,
    /// Zombie grace period.
    #[arg(long, default_value = "5s", value_parser = duration)]
    zombie_grace: Duration,
    /// application_name of the node's session connection.
    #[arg(long, default_value = "regent")]
    application_name: String,
}

/// One role a node campaigns for, handed to the per-role hook of [`run`].
#[allow(
    dead_code,
    reason = "`regent node` starts no per-role task; the fault-test node (tests/support/fault_node) reads these"
)]
pub(crate) struct Campaign<'a> {
    /// The node's backend.
    pub(crate) backend: &'a SqlxBackend,
    /// The roles' namespace.
    pub(crate) namespace: &'a Namespace,
    /// The role.
    pub(crate) role: &'a Role,
    /// This node.
    pub(crate) node_id: &'a NodeId,
    /// The role's handle.
    pub(crate) handle: &'a LeaderHandle,
}

/// A node id of the host name and a random suffix from the OS.
fn default_node_id() -> Result<NodeId, CliError> {
    let host = gethostname::gethostname();
    let suffix = getrandom::u64().map_err(|e| {
        CliError(format!(
            "cannot read randomness from the OS for a node id ({e}); pass --node-id"
        ))
    })?;
    Ok(NodeId::generate(&host.to_string_lossy(), suffix))
}

/// The text after the role of a leadership line.
fn describe(leadership: &Leadership) -> String {
    match leadership {
        Leadership::Leader { token, .. } => format!("LEADER    term {token}"),
        Leadership::Follower { leader: Some(l) } => format!("follower  leader {l}"),
        Leadership::Follower { leader: None } => "follower  no leader seen".to_owned(),
        Leadership::Stopped => "stopped".to_owned(),
    }
}

/// Runs `regent node`: campaigns for every role of `args`, prints each
/// leadership change, and on Ctrl-C/SIGTERM resigns and waits for every
/// task. `per_role` may start one more task per role (it is awaited at
/// the end too).
pub(crate) async fn run(
    args: NodeArgs,
    mut per_role: impl FnMut(Campaign<'_>) -> Option<JoinHandle<()>>,
) -> Result<u8, CliError> {
    let policy: TakeoverPolicy = args.policy.parse()?;
    let config = Config::builder()
        .lease_duration(args.lease)
        .renew_interval(args.renew)
        .retry_interval(args.retry)
        .retry_jitter(args.retry / 4)
        .validate_interval(args.validate)
        .attempt_timeout((args.renew * 3 / 4).min(args.lease / 3))
        .takeover_policy(policy)
        .preempt_zombies(args.preempt_zombies)
        .zombie_grace(args.zombie_grace)
        .build()?;
    let namespace = Namespace::new(args.namespace.as_str())?;
    let roles = args
        .roles
        .iter()
        .map(|r| Role::new(r.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    let node_id = match &args.node_id {
        Some(id) => NodeId::new(id.as_str())?,
        None => default_node_id()?,
    };
    let b = db::backend(&args.db, &args.application_name).await?;
    let elector = Elector::builder(b.clone())
        .namespace(namespace.clone())
        .config(config)
        .node_id(node_id)
        .build()
        .await?;
    say!(
        "{} node {} campaigning in namespace {} for: {}",
        now_utc(),
        elector.node_id(),
        namespace,
        args.roles.join(", ")
    );
    let mut tasks = Vec::new();
    // A role's campaign lasts while a clone of its handle does: keep them
    // until shutdown.
    let mut handles = Vec::new();
    for role in roles {
        let handle = elector.spawn(role.clone()).await?;
        tasks.extend(per_role(Campaign {
            backend: &b,
            namespace: &namespace,
            role: &role,
            node_id: elector.node_id(),
            handle: &handle,
        }));
        let mut rx = handle.watch();
        tasks.push(tokio::spawn(async move {
            loop {
                let line = describe(&rx.borrow_and_update());
                say!("{} {role:<20} {line}", now_utc());
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }));
        handles.push(handle);
    }
    db::shutdown_signal().await;
    say!("{} resigning and releasing every role", now_utc());
    elector.shutdown().await;
    drop(handles);
    for t in tasks {
        let _ = t.await;
    }
    say!("{} released; bye", now_utc());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_lines_read_as_the_fault_tests_parse_them() {
        assert_eq!(describe(&Leadership::Stopped), "stopped");
        assert_eq!(
            describe(&Leadership::Follower { leader: None }),
            "follower  no leader seen"
        );
    }

    #[test]
    fn default_node_ids_differ() {
        let a = default_node_id().unwrap();
        let b = default_node_id().unwrap();
        assert_ne!(a, b, "the random suffix comes from the OS");
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let prefix: String = host
            .chars()
            .filter(|c| !c.is_whitespace())
            .take(8)
            .collect();
        assert!(
            a.as_str().starts_with(&prefix),
            "{a} starts with the host name"
        );
    }
}
