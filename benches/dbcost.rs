//! Database cost: 3 nodes (in-process electors, sqlx backend, default
//! config), each campaigning for the same 1, 10, 100 and 1,000 roles. For
//! each role count: time until every role has a leader, then a 10 s
//! steady-state window measuring connections per node
//! (`pg_stat_activity`), statements per second per node
//! (`pg_stat_statements`; every node connects as its own database user),
//! commits per second and the CPU time of the nodes' server backends.
//!
//! Runs on a private cluster (initdb'd by the bench, `fsync=off`,
//! `pg_stat_statements` loaded), so other users of the shared server do not
//! pollute the counts. Targets: connections per node constant (≤ 3) and
//! statements/node/s independent of the role count.
//!
//! `cargo bench --bench dbcost` (`DBCOST_ROLES=1,10` to choose counts,
//! `DBCOST_TOP=1` to print each node's most frequent statements).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use regent::sqlx::SqlxBackend;
use regent::{Config, Elector, LeaderHandle, Namespace, NodeId, Role};

const NODES: usize = 3;

fn fmt_per_node<T: std::fmt::Display>(v: impl IntoIterator<Item = T>) -> String {
    v.into_iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(" / ")
}

async fn wait_all_led(per_node: &[Vec<LeaderHandle>], within: Duration) -> Duration {
    let start = Instant::now();
    let roles = per_node[0].len();
    loop {
        let led = (0..roles)
            .filter(|&r| per_node.iter().any(|hs| hs[r].is_leader()))
            .count();
        if led == roles {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "only {led} of {roles} roles have a leader"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = common::load::cluster();
    let counts: Vec<usize> = std::env::var("DBCOST_ROLES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 100, 1000]);
    let rows = rt.block_on(async {
        let admin = common::load::admin(&cluster, NODES).await;
        let mut rows = Vec::new();
        for &n_roles in &counts {
            let ns = Namespace::new(format!("cost{n_roles}")).unwrap();
            let roles: Vec<Role> = (0..n_roles)
                .map(|i| Role::new(format!("role-{i}")).unwrap())
                .collect();
            let mut electors = Vec::new();
            let mut per_node = Vec::new();
            let t0 = Instant::now();
            for i in 0..NODES {
                let b = SqlxBackend::builder()
                    .application_name(&format!("cost-node-{i}"))
                    .connect(&common::load::node_url(&cluster, i))
                    .await
                    .unwrap();
                b.migrate().await.unwrap();
                let e = Elector::builder(b)
                    .namespace(ns.clone())
                    .node_id(NodeId::new(format!("node-{i}")).unwrap())
                    .config(Config::default())
                    .build()
                    .await
                    .unwrap();
                let mut hs = Vec::new();
                for r in &roles {
                    hs.push(e.spawn(r.clone()).await.unwrap());
                }
                per_node.push(hs);
                electors.push(e);
            }
            let spawned = t0.elapsed();
            let all_led = wait_all_led(&per_node, Duration::from_secs(180)).await + spawned;
            // Past the first renewals and keepalives.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let w = common::load::window(&admin, Duration::from_secs(10)).await;
            let leads: Vec<usize> = per_node
                .iter()
                .map(|hs| hs.iter().filter(|h| h.is_leader()).count())
                .collect();
            let users: Vec<String> = (0..NODES).map(|i| format!("node{i}")).collect();
            rows.push(vec![
                n_roles.to_string(),
                common::ms(all_led),
                fmt_per_node(leads),
                fmt_per_node(
                    users
                        .iter()
                        .map(|u| w.connections.get(u).copied().unwrap_or(0)),
                ),
                fmt_per_node(
                    users
                        .iter()
                        .map(|u| format!("{:.1}", w.stmts_per_s.get(u).copied().unwrap_or(0.0))),
                ),
                format!("{:.1}", w.xact_per_s),
                format!("{:.1} %", w.backend_cpu_pct),
            ]);
            eprintln!("{n_roles} roles done: {w:?}");
            if std::env::var_os("DBCOST_TOP").is_some() {
                for u in &users {
                    for (calls, q) in common::load::top_statements(&admin, u, 6).await {
                        eprintln!("  {u}: {calls:>5} × {q}");
                    }
                }
            }
            for e in &electors {
                e.shutdown().await;
            }
        }
        admin.close().await;
        rows
    });
    println!("\n## Database cost (3 nodes, sqlx, defaults, private PostgreSQL 15 cluster)\n");
    common::table(
        &[
            "roles/node",
            "all led after",
            "roles led (n0/n1/n2)",
            "connections (n0/n1/n2)",
            "statements/s (n0/n1/n2)",
            "commits/s (all)",
            "backend CPU",
        ],
        &rows,
    );
    drop(cluster);
}
