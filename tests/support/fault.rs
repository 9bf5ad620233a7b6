//! Helpers shared by the real-Postgres fault tests (`tests/fault_*.rs`):
//! a no-overlap sampler, short-lease configs, in-process electors.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use regent::sqlx::SqlxBackend;
use regent::{Config, Elector, LeaderHandle, Namespace, NodeId, Role, TakeoverPolicy};
use sqlx::PgPool;

/// How often the sampler looks.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// Samples "who leads" in a background thread until finished, and records
/// every instant at which more than one party claimed leadership.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Report>>,
}

/// What a [`Sampler`] saw.
#[derive(Debug, Default)]
pub struct Report {
    /// How many samples were taken.
    pub samples: u64,
    /// Descriptions of the first overlaps seen (at most 20).
    pub overlaps: Vec<String>,
    /// How many samples showed an overlap.
    pub overlap_samples: u64,
}

impl Sampler {
    /// Starts sampling `leaders`, which returns the names of the parties
    /// that claim leadership right now.
    pub fn start(leaders: impl Fn() -> Vec<String> + Send + 'static) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut report = Report::default();
            while !s.load(Ordering::Relaxed) {
                let now = leaders();
                report.samples += 1;
                if now.len() > 1 {
                    report.overlap_samples += 1;
                    if report.overlaps.len() < 20 {
                        report
                            .overlaps
                            .push(format!("at +{:?}: {now:?} all lead", start.elapsed()));
                    }
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            report
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling and asserts that no two parties ever led at once.
    pub fn assert_no_overlap(mut self) -> Report {
        let report = self.finish();
        assert!(
            report.overlaps.is_empty(),
            "OVERLAP: {} of {} samples saw two leaders: {:#?}",
            report.overlap_samples,
            report.samples,
            report.overlaps
        );
        assert!(report.samples > 10, "the sampler barely ran: {report:?}");
        report
    }

    fn finish(&mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("sampler thread"))
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    /// Stops and joins the thread, so whatever its closure holds (child
    /// processes behind an `Arc`, say) is released before the test's other
    /// locals drop, even when the test panics.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A 2 s lease config for in-process electors: renew 400 ms, validate
/// 250 ms, retry 300 ms; zombie preemption with a 1 s grace if `preempt`.
pub fn short_lease(policy: TakeoverPolicy, preempt: bool) -> Config {
    // The conformance kit's fast timing, plus preemption.
    regent_conformance::support::fast_builder(policy)
        .preempt_zombies(preempt)
        .zombie_grace(Duration::from_secs(1))
        .build()
        .expect("valid test config")
}

/// Polls `f` every 20 ms until it returns `Some`, panicking with `what`
/// after `within`.
pub async fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts one sqlx elector per pool — node ids `node-0`, `node-1`, …, lock
/// sessions named `{app}-0`, `{app}-1`, … — all campaigning for `role` in
/// `namespace`. The first node creates the lease table.
pub async fn sqlx_nodes(
    pools: Vec<PgPool>,
    app: &str,
    namespace: &Namespace,
    role: &Role,
    config: Config,
) -> Vec<LeaderHandle> {
    let mut handles = Vec::new();
    for (i, pool) in pools.into_iter().enumerate() {
        let backend = SqlxBackend::builder()
            .application_name(&format!("{app}-{i}"))
            .build(pool)
            .unwrap();
        if i == 0 {
            backend.migrate().await.unwrap();
        }
        let handle = Elector::builder(backend)
            .namespace(namespace.clone())
            .node_id(NodeId::new(format!("node-{i}")).unwrap())
            .config(config.clone())
            .spawn(role.clone())
            .await
            .unwrap();
        handles.push(handle);
    }
    handles
}

/// A [`Sampler`] of which of `handles` lead, named `node-{index}`.
pub fn sample_leaders(handles: &[LeaderHandle]) -> Sampler {
    let hs = handles.to_vec();
    Sampler::start(move || {
        hs.iter()
            .enumerate()
            .filter(|(_, h)| h.is_leader())
            .map(|(i, _)| format!("node-{i}"))
            .collect()
    })
}

/// The index and fencing token of a handle that leads now, if any.
pub fn leader(handles: &[LeaderHandle]) -> Option<(usize, u64)> {
    handles
        .iter()
        .enumerate()
        .find_map(|(i, h)| h.token().map(|t| (i, t.0)))
}
