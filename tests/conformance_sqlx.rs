//! The conformance suite against the sqlx backend on a real PostgreSQL.

#![cfg(feature = "sqlx")]

mod conformance;
mod support;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use conformance::{Factory, FenceError};
use regent::sqlx::{FencedError, SqlxBackend};
use regent::{Namespace, NodeId, Role, Term};
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

#[async_trait]
impl Factory for SqlxFactory {
    type Node = SqlxBackend;

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

    async fn fenced_write(
        &self,
        node: &SqlxBackend,
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

conformance_tests!(SqlxFactory::new().await);
