//! The conformance kit and the PostgreSQL-only scenarios against the sqlx
//! backend on a real PostgreSQL.

#![cfg(feature = "sqlx")]

mod conformance;
mod support;

use std::str::FromStr;

use async_trait::async_trait;
use conformance::{APPEND_SQL, PgFactory, Target};
use regent::sqlx::{FencedError, SqlxBackend};
use regent::{Namespace, NodeId, Role, Term};
use regent_conformance::{FenceError, FencedWork};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

struct SqlxFactory {
    url: String,
    target: Target,
}

impl SqlxFactory {
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

    fn pool(&self, user: Option<&str>) -> sqlx::PgPool {
        let mut opts =
            PgConnectOptions::from_str(&self.target.node_url).expect("valid DATABASE_URL");
        if let Some(user) = user {
            opts = opts.username(user);
        }
        // Lease mode runs every call on the pool: room for fenced work
        // in flight beside the election's statements.
        let size = if self.target.lease { 8 } else { 3 };
        PgPoolOptions::new()
            .max_connections(size)
            .connect_lazy_with(opts)
    }

    fn builder(&self) -> regent::sqlx::SqlxBackendBuilder {
        let b = regent::sqlx::SqlxBackend::builder();
        let b = if self.target.lease { b.lease_mode() } else { b };
        match &self.target.listener_url {
            Some(url) => b.listener_url(url),
            None => b,
        }
    }
}

/// A fenced transaction of the sqlx backend as kit fenced work.
struct SqlxWork {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    entry: (String, String, String, i64),
}

#[async_trait]
impl FencedWork for SqlxWork {
    async fn append(&mut self) -> Result<(), FenceError> {
        let (ns, role, holder, term) = &self.entry;
        // Unnamed (`persistent(false)`), as any statement in a transaction
        // behind a transaction pooler must be.
        sqlx::query(APPEND_SQL)
            .persistent(false)
            .bind(ns)
            .bind(role)
            .bind(holder)
            .bind(term)
            .execute(&mut *self.tx)
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
impl PgFactory for SqlxFactory {
    type Node = SqlxBackend;

    fn name(&self) -> &'static str {
        "sqlx"
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

    async fn node(&self, app: &str, user: Option<&str>) -> SqlxBackend {
        self.builder()
            .application_name(app)
            .build(self.pool(user))
            .expect("valid backend options")
    }

    async fn node_for_url(&self, url: &str) -> Result<SqlxBackend, String> {
        self.builder().connect(url).await.map_err(|e| e.to_string())
    }

    async fn node_in_schema(&self, app: &str, schema: &str) -> SqlxBackend {
        self.builder()
            .application_name(app)
            .schema(schema)
            .build(self.pool(None))
            .expect("valid backend options")
    }

    async fn migrate(&self, node: &SqlxBackend) -> Result<(), String> {
        node.migrate().await.map_err(|e| e.to_string())
    }

    fn session_pid(&self, node: &SqlxBackend) -> Option<i32> {
        node.session_pid()
    }

    async fn fenced(
        &self,
        node: &SqlxBackend,
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
            Ok(tx) => Ok(Box::new(SqlxWork {
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

all_pg_suites!(SqlxFactory);
