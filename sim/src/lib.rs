//! regent-sim: a deterministic simulator that runs the real
//! [`regent_core::Machine`] of every node against a simulated PostgreSQL,
//! under crashes, pauses, partitions, message delay/loss/reordering, lost
//! replies, clock drift and jumps, pooler zombies, lost notifications,
//! database restarts and operator terminations — and checks after every
//! step that no two nodes lead at once.
//!
//! ```
//! use std::time::Duration;
//! use regent_sim::{SimConfig, run};
//!
//! let report = run(&SimConfig {
//!     seed: 7,
//!     duration: Duration::from_secs(60),
//!     ..SimConfig::default()
//! });
//! assert!(report.passed(), "{report}");
//! assert!(report.reproduce.starts_with("reproduce with: cargo run --release --features cli -- sim --seed 7"));
//! ```
//!
//! # The world
//!
//! One thread, virtual time, one seeded RNG ([`rand_chacha::ChaCha8Rng`],
//! see [`rng`]). The loop takes the earliest of the scheduled events and the
//! nodes' wake-ups ([`regent_core::Machine::poll_timeout`]), moves true time
//! there, handles it, drains the machine's commands and events, and checks
//! every invariant. The same [`SimConfig`] gives the same event log bit for
//! bit ([`SimReport::log_hash`]) on the same commit.
//!
//! - **Nodes** run the real machine (or a [`mutant`] wrapping it) on their
//!   own monotonic clock, which drifts by less than the machine's
//!   `max_drift` ([`time::NodeClock`]); their wall clocks also jump, which
//!   only the wall-clock mutant notices. A small driver turns each command
//!   into a request on the node's one session, over a network with delay,
//!   spikes, loss and reordering; results come back with `handle_result`
//!   when they arrive. `ResetSession` closes the session.
//! - **The database** ([`db::SimDb`]) has the server clock (true time plus
//!   the offset of any steps), sessions with backend pids, re-entrant
//!   advisory locks bound to them, the lease table, row locks with
//!   PostgreSQL's conflict table for the four modes ([`db::RowLockMode`]),
//!   `pg_terminate_backend` with a privilege knob, `LISTEN`/`NOTIFY`,
//!   restarts and failovers (optionally losing the last commits), and a
//!   resource guarded by fencing tokens. Requests on one session run one at
//!   a time in arrival order and take time (with rare stalls), so a slow
//!   statement delays the node's other calls; renewals wait behind
//!   conflicting row locks, claims fail `Busy` at once (`NOWAIT`), and the
//!   server's statement timeout cancels what waits too long. Leaders hold
//!   fenced transactions open for seconds (`FOR KEY SHARE`). A server that
//!   loses a client finds out by FIN or by keepalive, unless a pooler keeps
//!   the backend (a zombie).
//! - **The application** writes to the fenced resource while it believes it
//!   leads, and now and then resigns, stops and re-adds a role, or shuts a
//!   node down gracefully and restarts it.
//! - **Faults** ([`FaultKind`]) are switched on per seed with randomised
//!   rates ([`FaultKnobs`], printed in every report), or given as an
//!   explicit schedule ([`ScheduledFault`], [`strategies`]). Near the end
//!   every fault heals and liveness is checked.
//!
//! # What is checked
//!
//! See [`invariants`]: one leader at a time (`WaitForLease`), every belief
//! covered by a database lease, fencing, increasing terms, no re-entrant
//! lock, the machine's command contract, notification after unlock, the
//! blast radius (no role lost to another role's row locks),
//! liveness after healing, and availability: per role the fraction of time
//! led and the longest leaderless stretch while a healthy node campaigned
//! are measured ([`SimReport::availability`]) and that stretch is bounded
//! unless an unreachable session blocked the lock
//! ([`invariants::availability`]); plus "sometimes" coverage counters that prove
//! the dangerous paths ran. The [`mutant`]s are deliberately
//! broken machines that these checks catch within a few seeds.
//!
//! # Reproducing
//!
//! Every report ends with `reproduce with: cargo run --release --features cli -- sim --seed
//! N --nodes .. --roles .. --minutes .. --faults ..` (the `regent` CLI), and
//! a failing report carries a per-node timeline ([`SimReport::timeline`],
//! [`SimReport::svg`]) and the last log entries. [`sweep()`] runs many seeds on every core, with
//! the same result as one thread ([`sweep_jobs`]).

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod backend;
pub mod config;
pub mod db;
pub mod faults;
pub mod invariants;
mod log;
pub mod mutant;
pub mod report;
pub mod rng;
pub mod strategies;
pub mod sweep;
pub mod time;
mod timeline;
mod world;

pub use config::{FaultKind, FaultSelection, ParseError, SimConfig, parse_policy, policy_name};
pub use db::SimDb;
pub use faults::{Direction, Fault, FaultKnobs, ScheduledFault};
pub use mutant::Mutant;
pub use regent_core::TakeoverPolicy;
pub use report::{Coverage, RunSummary, SimReport, Spread, SweepReport, Violation};
pub use sweep::{default_jobs, sweep, sweep_each, sweep_jobs};
pub use time::SimTime;
pub use world::SimError;

/// Runs one simulation.
///
/// # Errors
/// [`SimError`] if the configuration cannot describe a world (no nodes, no
/// roles).
pub fn try_run(config: &SimConfig) -> Result<SimReport, SimError> {
    let world = world::World::new(config)?;
    let knobs = world.knob_lines();
    Ok(world.run(knobs))
}

/// Runs one simulation; a configuration that cannot run is reported as a
/// `setup` violation.
pub fn run(config: &SimConfig) -> SimReport {
    match try_run(config) {
        Ok(report) => report,
        Err(e) => SimReport {
            config: config.clone(),
            knobs: Vec::new(),
            availability: Vec::new(),
            violations: vec![Violation {
                at: SimTime::ZERO,
                invariant: "setup",
                message: e.to_string(),
            }],
            coverage: Coverage::new(),
            events: 0,
            simulated: std::time::Duration::ZERO,
            log_hash: 0,
            tail: Vec::new(),
            trace: None,
            timeline: String::new(),
            svg: String::new(),
            reproduce: config.reproduce_line(),
        },
    }
}
