//! The conformance kit and the PostgreSQL-only scenarios against the sqlx
//! backend on a real PostgreSQL.

#![cfg(feature = "sqlx")]

mod conformance;
mod support;

use std::str::FromStr;

use async_trait::async_trait;
use conformance::{APPEND_SQL, PgFactory};
use regent::sqlx::{FencedError, SqlxBackend};
use regent::{Namespace, NodeId, Role, Term};
use regent_conformance::{FenceError, FencedWork};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

struct SqlxFactory {
    url: String,
}

impl SqlxFactory {
    async fn new() -> Self {
        Self {
            url: support::pg::database_url().await,
        }
    }

    fn pool(&self, user: Option<&str>) -> sqlx::PgPool {
        let mut opts = PgConnectOptions::from_str(&self.url).expect("valid DATABASE_URL");
        if let Some(user) = user {
            opts = opts.username(user);
        }
        PgPoolOptions::new()
            .max_connections(3)
            .connect_lazy_with(opts)
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
        sqlx::query(APPEND_SQL)
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

    async fn node(&self, app: &str, user: Option<&str>) -> SqlxBackend {
        SqlxBackend::builder()
            .application_name(app)
            .build(self.pool(user))
            .expect("valid backend options")
    }

    async fn node_for_url(&self, url: &str) -> Result<SqlxBackend, String> {
        SqlxBackend::connect(url).await.map_err(|e| e.to_string())
    }

    async fn node_in_schema(&self, app: &str, schema: &str) -> SqlxBackend {
        SqlxBackend::builder()
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

/// The engine-neutral kit.
mod kit {
    use super::*;
    regent_conformance::conformance_tests!(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        conformance::Pg::new(SqlxFactory::new().await).await
    );
}

/// The PostgreSQL-only scenarios.
mod pg {
    use super::*;
    pg_conformance_tests!(SqlxFactory::new().await);
}
