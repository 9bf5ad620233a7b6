//! Shared helpers: a reachable PostgreSQL, one private schema and namespace
//! per test, and an admin connection.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use regent_core::Namespace;
use regent_postgres::AdvisoryKey;
use regent_tokio_postgres::TokioPgBackend;
use tokio_postgres::{Client, Config, NoTls};

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// One test's private world: schema (holding the lease table) and namespace
/// share a unique name, so neither rows nor advisory keys collide.
pub struct Ctx {
    pub url: String,
    pub schema: String,
    pub uniq: String,
    pub ns: Namespace,
    pub admin: Client,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Ctx {
    pub async fn new(test: &str) -> Ctx {
        let url = database_url();
        let admin = connect_admin(&url).await;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let uniq = format!(
            "{}_{}_{:x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        let schema: String = format!("rtp_{uniq}_{test}").chars().take(63).collect();
        let ctx = Ctx {
            url,
            uniq,
            ns: Namespace::new(schema.clone()).unwrap(),
            schema,
            admin,
        };
        ctx.backend("setup").await.migrate().await.unwrap();
        ctx
    }

    /// A new node (own session, own pool) on this test's schema.
    pub async fn backend(&self, app: &str) -> TokioPgBackend {
        TokioPgBackend::builder()
            .schema(&self.schema)
            .application_name(&self.app(app))
            .max_pool_connections(2)
            .connect(&self.url)
            .await
            .unwrap()
    }

    /// A new node built from a user-made pool (`RecyclingMethod::Fast`)
    /// and config.
    pub fn backend_from_pool(&self, app: &str) -> TokioPgBackend {
        let config: Config = self.url.parse().unwrap();
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager).max_size(2).build().unwrap();
        TokioPgBackend::builder()
            .schema(&self.schema)
            .application_name(&self.app(app))
            .build(pool, config)
            .unwrap()
    }

    /// `application_name` unique to this test.
    pub fn app(&self, app: &str) -> String {
        format!("{app}-{}", self.uniq)
    }

    /// Pids holding the advisory lock `key` (granted), from any session.
    pub async fn lock_holders(&self, key: AdvisoryKey) -> Vec<i32> {
        let rows = self
            .admin
            .query(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND objsubid = 2 AND classid = ($1::int4::int8 & 4294967295)::oid \
                 AND objid = ($2::int4::int8 & 4294967295)::oid \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&key.ns, &key.role],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// Waits (up to 3 s) until nobody holds `key`; panics otherwise.
    pub async fn assert_lock_freed(&self, key: AdvisoryKey) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            let holders = self.lock_holders(key).await;
            if holders.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "advisory lock {key:?} still held by {holders:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn terminate(&self, pid: i32) {
        let row = self
            .admin
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "pg_terminate_backend({pid}) failed");
    }

    /// The pid of the (single) connection with this application name.
    pub async fn pid_of_app(&self, app: &str) -> i32 {
        let rows = self
            .admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "expected one connection named {app:?}");
        rows[0].get(0)
    }

    pub async fn drop_schema(self) {
        let _ = self
            .admin
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                self.schema
            ))
            .await;
    }
}

async fn connect_admin(url: &str) -> Client {
    let attempt = async {
        let config: Config = url.parse()?;
        config.connect(NoTls).await
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            client
        }
        Ok(Err(e)) => panic!(
            "PostgreSQL is not reachable at {url} ({e}); start it or set DATABASE_URL=postgres://user@host:port/db"
        ),
        Err(_) => panic!(
            "PostgreSQL at {url} did not answer within 5 s; start it or set DATABASE_URL=postgres://user@host:port/db"
        ),
    }
}
