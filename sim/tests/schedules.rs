//! Explicit fault schedules, searched by proptest.

use std::time::Duration;

use proptest::prelude::*;
use regent_sim::strategies::sim_config;
use regent_sim::{Direction, Fault, ScheduledFault, SimConfig, run};

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// No explicit schedule of crashes, pauses, partitions, restarts,
    /// terminations and clock jumps breaks an invariant.
    #[test]
    fn no_schedule_breaks_an_invariant(config in sim_config(3, 2, 120)) {
        let report = run(&config);
        prop_assert!(report.passed(), "{}", report);
    }
}

/// A paused leader, a partitioned standby and a database restart, by hand.
#[test]
fn hand_written_schedule() {
    let s = |secs: u64, fault| ScheduledFault {
        at: Duration::from_secs(secs),
        fault,
    };
    let schedule = vec![
        s(
            5,
            Fault::Pause {
                node: 0,
                duration: Duration::from_secs(25),
            },
        ),
        s(
            6,
            Fault::Pause {
                node: 1,
                duration: Duration::from_secs(25),
            },
        ),
        s(
            7,
            Fault::Pause {
                node: 2,
                duration: Duration::from_secs(25),
            },
        ),
        s(
            40,
            Fault::Partition {
                node: 1,
                direction: Direction::Both,
                duration: Duration::from_secs(20),
            },
        ),
        s(
            45,
            Fault::PgRestart {
                down_for: Duration::from_secs(3),
            },
        ),
        s(
            50,
            Fault::Crash {
                node: 2,
                down_for: Duration::from_secs(5),
                zombie: true,
            },
        ),
        s(
            55,
            Fault::ClockJump {
                node: 0,
                micros: 20_000_000,
            },
        ),
    ];
    let report = run(&SimConfig {
        seed: 9,
        duration: Duration::from_secs(150),
        schedule: Some(schedule),
        ..SimConfig::default()
    });
    assert!(report.passed(), "{report}");
    assert!(
        report
            .coverage
            .get("fault_pg_restart")
            .copied()
            .unwrap_or(0)
            == 1
    );
    assert!(
        report
            .coverage
            .get("fault_pause_longer_than_lease")
            .copied()
            .unwrap_or(0)
            >= 3
    );
}

/// Proptest finds a fault schedule that breaks a mutant and shrinks it to a
/// few faults: how a user gets a minimal reproduction.
#[test]
fn proptest_shrinks_a_failing_schedule() {
    use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};
    use regent_sim::Mutant;

    // A fixed proptest seed: how far shrinking gets within its iteration
    // budget depends on the cases drawn, and CI must not depend on luck.
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 64,
            max_shrink_iters: 200,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = sim_config(3, 1, 120).prop_map(|c| SimConfig {
        mutant: Some(Mutant::SkipsLeaseWait),
        ..c
    });
    let result = runner.run(&strategy, |config| {
        let report = run(&config);
        prop_assert!(report.passed(), "{}", report.violations[0]);
        Ok(())
    });
    match result {
        Err(TestError::Fail(why, minimal)) => {
            let schedule = minimal.schedule.unwrap_or_default();
            eprintln!("minimal failing schedule ({why}): {schedule:#?}");
            assert!(!schedule.is_empty() && schedule.len() <= 4, "{schedule:#?}");
        }
        other => panic!("expected the mutant to be caught, got {other:?}"),
    }
}
