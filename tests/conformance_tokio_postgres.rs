//! The conformance suite against the tokio-postgres backend on a real
//! PostgreSQL.

#![cfg(feature = "tokio-postgres")]

mod conformance;
mod support;

use std::time::Duration;

use async_trait::async_trait;
use conformance::{Factory, FenceError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use regent::tokio_postgres::{FencedError, TokioPgBackend};
use regent::{Namespace, NodeId, Role, Term};
use tokio_postgres::{Config, NoTls};

struct TpFactory {
    url: String,
}

impl TpFactory {
    async fn new() -> Self {
        Self {
            url: support::pg::database_url().await,
        }
    }
    fn parts(&self, user: Option<&str>) -> (Pool, Config) {
        let mut config: Config = self.url.parse().expect("valid DATABASE_URL");
        if let Some(user) = user {
            config.user(user);
        }
        let mgr = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Clean,
            },
        );
        (
            Pool::builder(mgr).max_size(3).build().expect("pool"),
            config,
        )
    }
}

#[async_trait]
impl Factory for TpFactory {
    type Node = TokioPgBackend;
    fn url(&self) -> &str {
        &self.url
    }
    async fn node(&self, app: &str, user: Option<&str>) -> TokioPgBackend {
        let (pool, config) = self.parts(user);
        TokioPgBackend::builder()
            .application_name(app)
            .build(pool, config)
            .expect("options")
    }
    async fn node_for_url(&self, url: &str) -> Result<TokioPgBackend, String> {
        TokioPgBackend::connect(url)
            .await
            .map_err(|e| e.to_string())
    }
    async fn node_in_schema(&self, app: &str, schema: &str) -> TokioPgBackend {
        let (pool, config) = self.parts(None);
        TokioPgBackend::builder()
            .application_name(app)
            .schema(schema)
            .build(pool, config)
            .expect("options")
    }
    async fn migrate(&self, node: &TokioPgBackend) -> Result<(), String> {
        node.migrate().await.map_err(|e| e.to_string())
    }
    async fn fenced_write(
        &self,
        node: &TokioPgBackend,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        token: Term,
        hold: Duration,
    ) -> Result<(), FenceError> {
        match node
            .fenced(&regent::Fence::new(
                namespace.clone(),
                role.clone(),
                holder.clone(),
                token,
            ))
            .await
        {
            Ok(tx) => {
                tokio::time::sleep(hold).await;
                tx.commit()
                    .await
                    .map_err(|e| FenceError::Other(e.to_string()))
            }
            Err(FencedError::Stale { .. }) => Err(FenceError::Stale),
            Err(e) => Err(FenceError::Other(e.to_string())),
        }
    }
}

conformance_tests!(TpFactory::new().await);

/// This backend's edge: the session's connection future ends the moment
/// the server terminates the backend, so the leader steps down at once —
/// long before the (deliberately slow, 10 s) validation would notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_session_is_noticed_before_validation() {
    use regent::{Config, Lease, TakeoverPolicy};
    use tokio::time::Instant;

    let f = TpFactory::new().await;
    let ns = Namespace::new(conformance::unique("instant")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let node = f.node(&conformance::unique("app"), None).await;
    f.migrate(&node).await.unwrap();
    let config = Config::builder()
        .lease_duration(Duration::from_secs(30))
        .renew_interval(Duration::from_secs(10))
        .validate_interval(Duration::from_secs(10))
        .keepalive_interval(Duration::from_secs(30))
        .takeover_policy(TakeoverPolicy::WaitForLease)
        .build()
        .unwrap();
    let (elector, handle) = conformance::campaign(&node, &ns, "node-a", &role, config).await;
    handle.wait_until_leader().await.unwrap();
    let pid = node.list(Some(&ns)).await.unwrap()[0]
        .session
        .expect("lease row names the session pid");
    let admin = conformance::admin(f.url()).await;
    let t = Instant::now();
    sqlx::query("SELECT pg_terminate_backend($1::int)")
        .bind(pid as i32)
        .execute(&admin)
        .await
        .unwrap();
    conformance::eventually("leader steps down", Duration::from_secs(10), || {
        !handle.is_leader()
    })
    .await;
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "step-down took {took:?}; the validate interval is 10 s, so the closed \
         connection was not noticed directly"
    );
    elector.shutdown().await;
}
