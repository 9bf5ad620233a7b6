//! Shared helpers of the benchmarks: statistics and plain-text tables.

#![allow(dead_code)]

use std::time::Duration;

/// Summary statistics of a sample of durations.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

/// Nearest-rank percentiles (`q` in 0..=1) of `v`.
pub fn stats(v: &[Duration]) -> Stats {
    assert!(!v.is_empty(), "no samples");
    let mut s = v.to_vec();
    s.sort();
    let rank = |q: f64| {
        let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
        s[i - 1]
    };
    let total: Duration = s.iter().sum();
    Stats {
        n: s.len(),
        min: s[0],
        p50: rank(0.5),
        p90: rank(0.9),
        p99: rank(0.99),
        max: s[s.len() - 1],
        mean: total / s.len() as u32,
    }
}

/// `12.3 ms`
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Prints a table with a header row, columns padded to fit.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    println!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        line(r.clone());
    }
}

/// The row of a [`Stats`] as table cells: n, p50, p90, p99, max.
pub fn stat_cells(s: &Stats) -> Vec<String> {
    vec![s.n.to_string(), ms(s.p50), ms(s.p90), ms(s.p99), ms(s.max)]
}

/// The value of environment variable `name`, or `default` when it is unset
/// or does not parse.
pub fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs `main` on a two-thread runtime (this machine's cores), printing the
/// engine's logs on stderr when `RUST_LOG` is set.
pub fn run_on_runtime<F: std::future::Future>(main: F) -> F::Output {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(main)
}

pub mod load;
