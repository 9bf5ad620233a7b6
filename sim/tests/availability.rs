//! Availability is measured per role, shown in the report, and bounded.

use std::time::Duration;

use regent_sim::{Fault, FaultSelection, ScheduledFault, SimConfig, SimReport, run};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The bound the report states on its knobs line.
fn stated_bound(report: &SimReport) -> Duration {
    let line = report
        .knobs
        .iter()
        .find_map(|l| l.split("availability bound ").nth(1))
        .expect("the knobs name the availability bound");
    Duration::from_secs_f64(line.trim_end_matches('s').parse().expect("seconds"))
}

#[test]
fn a_calm_cluster_is_led_all_the_time() {
    let report = run(&SimConfig {
        seed: 11,
        nodes: 3,
        roles: 2,
        duration: secs(600),
        faults: FaultSelection::None,
        ..SimConfig::default()
    });
    assert!(report.passed(), "{report}");
    assert_eq!(report.availability.len(), 2);
    for a in &report.availability {
        assert_eq!(a.observed, secs(600));
        // Resignations and stopped roles still cost a few handovers; a
        // drain that hangs (the application's work ignores cancellation,
        // one drain in ten) holds a resigning role for the drain timeout
        // (5 s) before its release.
        assert!(a.fraction_led() > 0.99, "{report}");
        assert!(a.longest_accountable.length < secs(6), "{report}");
    }
    let text = report.to_string();
    assert!(text.contains("availability (led = some is_leader() true"));
    assert!(text.contains("r1 "), "{text}");
}

/// The evidence: `regent sim --seed 42 --nodes 5 --roles 3
/// --minutes 10 --faults all` ran without zombie preemption, and zombies
/// of crashed nodes kept every lock from ~100 s for ~300 s while healthy
/// nodes waited. Since the database model draws statement times and fenced
/// work, seed 42 draws other knobs (preemption on); seed 893 now shows the
/// same: preemption off, every role leaderless from ~221 s for over 250 s.
/// (The seed moves whenever the histories do: it was 267 until nodes began
/// ending their own lost leases.)
/// That is measured and shown; the invariant excuses it (the lock is
/// blocked), and the run passes.
#[test]
fn zombie_held_locks_are_measured_but_excused() {
    let report = run(&SimConfig {
        seed: 893,
        nodes: 5,
        roles: 3,
        duration: secs(600),
        faults: FaultSelection::All,
        ..SimConfig::default()
    });
    assert!(report.passed(), "{report}");
    assert!(
        report
            .knobs
            .iter()
            .any(|l| l.contains("preempt zombies: false")),
        "{report}"
    );
    let bound = stated_bound(&report);
    for a in &report.availability {
        let s = a.longest_leaderless;
        assert!(s.length > secs(250), "{report}");
        assert!(
            s.from.as_duration() >= secs(211) && s.from.as_duration() <= secs(231),
            "{report}"
        );
        assert!(a.longest_accountable.length <= bound, "{report}");
        assert!(a.fraction_led() < 0.6, "{report}");
    }
}

/// A leader killed without a zombie is replaced after its lease: the
/// leaderless stretch is real (most of a lease) and within the bound.
#[test]
fn a_crashed_leader_costs_about_one_lease() {
    let crash = |node| ScheduledFault {
        at: secs(60),
        fault: Fault::Crash {
            node,
            down_for: secs(200),
            zombie: false,
        },
    };
    let report = run(&SimConfig {
        seed: 5,
        nodes: 3,
        roles: 1,
        duration: secs(180),
        faults: FaultSelection::None,
        // n0 (the leader) and n1 die; n2 must take over after the lease.
        schedule: Some(vec![crash(0), crash(1)]),
        ..SimConfig::default()
    });
    assert!(report.passed(), "{report}");
    let a = report.availability[0];
    let bound = stated_bound(&report);
    // n0 led at 60 s (seed 5): the stretch starts with its crash...
    assert_eq!(
        a.longest_leaderless.from.as_duration(),
        secs(60),
        "{report}"
    );
    // ...and lasts most of a lease (the server drops the dead session by
    // keepalive, then n2 waits out the lease), within the bound.
    assert!(a.longest_leaderless.length >= secs(5), "{report}");
    assert!(a.longest_leaderless.length <= bound, "{report}");
    assert!(a.longest_accountable.length <= a.longest_leaderless.length);
    assert!(a.fraction_led() > 0.9 && a.fraction_led() < 1.0, "{report}");
}

/// Seed 1415 once found preemption starved by a futile one: r0's lock was
/// held by a session its lease row did not name, the machine re-sent that
/// useless preemption every round, and r1's real zombie was never deposed
/// (the availability bound caught it at about 198 s). The machine now skips
/// a preemption that found no zombie behind an unchanged row. (The
/// database model's draws changed seed 1415's history and turned its
/// preemption off; seed 1416 keeps a ten-minute run with preemption on.)
#[test]
fn a_futile_preemption_no_longer_starves_another_role() {
    let report = run(&SimConfig {
        seed: 1416,
        nodes: 3,
        roles: 2,
        duration: secs(600),
        faults: FaultSelection::All,
        ..SimConfig::default()
    });
    assert!(report.passed(), "{report}");
    assert!(
        report
            .knobs
            .iter()
            .any(|l| l.contains("preempt zombies: true (permitted: true)")),
        "{report}"
    );
}
