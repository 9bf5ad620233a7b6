//! Measuring what regent costs the server: a private cluster with
//! `pg_stat_statements`, one database user per node (so statements can be
//! told apart per node), connection counts and backend CPU time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::support::cluster::Cluster;

/// A private cluster with `pg_stat_statements` loaded; `max_connections`
/// is 300 (see [`Cluster`]).
pub fn cluster() -> Cluster {
    Cluster::start_with(
        "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all",
    )
}

/// An admin pool as `postgres`, with the extension created and `users`
/// database users (`node0`, `node1`, …, superusers for zombie preemption).
pub async fn admin(cluster: &Cluster, users: usize) -> PgPool {
    let pool = PgPool::connect(&cluster.url()).await.expect("admin pool");
    sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&pool)
        .await
        .expect("pg_stat_statements");
    for i in 0..users {
        let create = format!(
            "DO $$ BEGIN CREATE ROLE node{i} LOGIN SUPERUSER; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(create))
            .execute(&pool)
            .await
            .expect("create node user");
    }
    pool
}

/// The URL for node user `i`.
pub fn node_url(cluster: &Cluster, i: usize) -> String {
    format!("postgres://node{i}@127.0.0.1:{}/postgres", cluster.port())
}

/// One steady-state window's findings, per node user.
#[derive(Debug, Default)]
pub struct Window {
    /// Length of the window.
    pub secs: f64,
    /// Statements per second per node user (pg_stat_statements calls).
    pub stmts_per_s: BTreeMap<String, f64>,
    /// Open connections per node user at the end of the window.
    pub connections: BTreeMap<String, i64>,
    /// Transactions committed per second in the database (everyone).
    pub xact_per_s: f64,
    /// CPU time of the node users' backends, in percent of one core.
    pub backend_cpu_pct: f64,
}

async fn node_pids(admin: &PgPool) -> Vec<i32> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE usename LIKE 'node%'")
        .fetch_all(admin)
        .await
        .expect("pids")
}

/// utime + stime of `pid` in clock ticks (1/100 s), if it still exists.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm)": state is field 3, utime 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

async fn xact_commit(admin: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(admin)
    .await
    .expect("xact_commit")
}

/// Resets the statistics, waits `len`, and reads them back.
pub async fn window(admin: &PgPool, len: Duration) -> Window {
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(admin)
        .await
        .expect("reset");
    let pids = node_pids(admin).await;
    let cpu0: BTreeMap<i32, u64> = pids
        .iter()
        .filter_map(|&p| Some((p, cpu_ticks(p)?)))
        .collect();
    let x0 = xact_commit(admin).await;
    let t0 = Instant::now();
    tokio::time::sleep(len).await;
    let secs = t0.elapsed().as_secs_f64();
    let x1 = xact_commit(admin).await;
    let cpu: u64 = cpu0
        .iter()
        .filter_map(|(p, c0)| Some(cpu_ticks(*p)?.saturating_sub(*c0)))
        .sum();
    let calls: Vec<(String, i64)> = sqlx::query_as(
        "SELECT r.rolname::text, sum(s.calls)::int8 FROM pg_stat_statements s \
         JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname LIKE 'node%' GROUP BY 1",
    )
    .fetch_all(admin)
    .await
    .expect("pg_stat_statements");
    let conns: Vec<(String, i64)> = sqlx::query_as(
        "SELECT usename::text, count(*) FROM pg_stat_activity \
         WHERE usename LIKE 'node%' GROUP BY 1",
    )
    .fetch_all(admin)
    .await
    .expect("pg_stat_activity");
    Window {
        secs,
        stmts_per_s: calls
            .into_iter()
            .map(|(u, c)| (u, c as f64 / secs))
            .collect(),
        connections: conns.into_iter().collect(),
        // The admin's own three statements are negligible.
        xact_per_s: (x1 - x0) as f64 / secs,
        backend_cpu_pct: cpu as f64 / secs,
    }
}

/// The `n` statements `user` ran most often since the last reset, as
/// `(calls, query)`, for diagnosis.
pub async fn top_statements(admin: &PgPool, user: &str, n: i64) -> Vec<(i64, String)> {
    sqlx::query_as(
        "SELECT s.calls::int8, left(regexp_replace(s.query, '\\s+', ' ', 'g'), 140) \
         FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid \
         WHERE r.rolname = $1 ORDER BY s.calls DESC LIMIT $2",
    )
    .bind(user)
    .bind(n)
    .fetch_all(admin)
    .await
    .expect("pg_stat_statements")
}
