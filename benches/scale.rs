//! Scale: 50 nodes (electors in one process, each with its own sqlx
//! backend and session) × the same 200 roles, default config, on a private
//! cluster with `max_connections = 300`. Measures the time until every role
//! has a leader, then a 10 s steady-state window: statements per second
//! (`pg_stat_statements`), commits per second, connections and the CPU
//! time of the nodes' server backends.
//!
//! All nodes connect first; then every node campaigns for role 0, then
//! every node for role 1, and so on, so the nodes contend for each role.
//! The clock starts before the first campaign.
//!
//! Each node's pool is capped at 2 connections so that 50 nodes fit:
//! session + listener + pool ≤ 4 per node.
//!
//! `cargo bench --bench scale` (`SCALE_NODES`, `SCALE_ROLES` override 50
//! and 200).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use regent::sqlx::SqlxBackend;
use regent::{Config, Elector, LeaderHandle, Namespace, NodeId, Role};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let nodes = env_or("SCALE_NODES", 50);
    let n_roles = env_or("SCALE_ROLES", 200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = common::load::cluster();
    rt.block_on(async {
        let admin = common::load::admin(&cluster, nodes).await;
        let ns = Namespace::new("scale").unwrap();
        let roles: Vec<Role> = (0..n_roles)
            .map(|i| Role::new(format!("role-{i}")).unwrap())
            .collect();
        // Connect every node first, then campaign in interleaved order (role
        // 0 on every node, then role 1, …) so that the nodes contend.
        let mut electors = Vec::new();
        for i in 0..nodes {
            let b = SqlxBackend::builder()
                .application_name(&format!("scale-node-{i}"))
                .max_pool_connections(2)
                .connect(&common::load::node_url(&cluster, i))
                .await
                .unwrap();
            if i == 0 {
                b.migrate().await.unwrap();
            }
            let e = Elector::builder(b)
                .namespace(ns.clone())
                .node_id(NodeId::new(format!("node-{i}")).unwrap())
                .config(Config::default())
                .build()
                .await
                .unwrap();
            electors.push(e);
        }
        let t0 = Instant::now();
        let mut per_node: Vec<Vec<LeaderHandle>> = vec![Vec::new(); nodes];
        for r in &roles {
            for (e, hs) in electors.iter().zip(per_node.iter_mut()) {
                hs.push(e.spawn(r.clone()).await.unwrap());
            }
        }
        let spawned = t0.elapsed();
        let mut led = 0;
        while t0.elapsed() < Duration::from_secs(300) {
            led = (0..n_roles)
                .filter(|&r| per_node.iter().any(|hs| hs[r].is_leader()))
                .count();
            if led == n_roles {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let all_led = t0.elapsed();
        assert_eq!(led, n_roles, "not every role got a leader within 300 s");
        tokio::time::sleep(Duration::from_secs(5)).await;
        let w = common::load::window(&admin, Duration::from_secs(10)).await;
        let leaders_per_node: Vec<usize> = per_node
            .iter()
            .map(|hs| hs.iter().filter(|h| h.is_leader()).count())
            .collect();
        let nodes_leading = leaders_per_node.iter().filter(|&&n| n > 0).count();
        let conns: i64 = w.connections.values().sum();
        let stmts: f64 = w.stmts_per_s.values().sum();
        let max_node = w.stmts_per_s.values().copied().fold(0.0, f64::max);
        println!("\n## Scale ({nodes} nodes × {n_roles} roles, sqlx, defaults, private cluster)\n");
        common::table(
            &[
                "nodes × roles",
                "spawned in",
                "all roles led after",
                "nodes leading ≥ 1 role",
                "connections",
                "statements/s (all)",
                "statements/s (busiest node)",
                "commits/s",
                "backend CPU",
            ],
            &[vec![
                format!("{nodes} × {n_roles}"),
                common::ms(spawned),
                common::ms(all_led),
                nodes_leading.to_string(),
                conns.to_string(),
                format!("{stmts:.0}"),
                format!("{max_node:.1}"),
                format!("{:.0}", w.xact_per_s),
                format!("{:.1} %", w.backend_cpu_pct),
            ]],
        );
        let stop = Instant::now();
        for e in &electors {
            e.shutdown().await;
        }
        eprintln!("shut down {nodes} nodes in {:?}", stop.elapsed());
        admin.close().await;
    });
    drop(cluster);
}
