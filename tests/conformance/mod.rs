//! The backend conformance suite: every scenario is written once, generic
//! over a [`Factory`], and each backend's test file runs all of them
//! through [`conformance_tests!`]. A backend passes when every scenario
//! passes with no backend-specific changes.
//!
//! Scenarios talk to PostgreSQL as an operator would (terminate backends,
//! count connections, plant zombies) through a separate admin pool.

#![allow(dead_code)]

pub mod crash;
pub mod scenarios;
pub mod scenarios_db;

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use regent::{
    Backend, Config, ConfigBuilder, Elector, LeaderHandle, Namespace, NodeId, Role, TakeoverPolicy,
    Term,
};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// Why a fenced write did not happen.
#[derive(Debug)]
pub enum FenceError {
    /// The token is stale: someone else holds the lease now.
    Stale,
    /// Anything else.
    Other(String),
}

/// What a backend provides to the suite.
#[async_trait]
pub trait Factory: Send + Sync + 'static {
    /// One node's backend (one session). Clones share the session.
    type Node: Backend + Clone;

    /// The superuser URL of the database under test.
    fn url(&self) -> &str;

    /// A new node with its own session whose connections carry
    /// `application_name = app`, connecting as `user` (trust auth) if given.
    async fn node(&self, app: &str, user: Option<&str>) -> Self::Node;

    /// A node for a URL that may not work (for the unreachable test).
    async fn node_for_url(&self, url: &str) -> Result<Self::Node, String>;

    /// A node whose lease table lives in `schema`.
    async fn node_in_schema(&self, app: &str, schema: &str) -> Self::Node;

    /// Creates the node's lease table.
    async fn migrate(&self, node: &Self::Node) -> Result<(), String>;

    /// Opens a fenced transaction for `token`, keeps it open for `hold`,
    /// then commits.
    async fn fenced_write(
        &self,
        node: &Self::Node,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        token: Term,
        hold: Duration,
    ) -> Result<(), FenceError>;
}

/// Short timings so the suite runs in seconds; generous enough for a busy
/// 2-core machine.
pub fn fast_config(policy: TakeoverPolicy) -> Config {
    fast_builder(policy).build().expect("valid test config")
}

/// [`fast_config`] as a builder, for scenarios that change one more knob.
pub fn fast_builder(policy: TakeoverPolicy) -> ConfigBuilder {
    Config::builder()
        .lease_duration(Duration::from_secs(2))
        .renew_interval(Duration::from_millis(400))
        .attempt_timeout(Duration::from_millis(900))
        .validate_interval(Duration::from_millis(250))
        .keepalive_interval(Duration::from_secs(1))
        .retry_interval(Duration::from_millis(300))
        .retry_jitter(Duration::from_millis(50))
        .safety_margin(Duration::from_millis(100))
        .drain_timeout(Duration::from_secs(1))
        .takeover_policy(policy)
}

/// An admin pool on the database under test.
pub async fn admin(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {url}: {e}"))
}

/// A unique name for a test's namespace, schema or application name.
pub fn unique(prefix: &str) -> String {
    crate::support::pg::unique(prefix)
}

/// Waits (bounded) until `f` holds, polling every 20 ms.
pub async fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`eventually`] for an async condition.
pub async fn eventually_async<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Builds an elector for `node` in `namespace` named `id` and campaigns for
/// `role`.
pub async fn campaign<B: Backend + Clone>(
    node: &B,
    namespace: &Namespace,
    id: &str,
    role: &Role,
    config: Config,
) -> (Elector, LeaderHandle) {
    let elector = Elector::builder(node.clone())
        .namespace(namespace.clone())
        .node_id(NodeId::new(id).expect("valid node id"))
        .config(config)
        .build()
        .await
        .expect("elector starts");
    let handle = elector.spawn(role.clone()).await.expect("campaign starts");
    (elector, handle)
}

/// The indices of the handles that lead now.
pub fn leaders(handles: &[LeaderHandle]) -> Vec<usize> {
    handles
        .iter()
        .enumerate()
        .filter(|(_, h)| h.is_leader())
        .map(|(i, _)| i)
        .collect()
}

/// Generates one `#[tokio::test]` per scenario for a factory expression.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@each $factory;
            one_leader_others_observe,
            resign_hands_over_by_notification,
            crash_wait_for_lease,
            crash_immediate,
            terminated_session_steps_down,
            zombie_preempted_when_privileged,
            zombie_never_preempted_while_lease_valid,
            zombie_refused_without_privilege,
            fenced_stale_token_fails,
            takeover_waits_for_fenced_transaction,
            many_roles_one_session,
            names_round_trip,
            namespaces_do_not_interfere,
            concurrent_migrate,
            unreachable_database_fails_fast,
            all_connections_dropped_then_recovery,
        );
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let factory = $factory;
                $crate::conformance::run(&factory, stringify!($name)).await;
            }
        )*
    };
}

/// Runs one scenario by name.
pub async fn run<F: Factory>(f: &F, name: &str) {
    use scenarios::*;
    use scenarios_db::*;
    match name {
        "one_leader_others_observe" => one_leader_others_observe(f).await,
        "resign_hands_over_by_notification" => resign_hands_over_by_notification(f).await,
        "crash_wait_for_lease" => crash(f, TakeoverPolicy::WaitForLease).await,
        "crash_immediate" => crash(f, TakeoverPolicy::Immediate).await,
        "terminated_session_steps_down" => terminated_session_steps_down(f).await,
        "zombie_preempted_when_privileged" => zombie_preempted_when_privileged(f).await,
        "zombie_never_preempted_while_lease_valid" => {
            zombie_never_preempted_while_lease_valid(f).await
        }
        "zombie_refused_without_privilege" => zombie_refused_without_privilege(f).await,
        "fenced_stale_token_fails" => fenced_stale_token_fails(f).await,
        "takeover_waits_for_fenced_transaction" => takeover_waits_for_fenced_transaction(f).await,
        "many_roles_one_session" => many_roles_one_session(f).await,
        "names_round_trip" => names_round_trip(f).await,
        "namespaces_do_not_interfere" => namespaces_do_not_interfere(f).await,
        "concurrent_migrate" => concurrent_migrate(f).await,
        "unreachable_database_fails_fast" => unreachable_database_fails_fast(f).await,
        "all_connections_dropped_then_recovery" => all_connections_dropped_then_recovery(f).await,
        other => panic!("unknown conformance scenario {other}"),
    }
}
