//! Fault: black-hole the leader's traffic in a TCP proxy.
//!
//! node-a reaches PostgreSQL only through the proxy; node-b connects
//! directly, with zombie preemption on. When the proxy black-holes node-a,
//! node-a's renewals go unanswered and it must step down by its local
//! deadline. Its server-side session stays alive behind the proxy (like a
//! session behind a pooler whose client vanished), so node-b must preempt
//! it after lease + grace and lead. When the partition heals, node-a
//! rejoins as a follower. No two nodes may lead at any sampled instant.
//!
//! Healing closes the proxied connections (as a long partition does):
//! the black-hole drops bytes, which a real network never does to a live
//! TCP stream, so the old streams cannot carry on.

#![cfg(feature = "sqlx")]

mod support;

use std::net::ToSocketAddrs;
use std::str::FromStr;
use std::time::{Duration, Instant};

use regent::sqlx::SqlxBackend;
use regent::{Elector, Leadership, Namespace, NodeId, Role, TakeoverPolicy};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::fault::{Sampler, short_lease, wait_for};
use support::proxy::{Mode, Proxy};

fn backend(opts: PgConnectOptions, app: &str) -> SqlxBackend {
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(opts);
    SqlxBackend::builder()
        .application_name(app)
        .build(pool)
        .expect("valid backend options")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_leader_steps_down_is_preempted_and_rejoins() {
    let url = support::pg::database_url().await;
    let direct = PgConnectOptions::from_str(&url).expect("valid DATABASE_URL");
    let upstream = (direct.get_host(), direct.get_port())
        .to_socket_addrs()
        .expect("resolve the database host")
        .find(|a| a.ip().is_loopback())
        .expect("the fault tests need a database on loopback");
    let proxy = Proxy::start(upstream).await;
    let via_proxy = direct.clone().host("127.0.0.1").port(proxy.addr().port());

    let ns = Namespace::new(support::pg::unique("partition")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let app = support::pg::unique("part");
    let a_backend = backend(via_proxy, &format!("{app}-a"));
    a_backend.migrate().await.unwrap();
    let b_backend = backend(direct, &format!("{app}-b"));

    let config = short_lease(TakeoverPolicy::WaitForLease, true);
    let a = Elector::builder(a_backend)
        .namespace(ns.clone())
        .node_id(NodeId::new("node-a").unwrap())
        .config(config.clone())
        .spawn(role.clone())
        .await
        .unwrap();
    let a_term = tokio::time::timeout(Duration::from_secs(20), a.wait_until_leader())
        .await
        .expect("node-a leads")
        .unwrap();
    let b = Elector::builder(b_backend)
        .namespace(ns.clone())
        .node_id(NodeId::new("node-b").unwrap())
        .config(config.clone())
        .spawn(role.clone())
        .await
        .unwrap();
    let sampler = {
        let (a, b) = (a.clone(), b.clone());
        Sampler::start(move || {
            [("node-a", &a), ("node-b", &b)]
                .into_iter()
                .filter(|(_, h)| h.is_leader())
                .map(|(n, _)| n.to_owned())
                .collect()
        })
    };
    wait_for("node-b sees node-a lead", Duration::from_secs(10), || {
        matches!(b.leadership(), Leadership::Follower { leader: Some(ref l) } if l == "node-a")
            .then_some(())
    })
    .await;

    proxy.set_mode(Mode::Blackhole);
    let cut = Instant::now();
    // The local deadline is at most one lease after the last renewal.
    wait_for(
        "node-a steps down by its deadline",
        Duration::from_secs(4),
        || (!a.is_leader()).then_some(()),
    )
    .await;
    let stepped_down = cut.elapsed();
    let b_term = tokio::time::timeout(Duration::from_secs(30), b.wait_until_leader())
        .await
        .expect("node-b preempts the zombie session and leads")
        .unwrap();
    let b_leads = cut.elapsed();
    assert!(b_term > a_term);

    proxy.set_mode(Mode::Pass);
    proxy.reset_all();
    wait_for(
        "node-a rejoins as a follower of node-b",
        Duration::from_secs(30),
        || {
            matches!(a.leadership(), Leadership::Follower { leader: Some(ref l) } if l == "node-b")
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(b.is_leader(), "node-b lost leadership after the heal");
    assert_eq!(b.token(), Some(b_term));
    let report = sampler.assert_no_overlap();
    eprintln!(
        "node-a (term {a_term}) stepped down {stepped_down:?} after the cut; node-b led \
         (term {b_term}) {b_leads:?} after it; {} samples, no overlap",
        report.samples
    );
    a.shutdown().await;
    b.shutdown().await;
}
