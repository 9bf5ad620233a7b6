//! Property test: one to three machines, campaigning for one or two roles,
//! driven by random event sequences against a modelled database.
//!
//! The model:
//! - **Clocks.** A database clock runs on; each node's local clock runs at
//!   a rate within `[1-ρ, 1+ρ]` of it (`ρ = max_drift`), changing at random
//!   and starting at an arbitrary origin. Every database timestamp in a
//!   result is the modelled database clock at the instant the command ran.
//! - **Database.** Advisory locks bound to sessions, lease rows whose term
//!   only grows (a claim is `term + 1`), renew/expire only if holder and
//!   term match, `pg_terminate_backend`-like preemption. Commands run at a
//!   random step after they were sent (or never: lost), only within the
//!   attempt timeout (drivers time calls out), and may fail with every
//!   [`BackendError`] kind, or run and then lose their reply or report a
//!   timeout.
//! - **Faults and inputs.** Operators terminating sessions (noticed at
//!   once, at the next call, or announced spuriously), paused nodes, an
//!   external well-behaved holder that also leaves zombie locks, process
//!   crashes and restarts under the same node id, release notifications
//!   and gaps, resign, stop, shutdown, re-adding roles, and "a renew
//!   fails, then nothing more is heard" silences.
//!
//! Checked after every step: (a) a node never reports leader at or past its
//! local deadline, and that deadline is never later than the send instant
//! of a successful claim/renew plus the leader window; (b) terms in
//! `StartedLeading` strictly increase per node and role; (c) under
//! `WaitForLease` a node starts leading only once the predecessor's lease
//! (as returned in `ClaimOutcome::previous`) has passed in database time,
//! and at most one node leads a role at any instant; (d) `StoppedLeading`
//! follows a `StartedLeading` of the same term, and the role's state is
//! leading exactly between the two; (e) after any input the machine is not
//! leading at or past its deadline, and after a failed renew followed by
//! silence it steps down by the deadline; (f) a node leads only
//! while the database lease of its term runs; (g) `Notify` goes out only
//! once the lock is free; (h) the machine never tries a lock its session
//! holds, and never busy-loops on `poll_timeout`. Every case then ends
//! with two liveness checks on a healed database: once every node
//! campaigns again, each role soon has exactly one leader; and a shutdown
//! of every node reaches `is_stopped()`.

// The invariants (a)-(h), checked after every input and step.
mod checks;
// The modelled database, command execution and faults, the external holder.
mod db;
// The random steps, healing, election and shutdown.
mod steps;
// Nodes, clocks, construction and failure reports.
mod world;

use proptest::prelude::*;

use db::Fault;
use world::{Stats, World};

/// Runs one case: the random steps, then healing and shutdown.
fn run(setup: [u16; 8], steps: &[(u8, u16, u16)]) -> Stats {
    let mut w = World::new(setup);
    for (i, s) in steps.iter().enumerate() {
        w.note(format!("#{i} {s:?}"));
        w.step(*s);
    }
    // What the random phase exercised (healing elects leaders anyway).
    let stats = w.stats;
    w.heal_and_elect();
    w.shut_down();
    stats
}

/// Random steps: (kind, a, b).
fn steps_strategy() -> impl Strategy<Value = Vec<(u8, u16, u16)>> {
    prop::collection::vec(any::<(u8, u16, u16)>(), 50..150)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn machines_are_safe_under_random_events(
        setup in any::<[u16; 8]>(),
        steps in steps_strategy(),
    ) {
        run(setup, &steps);
    }
}

/// The random runs reach the situations the property is about.
#[test]
fn random_runs_cover_the_interesting_cases() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (any::<[u16; 8]>(), steps_strategy());
    let mut total = Stats::default();
    let mut cases_leading = 0;
    let n = 500;
    for _ in 0..n {
        let (setup, steps) = strategy.new_tree(&mut runner).unwrap().current();
        let s = run(setup, &steps);
        cases_leading += u32::from(s.started > 0);
        total.started += s.started;
        total.waited += s.waited;
        total.deadline_expired += s.deadline_expired;
        total.lease_lost += s.lease_lost;
        total.lock_lost += s.lock_lost;
        total.resigned += s.resigned;
        total.silence_checked += s.silence_checked;
        total.preempted += s.preempted;
        total.resets += s.resets;
        total.leading_steps += s.leading_steps;
    }
    println!("{n} cases, {cases_leading} with a leader: {total:?}");
    assert!(cases_leading > n / 4, "{cases_leading} {total:?}");
    assert!(total.waited > 10, "{total:?}");
    assert!(total.deadline_expired > 10, "{total:?}");
    assert!(total.lease_lost > 0, "{total:?}");
    assert!(total.lock_lost > 10, "{total:?}");
    assert!(total.resigned > 10, "{total:?}");
    assert!(total.silence_checked > 5, "{total:?}");
    assert!(total.resets > 0, "{total:?}");
}

#[test]
fn a_quiet_run_elects_exactly_one_leader() {
    // Three nodes, no faults: answer everything, let time pass.
    let mut w = World::new([3, 10, 10, 0x2000 | 500, 200, 2, 1, 1000]);
    assert_eq!(w.nodes.len(), 3);
    for _ in 0..200 {
        for j in 0..w.nodes.len() {
            while !w.nodes[j].pending.is_empty() {
                w.execute(j, 0, Fault::None);
                while w.deliver(j, 0) {}
            }
        }
        w.check_all();
        w.step((50, 1, 100));
    }
    let leaders = w
        .nodes
        .iter()
        .filter(|n| n.m.is_leader(&w.roles[0], n.local))
        .count();
    assert_eq!(leaders, 1);
    w.shut_down();
}
