//! Fault: `pg_terminate_backend` on every regent session at once.
//!
//! Three in-process nodes campaign for one role; an operator terminates
//! every backend of theirs (lock sessions and listeners) in one statement.
//! The leader must notice the lock loss and step down; someone must lead
//! again, under a higher term; no two nodes may lead at any sampled
//! instant.

#![cfg(feature = "sqlx")]

mod support;

use std::str::FromStr;
use std::time::{Duration, Instant};

use regent::{Namespace, Role, TakeoverPolicy};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::fault::{leader, sample_leaders, short_lease, sqlx_nodes, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_every_session_then_recovery() {
    let url = support::pg::database_url().await;
    let ns = Namespace::new(support::pg::unique("terminate")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let app = support::pg::unique("term");
    let opts = PgConnectOptions::from_str(&url).unwrap();
    let pools = (0..3)
        .map(|_| {
            PgPoolOptions::new()
                .max_connections(3)
                .connect_lazy_with(opts.clone().application_name(&format!("{app}-pool")))
        })
        .collect();
    let handles = sqlx_nodes(
        pools,
        &app,
        &ns,
        &role,
        short_lease(TakeoverPolicy::WaitForLease, false),
    )
    .await;
    let sampler = sample_leaders(&handles);
    let (old, before) = wait_for("a first leader", Duration::from_secs(20), || {
        leader(&handles)
    })
    .await;
    // Let the listeners and pools connect, so there is something to kill.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name LIKE $1 || '%' AND pid <> pg_backend_pid()",
    )
    .bind(&app)
    .fetch_one(&admin)
    .await
    .unwrap();
    let at = Instant::now();
    assert!(
        killed >= 3,
        "expected at least the three lock sessions, terminated {killed}"
    );
    wait_for("the old leader steps down", Duration::from_secs(5), || {
        (handles[old].token().map(|t| t.0) != Some(before)).then_some(())
    })
    .await;
    let stepped_down = at.elapsed();
    let (who, after) = wait_for("a leader again", Duration::from_secs(30), || {
        leader(&handles).filter(|&(_, t)| t > before)
    })
    .await;
    let recovered = at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = sampler.assert_no_overlap();
    eprintln!(
        "terminated {killed} backends; node-{old} (term {before}) stepped down after \
         {stepped_down:?}; node-{who} led (term {after}) after {recovered:?}; {} samples",
        report.samples
    );
    for h in &handles {
        h.shutdown().await;
    }
    admin.close().await;
}
