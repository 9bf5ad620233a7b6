//! Fault: SIGKILL the leader process (`regent node` children).
//!
//! Three nodes campaign for one role, each writing a fenced counter while
//! it leads. The leader is killed with SIGKILL; a standby must lead again
//! (after the lease under `WaitForLease`, after about a retry under
//! `Immediate`), with a higher term, no two live nodes ever reporting
//! leadership at once, and the counter never seeing a stale token.
//!
//! Timing bounds here are generous recovery bounds for a busy 2-core
//! machine, not performance targets (see `benches/failover.rs`).

#![cfg(all(feature = "sqlx", feature = "cli"))]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::fault::{Sampler, wait_for};
use support::node::{Node, assert_fence_held, fast_flags, fenced_ok};

const ROLE: &str = "scheduler";

/// Starts `n` nodes; returns them behind a mutex the sampler shares.
fn start_nodes(
    url: &str,
    ns: &str,
    counter: &str,
    policy: &str,
    n: usize,
) -> Arc<Mutex<Vec<Node>>> {
    let mut flags = fast_flags();
    flags.extend(["--policy", policy, "--fenced-counter", counter].map(str::to_owned));
    let nodes = (0..n)
        .map(|i| Node::spawn(url, ns, ROLE, &format!("node-{i}"), &flags))
        .collect();
    Arc::new(Mutex::new(nodes))
}

fn leaders(nodes: &Mutex<Vec<Node>>) -> Vec<(usize, u64)> {
    nodes
        .lock()
        .unwrap()
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.leading().map(|t| (i, t)))
        .collect()
}

fn dump(nodes: &Mutex<Vec<Node>>) -> String {
    nodes.lock().unwrap().iter().map(Node::dump).collect()
}

async fn kill_leader(policy: &str, bound: Duration) {
    let url = support::pg::database_url().await;
    let ns = support::pg::unique("kill");
    let counter = support::pg::unique("fault_counter");
    support::node::prepare(&url, &counter).await;
    let nodes = start_nodes(&url, &ns, &counter, policy, 3);
    let n2 = nodes.clone();
    let sampler = Sampler::start(move || {
        leaders(&n2)
            .into_iter()
            .map(|(i, t)| format!("node-{i} term {t}"))
            .collect()
    });

    let (old, old_term) = wait_for("a first leader", Duration::from_secs(30), || {
        leaders(&nodes).first().copied()
    })
    .await;
    // Let it write under its token, so the counter has seen it.
    wait_for(
        "a fenced write by the first leader",
        Duration::from_secs(10),
        || {
            let ns = nodes.lock().unwrap();
            ns[old]
                .lines()
                .iter()
                .any(|l| fenced_ok(&l.text) == Some(old_term))
                .then_some(())
        },
    )
    .await;

    nodes.lock().unwrap()[old].kill();
    let killed_at = Instant::now();
    let (new, new_term) = wait_for(
        &format!("a new leader after SIGKILL of node-{old}"),
        bound,
        || leaders(&nodes).first().copied(),
    )
    .await;
    let gap = killed_at.elapsed();
    assert_ne!(new, old);
    assert!(
        new_term > old_term,
        "term {new_term} must exceed {old_term}"
    );
    wait_for(
        "a fenced write by the new leader",
        Duration::from_secs(10),
        || {
            let ns = nodes.lock().unwrap();
            ns[new]
                .lines()
                .iter()
                .any(|l| fenced_ok(&l.text) == Some(new_term))
                .then_some(())
        },
    )
    .await;

    let report = sampler.assert_no_overlap();
    {
        let ns = nodes.lock().unwrap();
        let refs: Vec<&Node> = ns.iter().collect();
        assert_fence_held(&refs);
    }
    let (value, last) = support::node::counter(&url, &counter, ROLE).await;
    assert_eq!(last, i64::try_from(new_term).unwrap(), "{}", dump(&nodes));
    assert!(value >= 2);
    eprintln!(
        "{policy}: node-{old} (term {old_term}) killed, node-{new} led (term {new_term}) \
         {gap:?} later; {} samples, no overlap",
        report.samples
    );
    nodes.lock().unwrap().clear(); // kill the rest
    support::node::cleanup(&url, &ns, &counter).await;
}

/// WaitForLease: a standby leads once the dead leader's lease (2 s) has
/// passed in database time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leader_wait_for_lease() {
    kill_leader("wait-for-lease", Duration::from_secs(20)).await;
}

/// Immediate: a standby leads as soon as it holds the lock (the dead
/// session's advisory lock is released when the server sees the socket
/// close, at once on loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leader_immediate() {
    kill_leader("immediate", Duration::from_secs(20)).await;
}
