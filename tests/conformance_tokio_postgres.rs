//! The conformance kit and the PostgreSQL-only scenarios against the
//! tokio-postgres backend on a real PostgreSQL.

#![cfg(feature = "tokio-postgres")]

mod conformance;
mod support;

use std::time::Duration;

use async_trait::async_trait;
use conformance::{APPEND_SQL, PgFactory, Target};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use regent::tokio_postgres::{FencedError, FencedTransaction, TokioPgBackend};
use regent::{Namespace, NodeId, Role, Term};
use regent_conformance::support::{HANG_GUARD, campaign, eventually, lead};
use regent_conformance::{FenceError, FencedWork};
use tokio_postgres::{Config, NoTls};

struct TpFactory {
    url: String,
    target: Target,
}

impl TpFactory {
    /// Session mode, directly.
    async fn new() -> Self {
        let url = support::pg::database_url().await;
        let target = Target::session(&url);
        Self { url, target }
    }

    /// Lease mode, directly.
    async fn lease() -> Self {
        let url = support::pg::database_url().await;
        let target = Target::lease(&url);
        Self { url, target }
    }

    /// Lease mode through PgBouncer in transaction mode.
    async fn lease_through_pgbouncer() -> Self {
        let url = support::pg::database_url().await;
        let target = Target::lease_through_pgbouncer(&url);
        Self { url, target }
    }

    /// As `lease_through_pgbouncer`, listening for releases directly.
    async fn lease_through_pgbouncer_listening_directly() -> Self {
        let url = support::pg::database_url().await;
        let target = Target::lease_through_pgbouncer_listening_directly(&url);
        Self { url, target }
    }

    fn builder(&self) -> regent::tokio_postgres::TokioPgBackendBuilder {
        let b = regent::tokio_postgres::TokioPgBackend::builder();
        let b = if self.target.lease { b.lease_mode() } else { b };
        match &self.target.listener_url {
            Some(url) => b.listener_url(url),
            None => b,
        }
    }

    fn parts(&self, user: Option<&str>) -> (Pool, Config) {
        let mut config: Config = self.target.node_url.parse().expect("valid DATABASE_URL");
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
            // Lease mode runs every call on the pool: room for fenced work
            // in flight beside the election's statements.
            Pool::builder(mgr)
                .max_size(if self.target.lease { 8 } else { 3 })
                .build()
                .expect("pool"),
            config,
        )
    }
}

/// A fenced transaction of the tokio-postgres backend as kit fenced work.
struct TpWork {
    tx: FencedTransaction,
    entry: (String, String, String, i64),
}

#[async_trait]
impl FencedWork for TpWork {
    async fn append(&mut self) -> Result<(), FenceError> {
        let (ns, role, holder, term) = &self.entry;
        self.tx
            .execute(APPEND_SQL, &[ns, role, holder, term])
            .await
            .map(|_| ())
            .map_err(|e| FenceError::Other(e.to_string()))
    }

    async fn commit(self: Box<Self>) -> Result<(), FenceError> {
        self.tx
            .commit()
            .await
            .map_err(|e| FenceError::Other(e.to_string()))
    }
}

#[async_trait]
impl PgFactory for TpFactory {
    type Node = TokioPgBackend;
    fn name(&self) -> &'static str {
        "tokio-postgres"
    }
    fn url(&self) -> &str {
        &self.url
    }
    fn lease_mode(&self) -> bool {
        self.target.lease
    }

    fn notifies(&self) -> bool {
        self.target.notifies()
    }

    async fn node(&self, app: &str, user: Option<&str>) -> TokioPgBackend {
        let (pool, config) = self.parts(user);
        self.builder()
            .application_name(app)
            .build(pool, config)
            .expect("options")
    }
    async fn node_for_url(&self, url: &str) -> Result<TokioPgBackend, String> {
        self.builder().connect(url).await.map_err(|e| e.to_string())
    }
    async fn node_in_schema(&self, app: &str, schema: &str) -> TokioPgBackend {
        let (pool, config) = self.parts(None);
        self.builder()
            .application_name(app)
            .schema(schema)
            .build(pool, config)
            .expect("options")
    }
    async fn migrate(&self, node: &TokioPgBackend) -> Result<(), String> {
        node.migrate().await.map_err(|e| e.to_string())
    }
    fn session_pid(&self, node: &TokioPgBackend) -> Option<i32> {
        node.session_pid()
    }
    async fn fenced(
        &self,
        node: &TokioPgBackend,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        token: Term,
    ) -> Result<Box<dyn FencedWork>, FenceError> {
        match node
            .fenced(&regent::Fence::new(
                namespace.clone(),
                role.clone(),
                holder.clone(),
                token,
            ))
            .await
        {
            Ok(tx) => Ok(Box::new(TpWork {
                tx,
                entry: (
                    namespace.as_str().to_owned(),
                    role.as_str().to_owned(),
                    holder.as_str().to_owned(),
                    i64::from(token),
                ),
            })),
            Err(FencedError::Stale(_)) => Err(FenceError::Stale),
            Err(e) => Err(FenceError::Other(e.to_string())),
        }
    }
}

all_pg_suites!(TpFactory);

/// This backend's edge: the session's connection future ends the moment
/// the server terminates the backend, so the leader steps down at once.
/// Validation, keepalive and renewal are all an hour or more away here, so
/// nothing else can notice the loss within the hang guard: stepping down at
/// all proves the closed connection was seen directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_session_is_noticed_directly() {
    use regent::TakeoverPolicy;

    let f = TpFactory::new().await;
    let ns = Namespace::new(regent_conformance::support::unique("instant")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let node = f
        .node(&regent_conformance::support::unique("app"), None)
        .await;
    f.migrate(&node).await.unwrap();
    let hour = Duration::from_secs(3600);
    let config = regent::Config::builder()
        .lease_duration(hour * 4)
        .renew_interval(hour)
        .attempt_timeout(Duration::from_secs(5))
        .validate_interval(hour)
        .keepalive_interval(hour)
        .takeover_policy(TakeoverPolicy::WaitForLease)
        .build()
        .unwrap();
    assert!(hour > HANG_GUARD * 10);
    let (elector, handle) = campaign(&node, &ns, "node-a", &role, config).await;
    lead("node-a leads", &handle).await;
    let pid = node.session_pid().expect("an open lock session");
    let admin = conformance::admin(f.url()).await;
    let (done,): (bool,) = sqlx::query_as("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(done);
    eventually("the leader steps down on the closed connection", || {
        !handle.is_leader()
    })
    .await;
    elector.shutdown().await;
}
