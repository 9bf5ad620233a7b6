//! Fault: restart PostgreSQL (a private throwaway cluster).
//!
//! Three in-process nodes campaign for one role. The server stops (fast
//! shutdown: every session terminated, lease rows kept) and stays down for
//! longer than a lease: every node must step down. After the restart one
//! node leads again, under a term higher than any before — advisory locks
//! are gone after a restart, but the lease row and its term are the source
//! of truth. No two nodes may lead at any sampled instant.

#![cfg(feature = "sqlx")]

mod support;

use std::time::{Duration, Instant};

use regent::{Namespace, Role, TakeoverPolicy};
use sqlx::postgres::PgPoolOptions;
use support::cluster::Cluster;
use support::fault::{leader, sample_leaders, short_lease, sqlx_nodes, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_all_step_down_then_one_leads() {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let url = cluster.url();
    let ns = Namespace::new("restart").unwrap();
    let role = Role::new("scheduler").unwrap();
    let pools = (0..3)
        .map(|_| {
            PgPoolOptions::new()
                .max_connections(3)
                .acquire_timeout(Duration::from_secs(3))
                .connect_lazy(&url)
                .unwrap()
        })
        .collect();
    let handles = sqlx_nodes(
        pools,
        "restart",
        &ns,
        &role,
        short_lease(TakeoverPolicy::WaitForLease, false),
    )
    .await;
    let sampler = sample_leaders(&handles);
    let (_, before) = wait_for("a first leader", Duration::from_secs(20), || {
        leader(&handles)
    })
    .await;

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop();
        cluster
    })
    .await
    .unwrap();
    let stopped = Instant::now();
    wait_for("every node steps down", Duration::from_secs(5), || {
        leader(&handles).is_none().then_some(())
    })
    .await;
    let all_down = stopped.elapsed();
    // Stay down past a whole lease: nobody may lead without the database.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        leader(&handles).is_none(),
        "a node leads while PostgreSQL is down"
    );

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.start_again();
        cluster
    })
    .await
    .unwrap();
    let restarted = Instant::now();
    let (who, after) = wait_for(
        "a leader after the restart",
        Duration::from_secs(30),
        || leader(&handles),
    )
    .await;
    let recovered = restarted.elapsed();
    assert!(
        after > before,
        "term {after} after the restart must exceed {before}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = sampler.assert_no_overlap();
    eprintln!(
        "term {before} before; all stepped down {all_down:?} after the stop; node-{who} led \
         (term {after}) {recovered:?} after the restart; {} samples, no overlap",
        report.samples
    );
    for h in &handles {
        h.shutdown().await;
    }
    drop(cluster);
}
