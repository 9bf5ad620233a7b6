//! Proptest strategies for explicit fault schedules, so users (and our own
//! tests) can let proptest search for — and shrink — a failing schedule.
//!
//! ```
//! use proptest::prelude::*;
//! use regent_sim::strategies::sim_config;
//!
//! proptest!(ProptestConfig::with_cases(2), |(config in sim_config(3, 1, 60))| {
//!     let report = regent_sim::run(&config);
//!     prop_assert!(report.passed(), "{}", report);
//! });
//! ```

use std::time::Duration;

use proptest::prelude::*;

use crate::config::SimConfig;
use crate::faults::{Direction, Fault, ScheduledFault};

/// A partition direction.
pub fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![
        Just(Direction::ToDb),
        Just(Direction::FromDb),
        Just(Direction::Both)
    ]
}

fn millis(lo: u64, hi: u64) -> impl Strategy<Value = Duration> {
    (lo..=hi).prop_map(Duration::from_millis)
}

/// One discrete fault on one of `nodes` nodes.
pub fn fault(nodes: usize) -> impl Strategy<Value = Fault> {
    let n = 0..nodes.max(1);
    prop_oneof![
        (n.clone(), millis(500, 25_000), any::<bool>()).prop_map(|(node, down_for, zombie)| {
            Fault::Crash {
                node,
                down_for,
                zombie,
            }
        }),
        (n.clone(), millis(200, 30_000))
            .prop_map(|(node, duration)| Fault::Pause { node, duration }),
        (n.clone(), direction(), millis(200, 30_000)).prop_map(|(node, direction, duration)| {
            Fault::Partition {
                node,
                direction,
                duration,
            }
        }),
        millis(100, 8_000).prop_map(|down_for| Fault::PgRestart { down_for }),
        (0_usize..64).prop_map(|pick| Fault::Terminate { pick }),
        (n, -30_000_000_i64..30_000_000)
            .prop_map(|(node, micros)| Fault::ClockJump { node, micros }),
    ]
}

/// Up to `max` faults at times within the first `within`.
pub fn schedule(
    nodes: usize,
    within: Duration,
    max: usize,
) -> impl Strategy<Value = Vec<ScheduledFault>> {
    let within_ms = u64::try_from(within.as_millis()).unwrap_or(u64::MAX).max(1);
    prop::collection::vec(
        ((0..within_ms).prop_map(Duration::from_millis), fault(nodes)),
        0..=max,
    )
    .prop_map(|mut v| {
        v.sort_by_key(|(at, _)| *at);
        v.into_iter()
            .map(|(at, fault)| ScheduledFault { at, fault })
            .collect()
    })
}

/// A whole run: a seed (for delays and clocks) plus an explicit schedule of
/// up to 12 faults over the fault phase of a `seconds`-long run with
/// `nodes` nodes and `roles` roles.
pub fn sim_config(nodes: usize, roles: usize, seconds: u64) -> impl Strategy<Value = SimConfig> {
    let duration = Duration::from_secs(seconds);
    let fault_phase = duration
        .saturating_sub(Duration::from_secs(40))
        .max(Duration::from_secs(1));
    (any::<u64>(), schedule(nodes, fault_phase, 12)).prop_map(move |(seed, schedule)| SimConfig {
        seed,
        nodes,
        roles,
        duration,
        schedule: Some(schedule),
        ..SimConfig::default()
    })
}
