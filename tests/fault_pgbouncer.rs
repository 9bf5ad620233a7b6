//! PgBouncer in front of a private cluster.
//!
//! - `pool_mode=session`: the basic scenarios work — one leader among
//!   three nodes, and a resign hands over to a standby by notification.
//! - `pool_mode=transaction`: the backend refuses to start, with an error
//!   that names the cause and the fixes; lease mode, the one-line switch it
//!   names, then leads behind the same pooler.
//!
//! Needs the `pgbouncer` binary (`apt-get install -y pgbouncer`); panics
//! with that instruction if it is missing. Session settings go as `SET`
//! commands ([`SessionSettings::SetCommands`]): PgBouncer ignores startup
//! `options`.

#![cfg(feature = "sqlx")]

mod support;

use std::time::Duration;

use regent::sqlx::{SessionSettings, SqlxBackend};
use regent::{Elector, ElectorError, LeaderHandle, Namespace, NodeId, Role, TakeoverPolicy};
use sqlx::postgres::PgPoolOptions;
use support::cluster::Cluster;
use support::fault::{Sampler, short_lease, wait_for};
use support::pgbouncer::{PgBouncer, PoolMode};

fn backend(url: &str, app: &str) -> SqlxBackend {
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(url)
        .unwrap();
    SqlxBackend::builder()
        .application_name(app)
        .session_settings(SessionSettings::SetCommands)
        .build(pool)
        .unwrap()
}

fn leaders(handles: &[LeaderHandle]) -> Vec<usize> {
    (0..handles.len())
        .filter(|&i| handles[i].is_leader())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_one_leader_and_resign_handover() {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let bouncer = PgBouncer::start(cluster.port(), PoolMode::Session);
    let url = bouncer.url("postgres");
    let ns = Namespace::new("bouncer").unwrap();
    let role = Role::new("scheduler").unwrap();
    let mut handles = Vec::new();
    for i in 0..3 {
        let b = backend(&url, &format!("bouncer-{i}"));
        if i == 0 {
            b.migrate().await.unwrap();
        }
        let h = Elector::builder(b)
            .namespace(ns.clone())
            .node_id(NodeId::new(format!("node-{i}")).unwrap())
            .config(short_lease(TakeoverPolicy::WaitForLease, false))
            .spawn(role.clone())
            .await
            .unwrap_or_else(|e| panic!("node-{i} through PgBouncer: {e}\n{}", bouncer.log()));
        handles.push(h);
    }
    let sampler = {
        let hs = handles.clone();
        Sampler::start(move || {
            leaders(&hs)
                .into_iter()
                .map(|i| format!("node-{i}"))
                .collect()
        })
    };
    let first = wait_for("one leader", Duration::from_secs(20), || {
        leaders(&handles).first().copied()
    })
    .await;
    let t1 = handles[first].token().unwrap();
    // Two more seconds of steady state: still exactly that leader.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(leaders(&handles), vec![first]);
    assert_eq!(
        handles[first].token(),
        Some(t1),
        "leadership churned through PgBouncer"
    );

    handles[first].resign().await;
    let next = wait_for(
        "a standby leads after the resign",
        Duration::from_secs(10),
        || leaders(&handles).into_iter().find(|&i| i != first),
    )
    .await;
    assert!(handles[next].token().unwrap() > t1);
    sampler.assert_no_overlap();
    for h in &handles {
        h.shutdown().await;
    }
    drop(bouncer);
}

/// A lone client behind a real PgBouncer in transaction mode keeps getting
/// the same server connection (PgBouncer reuses the most recently released
/// one), so "`pg_backend_pid()` changes between two round trips" alone does
/// not notice it; the start-up check also holds a transaction open on a
/// probe connection between the two round trips (see BENCHMARKS.md, "Bugs
/// found").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_is_refused_at_start() {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    // Create the table directly, so only the pooler can be the problem.
    SqlxBackend::connect(&cluster.url())
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let bouncer = PgBouncer::start(cluster.port(), PoolMode::Transaction);
    let b = backend(&bouncer.url("postgres"), "bouncer-tx");
    let result = Elector::builder(b)
        .node_id(NodeId::new("node-tx").unwrap())
        .build()
        .await;
    let err = match result {
        Ok(_) => panic!(
            "an elector started behind pool_mode=transaction\n{}",
            bouncer.log()
        ),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(matches!(err, ElectorError::Backend(_)), "{err:?}");
    assert!(msg.contains("pool_mode=transaction"), "{msg}");
    assert!(msg.contains("pool_mode=session"), "{msg}");
    // The refusal names lease mode and its one-line switch ...
    assert!(
        msg.contains("lease mode") && msg.contains("SqlxBackend::builder().lease_mode()"),
        "{msg}"
    );
    // ... which works behind the same pooler.
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .connect_lazy(&bouncer.url("postgres"))
        .unwrap();
    let b = SqlxBackend::builder().lease_mode().build(pool).unwrap();
    let h = Elector::builder(b)
        .node_id(NodeId::new("node-tx").unwrap())
        .config(short_lease(TakeoverPolicy::WaitForLease, false))
        .spawn(Role::new("scheduler").unwrap())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "lease mode through pool_mode=transaction: {e}\n{}",
                bouncer.log()
            )
        });
    wait_for(
        "lease mode leads behind the pooler",
        Duration::from_secs(20),
        || h.is_leader().then_some(()),
    )
    .await;
    h.shutdown().await;
    drop(bouncer);
}
