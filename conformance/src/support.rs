//! Helpers the scenarios share, public so engine-specific scenarios can
//! use them too.
//!
//! Every wait is bounded by [`HANG_GUARD`], which only exists so a hung
//! test fails instead of running forever: no scenario asserts how fast
//! anything happens. The speed targets live in `benches/` and
//! `BENCHMARKS.md`.

use std::future::Future;
use std::time::Duration;

use regent_core::{
    Backend, Config, ConfigBuilder, Elector, LeaderHandle, Namespace, NodeId, Role, TakeoverPolicy,
    Term,
};

/// How long any wait may take before the scenario counts it as a hang.
/// Far above every lease, retry and timeout in the kit's configs.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// Short timings so the kit runs in seconds on a real database; generous
/// enough for a busy 2-core machine.
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

/// A unique name for a scenario's namespace (scenarios share one store on
/// a real database and may run at the same time).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos % 100_000
    )
}

/// A fresh namespace named after `prefix`.
pub fn namespace(prefix: &str) -> Namespace {
    Namespace::new(unique(prefix)).expect("valid namespace")
}

/// A role by name.
pub fn role(name: &str) -> Role {
    Role::new(name).expect("valid role")
}

/// A node id by name.
pub fn node_id(name: &str) -> NodeId {
    NodeId::new(name).expect("valid node id")
}

/// Waits until `f` holds, polling every 20 ms; panics after [`HANG_GUARD`].
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < HANG_GUARD,
            "hung for {HANG_GUARD:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`eventually`] for an async condition.
pub async fn eventually_async<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < HANG_GUARD,
            "hung for {HANG_GUARD:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `fut` to completion; panics after [`HANG_GUARD`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG_GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("hung for {HANG_GUARD:?} waiting for: {what}"),
    }
}

/// Waits until `handle` leads and returns its term.
pub async fn lead(what: &str, handle: &LeaderHandle) -> Term {
    within(what, handle.wait_until_leader())
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
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
    let elector = elector(node, namespace, id, config).await;
    let handle = elector.spawn(role.clone()).await.expect("campaign starts");
    (elector, handle)
}

/// Builds an elector for `node` in `namespace` named `id`, its retry
/// jitter seeded from `id` so a run on a simulated clock repeats exactly.
pub async fn elector<B: Backend + Clone>(
    node: &B,
    namespace: &Namespace,
    id: &str,
    config: Config,
) -> Elector {
    Elector::builder(node.clone())
        .namespace(namespace.clone())
        .node_id(node_id(id))
        .seed(seed(id))
        .config(config)
        .build()
        .await
        .expect("elector starts")
}

/// A fixed seed per node id (FNV-1a).
fn seed(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
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

/// Polls `check` every 50 ms for `span` (of the clock the test runs on);
/// `check` asserts what must hold throughout.
pub async fn throughout(span: Duration, mut check: impl FnMut()) {
    let until = tokio::time::Instant::now() + span;
    while tokio::time::Instant::now() < until {
        check();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check();
}
