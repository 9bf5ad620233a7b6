//! Test support: a per-test schema on the local (or `DATABASE_URL`) server.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regent_core::{Namespace, NodeId, Role};
use regent_sqlx::SqlxBackend;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// One test's world: its own schema (so tests run in parallel) and a pool.
pub struct Ctx {
    pub pool: PgPool,
    pub schema: String,
    pub url: String,
    cleaned: bool,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Ctx {
    /// A fresh schema with the lease table migrated.
    pub async fn new(tag: &str) -> Ctx {
        let ctx = Ctx::without_table(tag).await;
        ctx.node("migrate").migrate().await.expect("migrate");
        ctx
    }

    /// A fresh, not yet created, schema name.
    pub async fn without_table(tag: &str) -> Ctx {
        let url = database_url();
        let pool = match PgPoolOptions::new()
            .max_connections(6)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
        {
            Ok(pool) => pool,
            Err(e) => panic!(
                "no PostgreSQL at {url} ({e}): start the local server or set \
                 DATABASE_URL=postgres://user@host:port/db"
            ),
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let schema = format!("rt_{tag}_{}_{seq}_{nanos:x}", std::process::id());
        assert!(schema.len() <= 50, "tag too long: {schema}");
        Ctx {
            pool,
            schema,
            url,
            cleaned: false,
        }
    }

    /// A new node (own session) on this test's schema, whose sessions carry
    /// `application_name` = `<schema>-<name>`.
    pub fn node(&self, name: &str) -> SqlxBackend {
        SqlxBackend::builder()
            .schema(&self.schema)
            .application_name(&self.app(name))
            .statement_timeout(Duration::from_secs(5))
            .build(self.pool.clone())
            .expect("build backend")
    }

    /// This test's namespace. Advisory locks are per database, not per
    /// schema, so parallel tests must not share a namespace.
    pub fn ns(&self) -> Namespace {
        Namespace::new(self.schema.clone()).expect("namespace")
    }

    pub fn app(&self, name: &str) -> String {
        format!("{}-{name}", self.schema)
    }

    /// Pids of the connections with this `application_name`.
    pub async fn pids(&self, app: &str) -> Vec<i32> {
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
            .bind(app)
            .fetch_all(&self.pool)
            .await
            .expect("pg_stat_activity")
    }

    /// Terminates every connection with this `application_name`.
    pub async fn terminate(&self, app: &str) -> usize {
        let pids = self.pids(app).await;
        for pid in &pids {
            let ok: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .fetch_one(&self.pool)
                .await
                .expect("terminate");
            assert!(ok);
        }
        self.wait_gone(app).await;
        pids.len()
    }

    /// Waits until no connection has this `application_name` (so the
    /// locks of a closed session are free).
    pub async fn wait_gone(&self, app: &str) {
        for _ in 0..250 {
            if self.pids(app).await.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("connections of {app} did not go away within 5 s");
    }

    pub async fn cleanup(mut self) {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop_schema(&self.schema)))
            .execute(&self.pool)
            .await;
        self.pool.close().await;
        self.cleaned = true;
    }
}

fn drop_schema(schema: &str) -> String {
    format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")
}

/// A test that panicked never reached `cleanup`: drop its schema anyway.
impl Drop for Ctx {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let (url, sql) = (self.url.clone(), drop_schema(&self.schema));
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&pool)
                    .await?;
                pool.close().await;
                Ok::<_, sqlx::Error>(())
            })
            .map_err(std::io::Error::other)
        })
        .join();
    }
}

/// Whether `node` gets `role`'s lock in one `try_lock`.
pub async fn granted(node: &SqlxBackend, ns: &Namespace, role: &Role) -> bool {
    use regent_core::Lock;
    let out = node
        .try_lock(ns, std::slice::from_ref(role))
        .await
        .expect("try_lock");
    out.attempts[0].granted
}

pub fn role(name: &str) -> Role {
    Role::new(name).expect("role")
}

pub fn node_id(name: &str) -> NodeId {
    NodeId::new(name).expect("node id")
}

pub const LEASE: Duration = Duration::from_secs(10);
