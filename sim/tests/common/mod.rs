//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use regent_sim::{SimConfig, SweepReport, default_jobs, sweep_each};

/// The shape used by CI sweeps: 3–5 nodes × 2–3 roles, varied by seed,
/// three simulated minutes each (the last ~37 s are the liveness phase).
pub fn ci_config(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        nodes: 3 + (seed % 3) as usize,
        roles: 2 + (seed / 3 % 2) as usize,
        duration: Duration::from_secs(180),
        ..SimConfig::default()
    }
}

/// Runs `make(seed)` for every seed on every core; stops at the first
/// failure (the report is the one-thread report, see `regent_sim::sweep`).
pub fn sweep_with(
    seeds: std::ops::Range<u64>,
    make: impl Fn(u64) -> SimConfig + Sync,
) -> SweepReport {
    sweep_each(seeds, default_jobs(), true, make, |_| {})
}
