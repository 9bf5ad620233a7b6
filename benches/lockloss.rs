//! Lock-loss step-down: `pg_terminate_backend` on the leader's lock
//! session, 50 times; time until the old leader reports it no longer
//! leads. Two in-process nodes, default config (validate every 1 s), local
//! PostgreSQL, for each backend built in.
//!
//! The time runs from the return of the `pg_terminate_backend` call to the
//! leader's `watch()` channel leaving `Leader`. Terminations happen at
//! varying phases of the validation cadence. Targets (DESIGN §6): ≤ the
//! validate interval (sqlx, which finds the loss at the next validation);
//! < 50 ms (tokio-postgres, which sees the connection close).
//!
//! A second table gives the leaderless gap of each kill: from the kill
//! until some node leads again (`is_leader()` polled every 1 ms). Before a
//! node ended its own lost lease itself, that gap was about one lease
//! (10 s); now the old leader ends it as soon as it has reconnected and its
//! work has drained, so the standby (or the old leader) leads in
//! milliseconds.
//!
//! `cargo bench --bench lockloss` (sqlx only), or
//! `cargo bench --bench lockloss --features tokio-postgres` (both);
//! `LOCKLOSS_KILLS=N` changes 50.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use regent::sqlx::SqlxBackend;
use regent::{Config, Elector, LeaderHandle, Leadership, Namespace, NodeId, Role};

/// A node's backend, for its session pid.
#[derive(Clone)]
enum Node {
    Sqlx(SqlxBackend),
    #[cfg(feature = "tokio-postgres")]
    TokioPg(regent::tokio_postgres::TokioPgBackend),
}

impl Node {
    fn session_pid(&self) -> Option<i32> {
        match self {
            Node::Sqlx(b) => b.session_pid(),
            #[cfg(feature = "tokio-postgres")]
            Node::TokioPg(b) => b.session_pid(),
        }
    }

    async fn elector(&self, ns: &Namespace, id: &str) -> Elector {
        let builder = match self {
            Node::Sqlx(b) => Elector::builder(b.clone()),
            #[cfg(feature = "tokio-postgres")]
            Node::TokioPg(b) => Elector::builder(b.clone()),
        };
        builder
            .namespace(ns.clone())
            .node_id(NodeId::new(id).unwrap())
            .config(Config::default())
            .build()
            .await
            .unwrap()
    }
}

async fn sqlx_node(url: &str, app: &str) -> Node {
    let b = SqlxBackend::builder()
        .application_name(app)
        .max_pool_connections(2)
        .connect(url)
        .await
        .unwrap();
    b.migrate().await.unwrap();
    Node::Sqlx(b)
}

#[cfg(feature = "tokio-postgres")]
async fn tokio_pg_node(url: &str, app: &str) -> Node {
    let b = regent::tokio_postgres::TokioPgBackend::builder()
        .application_name(app)
        .max_pool_connections(2)
        .connect(url)
        .await
        .unwrap();
    b.migrate().await.unwrap();
    Node::TokioPg(b)
}

async fn measure(
    url: &str,
    nodes: [Node; 2],
    kills: usize,
) -> (Vec<Duration>, Vec<Duration>, usize) {
    let ns = Namespace::new(support::pg::unique("bench_lockloss")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let mut electors = Vec::new();
    let mut handles: Vec<LeaderHandle> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let e = n.elector(&ns, &format!("node-{i}")).await;
        handles.push(e.spawn(role.clone()).await.unwrap());
        electors.push(e);
    }
    let admin = sqlx::PgPool::connect(url).await.unwrap();
    let mut times = Vec::new();
    let mut gaps = Vec::new();
    let mut missed = 0;
    for k in 0..kills {
        let started = Instant::now();
        let leader = loop {
            if let Some(i) = handles.iter().position(LeaderHandle::is_leader) {
                break i;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "no leader");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        // Vary the phase relative to the 1 s validation cadence.
        tokio::time::sleep(Duration::from_millis(200 + (k as u64 * 397) % 1000)).await;
        let Some(pid) = nodes[leader].session_pid() else {
            missed += 1;
            continue;
        };
        let mut rx = handles[leader].watch();
        if !matches!(*rx.borrow_and_update(), Leadership::Leader { .. }) {
            missed += 1;
            continue;
        }
        let ok: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&admin)
            .await
            .unwrap();
        let t0 = Instant::now();
        if !ok {
            missed += 1;
            continue;
        }
        tokio::time::timeout(
            Duration::from_secs(30),
            rx.wait_for(|l| !matches!(l, Leadership::Leader { .. })),
        )
        .await
        .expect("the leader never noticed its lock was gone")
        .unwrap();
        times.push(t0.elapsed());
        // The leaderless gap: until some node leads again.
        loop {
            if handles.iter().any(LeaderHandle::is_leader) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "no new leader");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        gaps.push(t0.elapsed());
    }
    for e in &electors {
        e.shutdown().await;
    }
    admin.close().await;
    (times, gaps, missed)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let url = support::pg::database_url().await;
        let kills = std::env::var("LOCKLOSS_KILLS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(50);
        let mut rows = Vec::new();
        let mut gap_rows = Vec::new();
        let sqlx_nodes = [
            sqlx_node(&url, "bench-lockloss-sqlx-0").await,
            sqlx_node(&url, "bench-lockloss-sqlx-1").await,
        ];
        let (t, g, missed) = measure(&url, sqlx_nodes, kills).await;
        let mut gap = vec!["sqlx".to_owned()];
        gap.extend(common::stat_cells(&common::stats(&g)));
        gap_rows.push(gap);
        let mut row = vec!["sqlx".to_owned()];
        row.extend(common::stat_cells(&common::stats(&t)));
        row.extend([
            missed.to_string(),
            "≤ 1000.0 ms (validate interval)".to_owned(),
        ]);
        rows.push(row);
        #[cfg(feature = "tokio-postgres")]
        {
            let tp_nodes = [
                tokio_pg_node(&url, "bench-lockloss-tp-0").await,
                tokio_pg_node(&url, "bench-lockloss-tp-1").await,
            ];
            let (t, g, missed) = measure(&url, tp_nodes, kills).await;
            let mut gap = vec!["tokio-postgres".to_owned()];
            gap.extend(common::stat_cells(&common::stats(&g)));
            gap_rows.push(gap);
            let mut row = vec!["tokio-postgres".to_owned()];
            row.extend(common::stat_cells(&common::stats(&t)));
            row.extend([missed.to_string(), "< 50 ms".to_owned()]);
            rows.push(row);
        }
        println!(
            "\n## Lock-loss step-down (pg_terminate_backend on the leader session, defaults)\n"
        );
        common::table(
            &[
                "backend", "kills", "p50", "p90", "p99", "max", "skipped", "target",
            ],
            &rows,
        );
        println!("\n## Leaderless gap after the kill (until some node leads again)\n");
        common::table(&["backend", "kills", "p50", "p90", "p99", "max"], &gap_rows);
    });
}
