//! An example of property-testing your own leader-only logic with
//! [`SimBackend`](regent_sim::backend::SimBackend): the real tokio driver on
//! tokio's paused clock, against the simulated database, under crashes,
//! partitions, terminated sessions and database restarts chosen by
//! proptest. The property: the leader-only job never runs on two nodes at
//! once, and after the faults some node runs it again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use regent_core::{Config, Elector, NodeId, Role};
use regent_sim::backend::SimCluster;
use tokio_util::sync::CancellationToken;

const NODES: usize = 3;

#[derive(Debug, Clone)]
enum Fault {
    Crash(usize),
    Partition(usize),
    Heal(usize),
    TerminateSession(usize),
    RestartDatabase,
}

fn fault() -> impl Strategy<Value = (u64, Fault)> {
    let node = 0..NODES;
    (
        50u64..6_000,
        prop_oneof![
            node.clone().prop_map(Fault::Crash),
            node.clone().prop_map(Fault::Partition),
            node.clone().prop_map(Fault::Heal),
            node.prop_map(Fault::TerminateSession),
            Just(Fault::RestartDatabase),
        ],
    )
}

/// Counts how many copies of the job run right now, and the most ever seen.
#[derive(Default)]
struct Probe {
    running: AtomicUsize,
    most: AtomicUsize,
    started: AtomicUsize,
}

/// The application's leader-only job: it must never run twice at once.
async fn job(cancel: CancellationToken, probe: Arc<Probe>) {
    let now = probe.running.fetch_add(1, Ordering::SeqCst) + 1;
    probe.most.fetch_max(now, Ordering::SeqCst);
    probe.started.fetch_add(1, Ordering::SeqCst);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                let now = probe.running.load(Ordering::SeqCst);
                probe.most.fetch_max(now, Ordering::SeqCst);
            }
        }
    }
    probe.running.fetch_sub(1, Ordering::SeqCst);
}

async fn scenario(faults: Vec<(u64, Fault)>) -> (usize, usize, usize) {
    let cluster = SimCluster::new();
    let probe = Arc::new(Probe::default());
    let role = Role::new("nightly-report").unwrap();
    let config = Config::builder()
        .lease_duration(Duration::from_secs(2))
        .renew_interval(Duration::from_millis(500))
        .attempt_timeout(Duration::from_millis(400))
        .validate_interval(Duration::from_millis(250))
        .retry_interval(Duration::from_millis(300))
        .retry_jitter(Duration::from_millis(50))
        .safety_margin(Duration::from_millis(50))
        .build()
        .unwrap();
    let mut crashed = [false; NODES];
    for i in 0..NODES {
        let name = format!("node-{i}");
        let elector = Elector::builder(cluster.backend(&name))
            .node_id(NodeId::new(name.as_str()).unwrap())
            .config(config.clone())
            .seed(i as u64)
            .build()
            .await
            .unwrap();
        let handle = elector.spawn(role.clone()).await.unwrap();
        let probe = probe.clone();
        tokio::spawn(async move {
            let _keep = elector;
            while handle
                .run_while_leader(|cancel, _token| job(cancel, probe.clone()))
                .await
                .is_ok()
            {}
        });
    }
    for (delay, fault) in faults {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let name = |i: usize| format!("node-{i}");
        match fault {
            Fault::Crash(i) => {
                // Keep one node alive so liveness can be checked.
                if crashed.iter().filter(|c| !**c).count() > 1 {
                    crashed[i] = true;
                    cluster.crash(&name(i));
                }
            }
            Fault::Partition(i) => cluster.partition(&name(i)),
            Fault::Heal(i) => cluster.heal(&name(i)),
            Fault::TerminateSession(i) => {
                cluster.terminate_session(&name(i));
            }
            Fault::RestartDatabase => cluster.restart_database(),
        }
    }
    // Heal everything, then give the survivors time to elect a leader.
    for i in 0..NODES {
        cluster.heal(&format!("node-{i}"));
    }
    let before = probe.started.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let running = probe.running.load(Ordering::SeqCst);
    let survivors_ran = probe.started.load(Ordering::SeqCst) > before || running == 1;
    (
        probe.most.load(Ordering::SeqCst),
        running,
        usize::from(survivors_ran),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_leader_only_job_never_runs_twice_concurrently(
        faults in prop::collection::vec(fault(), 0..8)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let (most, running, ran_after) = rt.block_on(scenario(faults));
        prop_assert!(most <= 1, "the job ran on {most} nodes at once");
        prop_assert_eq!(running, 1, "after the faults healed, exactly one node must run the job");
        prop_assert_eq!(ran_after, 1);
    }
}
