//! Lease mode's pool statements through a real PgBouncer in
//! `pool_mode=transaction`, on both drivers, with a control that shows the
//! pooler really moves a client between server connections.
//!
//! PgBouncer hands a lone client back the server connection it released
//! last. So: the client runs a statement (server connection `p1`), an
//! intruder opens a transaction and is handed `p1`, and the client's next
//! statement must run on another server connection `p2`. There, a
//! statement the driver prepared by name on `p1` does not exist (the
//! control: the session-mode pool path fails), while lease mode's
//! pooler-safe path (`Driver::pool_query_pooler_safe`) works.
//!
//! Needs the `pgbouncer` binary (`scripts/test-services` installs it).

#![cfg(all(feature = "sqlx", feature = "tokio-postgres"))]

mod support;

use std::str::FromStr;

use regent::postgres::driver::{DbError, Driver, Param, Row};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use support::pgbouncer::{PgBouncer, PoolMode};

/// A statement with a parameter that reports the server connection it ran on.
const PID_SQL: &str = "SELECT pg_backend_pid()::int8 AS pid, $1::text AS echo";
/// The same for the pooler-safe path. A different text: sqlx looks up its
/// per-connection statement cache by text even for an unnamed query, so the
/// control's cached named statement would be reused otherwise. (Lease mode
/// never runs its statements by name, so this never happens there.)
const SAFE_SQL: &str = "SELECT pg_backend_pid()::int8 AS pid, $1::text AS echo -- safe";

fn pid_of(rows: &[Row]) -> i64 {
    assert_eq!(rows[0].text("echo").unwrap(), "x");
    rows[0].int("pid").unwrap()
}

fn x() -> [Param; 1] {
    [Param::Text("x".to_owned())]
}

/// PgBouncer in transaction mode in front of the test database, and that
/// database's name.
async fn bouncer() -> (PgBouncer, String) {
    let url = support::pg::database_url().await;
    let opts = PgConnectOptions::from_str(&url).unwrap();
    let db = opts.get_database().unwrap_or("postgres").to_owned();
    (PgBouncer::start(opts.get_port(), PoolMode::Transaction), db)
}

/// Opens a transaction through the pooler, so it holds the server
/// connection the pooler released last; returns the connection and that
/// server connection's pid.
async fn intrude(url: &str) -> (PgConnection, i64) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut conn).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .persistent(false)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    (conn, i64::from(pid))
}

/// Runs the scenario on `driver` (whose pool has exactly one connection).
async fn pooler_moves_the_client<D: Driver>(driver: &D, url: &str, name: &str) {
    // Session mode's path: prepared (and cached) by name on p1.
    let p1 = pid_of(&driver.pool_query(PID_SQL, &x()).await.unwrap());
    let (mut intruder, held) = intrude(url).await;
    assert_eq!(
        held, p1,
        "{name}: PgBouncer handed the intruder another connection"
    );
    // The control: the cached named statement does not exist on p2.
    let err: DbError = driver
        .pool_query(PID_SQL, &x())
        .await
        .expect_err("a named statement survived the move to another server connection");
    assert!(
        err.message.contains("does not exist"),
        "{name}: unexpected error {err:?}"
    );
    // Lease mode's path works there, again and again.
    for _ in 0..20 {
        let p2 = pid_of(&driver.pool_query_pooler_safe(SAFE_SQL, &x()).await.unwrap());
        assert_ne!(p2, p1, "{name}: ran on the intruder's server connection");
    }
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut intruder)
        .await
        .unwrap();
    // And many at once, with every server connection rotating.
    let params = x();
    let runs = (0..50).map(|_| driver.pool_query_pooler_safe(SAFE_SQL, &params));
    for r in futures::future::join_all(runs).await {
        pid_of(&r.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlx_pooler_safe_statements_survive_transaction_pooling() {
    let (bouncer, db) = bouncer().await;
    let url = bouncer.url(&db);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy(&url)
        .unwrap();
    let backend = regent::sqlx::SqlxBackend::builder()
        .lease_mode()
        .build(pool)
        .unwrap();
    pooler_moves_the_client(backend.driver(), &url, "sqlx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_pooler_safe_statements_survive_transaction_pooling() {
    let (bouncer, db) = bouncer().await;
    let url = bouncer.url(&db);
    let config: tokio_postgres::Config = url.parse().unwrap();
    let mgr = deadpool_postgres::Manager::new(config.clone(), tokio_postgres::NoTls);
    let pool = deadpool_postgres::Pool::builder(mgr)
        .max_size(1)
        .build()
        .unwrap();
    let backend = regent::tokio_postgres::TokioPgBackend::builder()
        .lease_mode()
        .build(pool, config)
        .unwrap();
    pooler_moves_the_client(backend.driver(), &url, "tokio-postgres").await;
}
