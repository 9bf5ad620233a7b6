//! Runs one seed and prints the report: `cargo run -p regent-sim --example one -- SEED [MINUTES] [FAULTS] [MUTANT]`.
use std::time::{Duration, Instant};

use regent_sim::{SimConfig, run};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seed = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let minutes: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let faults = args.get(3).and_then(|s| s.parse().ok()).unwrap_or_default();
    let mutant = args.get(4).and_then(|s| s.parse().ok());
    let config = SimConfig {
        seed,
        duration: Duration::from_secs_f64(minutes * 60.0),
        faults,
        mutant,
        trace: std::env::var("TRACE").is_ok(),
        ..SimConfig::default()
    };
    let t = Instant::now();
    let report = run(&config);
    println!("{report}");
    if let Ok(path) = std::env::var("SVG")
        && let Err(e) = std::fs::write(&path, &report.svg)
    {
        eprintln!("cannot write {path}: {e}");
    }
    if std::env::var("TIMELINE").is_ok() {
        println!("{}", report.timeline);
    }
    if let Some(trace) = &report.trace {
        for l in trace {
            println!("{l}");
        }
    }
    println!("wall: {:?}", t.elapsed());
}
