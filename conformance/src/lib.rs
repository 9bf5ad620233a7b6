//! The engine-neutral conformance kit of regent: every election scenario
//! written once against the core's backend traits ([`regent_core::Backend`])
//! and the tokio driver, for any engine to run. An engine conforms when
//! every scenario passes with no engine-specific changes.
//!
//! An engine implements [`Engine`] (make a node, prepare the store, crash a
//! node) and, where it can, the optional capabilities: ending a session
//! from outside ([`Terminate`]), fenced work ([`Fencing`]), an unreachable
//! store, release notifications. [`conformance_tests!`] then generates one
//! test per scenario. A scenario whose capability is missing is skipped and
//! says so on stderr (`conformance[sim] takeover_waits_for_fenced_work:
//! SKIPPED (...)`); every other scenario still runs.
//!
//! | scenario | needs |
//! |---|---|
//! | `one_leader_others_observe`, `crash_wait_for_lease`, `crash_immediate`, `many_roles_one_node`, `names_round_trip`, `namespaces_do_not_interfere` | [`Engine`] only |
//! | `resign_hands_over_by_notification` | [`Engine::notifies_releases`] |
//! | `terminated_session_steps_down` | [`Engine::terminate`] |
//! | `unreachable_store_fails_at_start` | [`Engine::unreachable_node`] |
//! | `fenced_stale_token_fails`, `long_fenced_work_keeps_every_role` | [`Engine::fencing`] |
//! | `blocked_claim_keeps_other_roles`, `takeover_waits_for_fenced_work` | [`Engine::fencing`] with [`Fencing::work_holds_off_takeover`] |
//!
//! The kit uses no SQL and no database client: it checks what the traits'
//! contracts promise (one leader, increasing terms, expiry in the engine's
//! time, lock loss reported as such, fenced work ordered by commit) through
//! the handles and the traits. Engine-specific scenarios (PostgreSQL's
//! zombies, privileges, pgbouncer) belong in the engine's own tests and can
//! reuse [`support`].
//!
//! No scenario asserts how fast anything happens: every wait is bounded by
//! [`support::HANG_GUARD`], which only catches hangs. Speed targets live in
//! the benchmarks (`benches/`, `BENCHMARKS.md`).
//!
//! # Using the kit
//!
//! ```no_run
//! use regent_conformance::{Engine, conformance_tests};
//! use regent_sim::backend::{SimBackend, SimCluster};
//!
//! struct Sim(SimCluster);
//!
//! #[async_trait::async_trait]
//! impl Engine for Sim {
//!     type Node = SimBackend;
//!     fn name(&self) -> &str { "sim" }
//!     async fn node(&self, name: &str) -> SimBackend { self.0.backend(name) }
//!     async fn prepare(&self, _: &SimBackend) -> Result<(), String> { Ok(()) }
//!     async fn crash(&self, node: &SimBackend) { self.0.crash(node.name()) }
//! }
//!
//! conformance_tests!(#[tokio::test(start_paused = true)] Sim(SimCluster::new()));
//! ```
//!
//! The attribute is the engine's choice: a simulated engine runs on tokio's
//! paused clock, a real database on a multi-threaded runtime
//! (`#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`).

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod crash;
mod engine;
pub mod scenarios;
pub mod support;

use std::io::Write;

pub use crash::Crashable;
pub use engine::{Engine, FenceError, FencedEntry, FencedWork, Fencing, Terminate};
use regent_core::TakeoverPolicy;

/// How a scenario ended (a failed scenario panics, like an assertion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every check held.
    Passed,
    /// The engine lacks a capability the scenario needs; the reason says
    /// which.
    Skipped(String),
}

/// Every scenario of the kit, by name, in the order
/// [`conformance_tests!`] generates them (each use of the macro also
/// generates a test that checks the two agree).
pub const SCENARIOS: &[&str] = &[
    "one_leader_others_observe",
    "resign_hands_over_by_notification",
    "crash_wait_for_lease",
    "crash_immediate",
    "terminated_session_steps_down",
    "unreachable_store_fails_at_start",
    "many_roles_one_node",
    "names_round_trip",
    "namespaces_do_not_interfere",
    "fenced_stale_token_fails",
    "long_fenced_work_keeps_every_role",
    "blocked_claim_keeps_other_roles",
    "takeover_waits_for_fenced_work",
];

/// Runs one scenario by name (one of [`SCENARIOS`]).
///
/// # Panics
/// When the scenario fails, or `name` is not a scenario.
pub async fn run<E: Engine>(engine: &E, name: &str) -> Outcome {
    use scenarios::{election, fenced, names};
    match name {
        "one_leader_others_observe" => election::one_leader_others_observe(engine).await,
        "resign_hands_over_by_notification" => {
            election::resign_hands_over_by_notification(engine).await
        }
        "crash_wait_for_lease" => election::crash(engine, TakeoverPolicy::WaitForLease).await,
        "crash_immediate" => election::crash(engine, TakeoverPolicy::Immediate).await,
        "terminated_session_steps_down" => election::terminated_session_steps_down(engine).await,
        "unreachable_store_fails_at_start" => {
            election::unreachable_store_fails_at_start(engine).await
        }
        "many_roles_one_node" => names::many_roles_one_node(engine).await,
        "names_round_trip" => names::names_round_trip(engine).await,
        "namespaces_do_not_interfere" => names::namespaces_do_not_interfere(engine).await,
        "fenced_stale_token_fails" => fenced::fenced_stale_token_fails(engine).await,
        "long_fenced_work_keeps_every_role" => {
            fenced::long_fenced_work_keeps_every_role(engine).await
        }
        "blocked_claim_keeps_other_roles" => fenced::blocked_claim_keeps_other_roles(engine).await,
        "takeover_waits_for_fenced_work" => fenced::takeover_waits_for_fenced_work(engine).await,
        other => panic!("unknown conformance scenario {other}"),
    }
}

/// Runs one scenario and, if it was skipped, says so on stderr (written
/// directly, so the test harness shows it even for a passing test).
pub async fn run_and_report<E: Engine>(engine: &E, name: &str) -> Outcome {
    let outcome = run(engine, name).await;
    if let Outcome::Skipped(reason) = &outcome {
        let _ = writeln!(
            std::io::stderr().lock(),
            "conformance[{}] {name}: SKIPPED ({reason})",
            engine.name()
        );
    }
    outcome
}

/// Generates one test per scenario of the kit for an engine expression,
/// under the given test attribute. See the crate docs.
#[macro_export]
macro_rules! conformance_tests {
    (#[$attr:meta] $engine:expr) => {
        $crate::conformance_tests!(@each [$attr] $engine;
            one_leader_others_observe,
            resign_hands_over_by_notification,
            crash_wait_for_lease,
            crash_immediate,
            terminated_session_steps_down,
            unreachable_store_fails_at_start,
            many_roles_one_node,
            names_round_trip,
            namespaces_do_not_interfere,
            fenced_stale_token_fails,
            long_fenced_work_keeps_every_role,
            blocked_claim_keeps_other_roles,
            takeover_waits_for_fenced_work,
        );
    };
    (@each [$attr:meta] $engine:expr; $($name:ident),* $(,)?) => {
        $(
            #[$attr]
            async fn $name() {
                let engine = $engine;
                $crate::run_and_report(&engine, stringify!($name)).await;
            }
        )*

        /// The generated tests and the kit's scenario list agree, so no
        /// scenario silently never runs.
        #[test]
        fn conformance_kit_runs_every_scenario() {
            assert_eq!([$(stringify!($name)),*].as_slice(), $crate::SCENARIOS);
        }
    };
}
