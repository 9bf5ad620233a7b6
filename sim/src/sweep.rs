//! Sweeps: many seeds, on as many threads as asked, with the same result
//! as one thread.
//!
//! Every seed is an independent world with its own RNG, so seeds can run on
//! any thread in any order. What makes the *sweep* deterministic is how the
//! results are put together: workers take seeds in increasing order from a
//! shared counter, and one collector adds the reports to the
//! [`SweepReport`] strictly in seed order. When the sweep stops at the first
//! violation, workers stop taking seeds above the lowest failing seed seen
//! so far, and the collector drops any report after it; every seed below it
//! was already taken, so the report is exactly the one-thread report.
//!
//! Plain [`std::thread::scope`] threads and a channel do this; a work
//! stealing pool (rayon) would add a dependency for nothing here, since a
//! seed is seconds of work and the ordering is ours to do anyway.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use crate::config::SimConfig;
use crate::report::{SimReport, SweepReport};

/// The number of threads a sweep uses by default: every core
/// ([`std::thread::available_parallelism`]), or one if that is unknown.
pub fn default_jobs() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// Runs `base` once per seed in `seeds` on every core; stops at the first
/// failing seed when `base.stop_at_first_violation` is set. The report is
/// the same as with one thread ([`sweep_jobs`]).
pub fn sweep(base: &SimConfig, seeds: Range<u64>) -> SweepReport {
    sweep_jobs(base, seeds, default_jobs())
}

/// Runs `base` once per seed in `seeds` on `jobs` threads; stops at the
/// first failing seed when `base.stop_at_first_violation` is set.
pub fn sweep_jobs(base: &SimConfig, seeds: Range<u64>, jobs: NonZeroUsize) -> SweepReport {
    sweep_each(
        seeds,
        jobs,
        base.stop_at_first_violation,
        |seed| base.with_seed(seed),
        |_| {},
    )
}

/// The general sweep: runs `make(seed)` for every seed in `seeds` on `jobs`
/// threads, and calls `progress` on the calling thread with the totals after
/// each report is added, in seed order (the newest is last in
/// [`SweepReport::runs`]). With
/// `stop_at_first_violation`, the sweep ends after the lowest failing seed.
///
/// Whatever `jobs` is, the returned report (and the sequence of `progress`
/// calls) is the one a single thread produces.
pub fn sweep_each(
    seeds: Range<u64>,
    jobs: NonZeroUsize,
    stop_at_first_violation: bool,
    make: impl Fn(u64) -> SimConfig + Sync,
    mut progress: impl FnMut(&SweepReport),
) -> SweepReport {
    let mut out = SweepReport::default();
    if seeds.is_empty() {
        return out;
    }
    let next = AtomicU64::new(seeds.start);
    // The lowest failing seed seen so far (when stopping at the first).
    let lowest_failure = AtomicU64::new(u64::MAX);
    let workers = jobs
        .get()
        .min(usize::try_from(seeds.end - seeds.start).unwrap_or(usize::MAX));
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<(u64, SimReport)>();
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, lowest_failure, make, end) = (&next, &lowest_failure, &make, seeds.end);
            scope.spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end || seed > lowest_failure.load(Ordering::Relaxed) {
                        break;
                    }
                    let report = crate::run(&make(seed));
                    if stop_at_first_violation && !report.passed() {
                        lowest_failure.fetch_min(seed, Ordering::Relaxed);
                    }
                    if tx.send((seed, report)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        // Reports arrive in any order: keep the early ones until every seed
        // before them is in.
        let mut pending: BTreeMap<u64, SimReport> = BTreeMap::new();
        let mut want = seeds.start;
        let mut stopped = false;
        for (seed, report) in rx {
            if stopped {
                continue;
            }
            pending.insert(seed, report);
            while let Some(report) = pending.remove(&want) {
                want += 1;
                let failed = !report.passed();
                out.add(report);
                progress(&out);
                if failed && stop_at_first_violation {
                    stopped = true;
                    pending.clear();
                    break;
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Mutant;

    fn small(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes: 3,
            roles: 2,
            duration: Duration::from_secs(90),
            ..SimConfig::default()
        }
    }

    fn jobs(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).unwrap()
    }

    #[test]
    fn several_jobs_give_the_one_thread_report() {
        let mut order_one = Vec::new();
        let one = sweep_each(0..12, jobs(1), true, small, |r| {
            order_one.extend(r.runs.last().map(|s| s.seed))
        });
        for j in [2, 3, 5] {
            let mut order = Vec::new();
            let many = sweep_each(0..12, jobs(j), true, small, |r| {
                order.extend(r.runs.last().map(|s| s.seed))
            });
            assert_eq!(many.runs, one.runs, "{j} jobs");
            assert_eq!(many.coverage, one.coverage, "{j} jobs");
            assert_eq!((many.seeds, many.events), (one.seeds, one.events));
            assert_eq!(many.simulated, one.simulated);
            assert_eq!(order, order_one, "progress in seed order with {j} jobs");
        }
        assert_eq!(order_one, (0..12).collect::<Vec<_>>());
        // The runs really differ per seed, so equal lists mean something.
        let hashes: std::collections::BTreeSet<u64> = one.runs.iter().map(|r| r.log_hash).collect();
        assert_eq!(hashes.len(), 12);
    }

    #[test]
    fn stopping_at_the_first_failure_is_the_same_on_every_thread_count() {
        // A mutant that the checks catch within some seeds: the sweep
        // must end at the same (lowest) failing seed however many threads.
        let broken = |seed| SimConfig {
            mutant: Some(Mutant::TrustsWallClock),
            ..small(seed)
        };
        let one = sweep_each(0..40, jobs(1), true, broken, |_| {});
        assert_eq!(one.failures.len(), 1, "the mutant was not caught");
        let first = one.failures[0].config.seed;
        // Seeds pass before it, and seeds after it would run on other
        // threads: both sides of the stop are exercised.
        assert!(first > 4, "caught at seed {first}");
        assert_eq!(one.seeds, first + 1);
        for j in [2, 4] {
            let many = sweep_each(0..40, jobs(j), true, broken, |_| {});
            assert_eq!(many.runs, one.runs, "{j} jobs");
            assert_eq!(many.failures.len(), 1);
            assert_eq!(many.failures[0].config.seed, first);
            assert_eq!(many.failures[0].violations, one.failures[0].violations);
        }
    }

    #[test]
    fn an_empty_range_runs_nothing() {
        let report = sweep_each(5..5, jobs(3), true, small, |_| panic!("no report expected"));
        assert_eq!(report.seeds, 0);
        assert!(report.runs.is_empty());
    }
}
