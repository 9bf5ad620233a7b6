//! Every mutant must be caught within 500 seeds; each test stops at the
//! first violation.

mod common;

use regent_sim::{Mutant, SimConfig};

use common::{ci_config, sweep_with};

fn caught(mutant: Mutant, expected: &[&str]) {
    let report = sweep_with(0..500, |seed| SimConfig {
        mutant: Some(mutant),
        ..ci_config(seed)
    });
    let Some(first) = report.failures.first() else {
        panic!("mutant {mutant} survived 500 seeds:\n{report}");
    };
    let v = &first.violations[0];
    assert!(
        expected.contains(&v.invariant),
        "mutant {mutant} caught by {} instead of {expected:?}:\n{first}",
        v.invariant
    );
    assert!(
        first
            .reproduce
            .contains(&format!("--mutant {}", mutant.name()))
    );
    eprintln!(
        "{mutant}: caught at seed {} after {} seeds by {v}",
        first.config.seed, report.seeds
    );
}

#[test]
fn stays_leader_on_db_error_is_caught() {
    caught(
        Mutant::StaysLeaderOnDbError,
        &["one_leader", "lease_covers", "terms"],
    );
}

#[test]
fn notifies_before_unlock_is_caught() {
    caught(Mutant::NotifiesBeforeUnlock, &["notify_order"]);
}

#[test]
fn trusts_wall_clock_is_caught() {
    // A wall clock behind the database makes the node wait past its own
    // deadline and never lead (liveness, or availability when it is the
    // only healthy candidate for longer than the bound); one ahead makes
    // it lead early.
    caught(
        Mutant::TrustsWallClock,
        &[
            "one_leader",
            "lease_covers",
            "terms",
            "liveness",
            "availability",
        ],
    );
}

#[test]
fn skips_lease_wait_is_caught() {
    caught(
        Mutant::SkipsLeaseWait,
        &["one_leader", "lease_covers", "terms"],
    );
}

#[test]
fn ignores_deadline_is_caught() {
    caught(
        Mutant::IgnoresDeadline,
        &["one_leader", "lease_covers", "terms"],
    );
}
