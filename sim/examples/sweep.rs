//! Sweeps seeds: `cargo run -p regent-sim --release --example sweep -- SEEDS [MINUTES] [POLICY] [MUTANT] [NODES] [ROLES] [FAULTS]`.
use std::time::{Duration, Instant};

use regent_sim::{SimConfig, parse_policy, sweep};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seeds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100);
    let minutes: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let policy = args
        .get(3)
        .and_then(|s| parse_policy(s).ok())
        .unwrap_or_default();
    let mutant = args.get(4).and_then(|s| s.parse().ok());
    let nodes = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(3);
    let roles = args.get(6).and_then(|s| s.parse().ok()).unwrap_or(2);
    let faults = args.get(7).and_then(|s| s.parse().ok()).unwrap_or_default();
    let config = SimConfig {
        duration: Duration::from_secs_f64(minutes * 60.0),
        policy,
        mutant,
        nodes,
        roles,
        faults,
        ..SimConfig::default()
    };
    let t = Instant::now();
    let report = sweep(&config, 0..seeds);
    let wall = t.elapsed();
    println!("{report}");
    println!(
        "wall {:?}; {:.0} simulated cluster-hours per wall-minute",
        wall,
        report.simulated.as_secs_f64() / 3600.0 / (wall.as_secs_f64() / 60.0)
    );
}
