//! Same seed, same log, bit for bit.

mod common;

use std::time::Duration;

use regent_sim::{FaultSelection, Mutant, SimConfig, TakeoverPolicy, run};

use common::ci_config;

#[test]
fn same_seed_same_log_hash() {
    let mut hashes = std::collections::BTreeSet::new();
    for seed in 0..40 {
        let mut config = ci_config(seed);
        if seed % 4 == 1 {
            config.policy = TakeoverPolicy::Immediate;
        }
        if seed % 4 == 2 {
            config.mutant = Some(Mutant::ALL[(seed / 4) as usize % Mutant::ALL.len()]);
        }
        let a = run(&config);
        let b = run(&config);
        assert_eq!(a.log_hash, b.log_hash, "seed {seed} is not deterministic");
        assert_eq!(a.events, b.events);
        assert_eq!(a.coverage, b.coverage);
        assert_eq!(a.violations, b.violations);
        assert_eq!(a.tail, b.tail);
        hashes.insert(a.log_hash);
    }
    // Different seeds explore different histories.
    assert_eq!(hashes.len(), 40);
}

#[test]
fn a_calm_cluster_elects_at_once_and_keeps_its_leaders() {
    let report = run(&SimConfig {
        seed: 3,
        nodes: 4,
        roles: 3,
        duration: Duration::from_secs(300),
        faults: FaultSelection::None,
        ..SimConfig::default()
    });
    assert!(report.passed(), "{report}");
    let get = |k: &str| report.coverage.get(k).copied().unwrap_or(0);
    // Only voluntary hand-overs (resign, stop, graceful shutdown): no node
    // ever loses a lease, a lock or its deadline in a calm cluster.
    assert_eq!(get("stepped_down_at_deadline"), 0, "{report}");
    assert_eq!(get("stepped_down_lock_lost"), 0, "{report}");
    assert_eq!(get("stepped_down_lease_lost"), 0, "{report}");
    let voluntary = get("stepped_down_resigned") + get("stepped_down_shutdown");
    assert!(get("started_leading") <= 3 + voluntary, "{report}");
    assert!(get("started_leading") >= 3, "{report}");
    // Every graceful hand-over goes through the notification in < 50 ms.
    assert_eq!(get("graceful_handover_50ms_to_2s"), 0, "{report}");
    assert_eq!(get("graceful_handover_over_2s"), 0, "{report}");
    assert!(get("fenced_write_accepted") > 100);
    assert_eq!(get("deposed_fenced_write_rejected"), 0, "{report}");
}

#[test]
fn failure_reports_end_with_the_reproduce_line() {
    // The first seed at which the simulator catches this mutant (which
    // seeds do depends on the histories; `sim/tests/mutants.rs` checks that
    // every mutant is caught within a few seeds).
    let (config, report) = (0..40)
        .map(|seed| SimConfig {
            mutant: Some(Mutant::NotifiesBeforeUnlock),
            ..ci_config(seed)
        })
        .map(|c| {
            let r = run(&c);
            (c, r)
        })
        .find(|(_, r)| !r.passed())
        .expect("the mutant is caught within 40 seeds");
    let text = report.to_string();
    let last = text.lines().last().unwrap_or_default();
    let expected = format!(
        "reproduce with: cargo run --release --features cli -- sim --seed {} --nodes {} \
         --roles {} --minutes 3 --faults all --mutant notifies-before-unlock",
        config.seed, config.nodes, config.roles
    );
    assert!(last.starts_with(&expected), "{last}\nexpected {expected}");
    assert!(text.contains("timeline:"));
    assert!(report.svg.starts_with("<svg"));
}

#[test]
fn bad_shapes_are_reported_not_panics() {
    let report = run(&SimConfig {
        nodes: 0,
        ..SimConfig::default()
    });
    assert_eq!(report.violations[0].invariant, "setup");
    assert!(
        regent_sim::try_run(&SimConfig {
            roles: 0,
            ..SimConfig::default()
        })
        .is_err()
    );
}
