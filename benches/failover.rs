//! Crash failover: SIGKILL the leader `regent node` process (the fault-test
//! build of it, `regent-fault-node`, run without `--fenced-counter`), measure the
//! leaderless gap until a standby prints `LEADER`, respawn the killed node,
//! repeat. Three nodes, local PostgreSQL, release build of the CLI.
//!
//! The gap runs from the SIGKILL to the moment the bench reads the new
//! leader's `LEADER` line. Kills happen at varying phases of the renew
//! cycle. Targets (DESIGN §6): ≤ lease + retry under WaitForLease;
//! ≤ retry + 100 ms under Immediate.
//!
//! `cargo bench --bench failover` (`FAILOVER_KILLS=N` sets the kills per
//! configuration; default: 10 with the 10 s default lease, 20 otherwise).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::node::{Node, Reported};

const ROLE: &str = "scheduler";

struct Setup {
    name: &'static str,
    flags: &'static [&'static str],
    kills: usize,
    lease: Duration,
    retry: Duration,
}

fn wait<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn run(url: &str, setup: &Setup) -> Vec<Duration> {
    let ns = support::pg::unique("bench_failover");
    let flags: Vec<String> = setup.flags.iter().map(|s| (*s).to_owned()).collect();
    let mut next_id = 0;
    let spawn = |next_id: &mut usize| {
        *next_id += 1;
        Node::spawn(url, &ns, ROLE, &format!("node-{next_id}"), &flags)
    };
    let mut nodes: Vec<Node> = (0..3).map(|_| spawn(&mut next_id)).collect();
    let mut gaps = Vec::new();
    for k in 0..setup.kills {
        let leader = wait(
            "a leader",
            setup.lease * 3 + Duration::from_secs(10),
            || nodes.iter().position(|n| n.leading().is_some()),
        );
        for (i, n) in nodes.iter().enumerate() {
            if i != leader {
                wait("standbys to follow", Duration::from_secs(30), || {
                    (n.reported() == Reported::Follower).then_some(())
                });
            }
        }
        // Vary the phase of the kill within the renew cycle.
        std::thread::sleep(Duration::from_millis(300 + (k as u64 * 389) % 2000));
        let mut dead = nodes.remove(leader);
        dead.kill();
        let killed = Instant::now();
        wait(
            "a new leader",
            setup.lease * 3 + Duration::from_secs(10),
            || nodes.iter().find(|n| n.leading().is_some()),
        );
        gaps.push(killed.elapsed());
        drop(dead);
        nodes.push(spawn(&mut next_id));
    }
    gaps
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = rt.block_on(support::pg::database_url());
    rt.block_on(async {
        let b = regent::sqlx::SqlxBackend::connect(&url).await.unwrap();
        b.migrate().await.unwrap();
    });
    let kills = std::env::var("FAILOVER_KILLS")
        .ok()
        .and_then(|s| s.parse().ok());
    let setups = [
        Setup {
            name: "WaitForLease, defaults (lease 10 s, renew 2 s, retry 1 s)",
            flags: &[],
            kills: kills.unwrap_or(10),
            lease: Duration::from_secs(10),
            retry: Duration::from_secs(1),
        },
        Setup {
            name: "Immediate, defaults (retry 1 s)",
            flags: &["--policy", "immediate"],
            kills: kills.unwrap_or(20),
            lease: Duration::from_secs(10),
            retry: Duration::from_secs(1),
        },
        Setup {
            name: "WaitForLease, lease 3 s (renew 1 s, retry 1 s)",
            flags: &["--lease", "3s", "--renew", "1s"],
            kills: kills.unwrap_or(20),
            lease: Duration::from_secs(3),
            retry: Duration::from_secs(1),
        },
        Setup {
            name: "Immediate, lease 3 s (renew 1 s, retry 1 s)",
            flags: &["--lease", "3s", "--renew", "1s", "--policy", "immediate"],
            kills: kills.unwrap_or(20),
            lease: Duration::from_secs(3),
            retry: Duration::from_secs(1),
        },
    ];
    let mut rows = Vec::new();
    for setup in &setups {
        let started = Instant::now();
        let gaps = run(&url, setup);
        let s = common::stats(&gaps);
        eprintln!("{}: done in {:.0?}", setup.name, started.elapsed());
        let mut row = vec![setup.name.to_owned()];
        row.extend(common::stat_cells(&s));
        row.push(common::ms(s.min));
        row.push(format!(
            "≤ {}",
            common::ms(if setup.flags.contains(&"immediate") {
                setup.retry + Duration::from_millis(100)
            } else {
                setup.lease + setup.retry
            })
        ));
        rows.push(row);
    }
    println!("\n## Crash failover (SIGKILL of the leader process, 3 nodes, local PostgreSQL)\n");
    common::table(
        &[
            "configuration",
            "kills",
            "p50",
            "p90",
            "p99",
            "max",
            "min",
            "target",
        ],
        &rows,
    );
}
