//! `regent sim`: one seed with a report, or a sweep of many seeds.

use std::io::Write;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use clap::Args;
use regent::sim::{FaultSelection, Mutant, SimConfig, SweepReport, default_jobs, parse_policy};

use crate::error::{CliError, EXIT_VIOLATION};
use crate::out::{self, say};

/// Arguments of `regent sim`.
#[derive(Debug, Args)]
pub(crate) struct SimArgs {
    /// The seed of the first (or only) run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run this many seeds, from --seed on, and print a summary table.
    #[arg(long)]
    seeds: Option<u64>,
    /// Nodes that campaign.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Roles every node campaigns for.
    #[arg(long, default_value_t = 3)]
    roles: usize,
    /// Simulated minutes per seed (fractions allowed).
    #[arg(long, default_value_t = 60.0)]
    minutes: f64,
    /// Faults: `all`, `none`, or a list such as `crash,pause,partition`.
    /// `all` leaves out `db-clock-big` and `failover-lossy`, which break
    /// the README's assumptions (name them to see the gaps).
    #[arg(long, default_value = "all")]
    faults: String,
    /// Takeover policy: `wait-for-lease` or `immediate`.
    #[arg(long, default_value = "wait-for-lease")]
    policy: String,
    /// Run a deliberately broken machine (to see the simulator catch it),
    /// e.g. `fences-with-for-share`, `claim-waits-on-row-lock`,
    /// `waits-in-db-time` (the last with `--faults db-clock-big,…`).
    #[arg(long)]
    mutant: Option<String>,
    /// Write an SVG picture of who led when (single seed).
    #[arg(long)]
    svg: Option<std::path::PathBuf>,
    /// Print the per-node timeline (single seed).
    #[arg(long)]
    timeline: bool,
    /// Keep going after a violation in a sweep.
    #[arg(long)]
    keep_going: bool,
    /// Threads a sweep runs on (default: every core). Per-seed results are
    /// the same whatever the number.
    #[arg(long)]
    jobs: Option<NonZeroUsize>,
}

impl SimArgs {
    fn config(&self) -> Result<SimConfig, CliError> {
        if !(self.minutes.is_finite() && self.minutes > 0.0) {
            return Err(CliError(format!(
                "--minutes must be a positive number, got {}",
                self.minutes
            )));
        }
        if self.nodes == 0 || self.roles == 0 {
            return Err(CliError("--nodes and --roles must be at least 1".into()));
        }
        let faults: FaultSelection = self.faults.parse()?;
        let mutant = match &self.mutant {
            Some(m) => Some(m.parse::<Mutant>()?),
            None => None,
        };
        Ok(SimConfig {
            seed: self.seed,
            nodes: self.nodes,
            roles: self.roles,
            duration: Duration::from_secs_f64(self.minutes * 60.0),
            faults,
            policy: parse_policy(&self.policy)?,
            mutant,
            stop_at_first_violation: !self.keep_going,
            ..SimConfig::default()
        })
    }
}

/// Runs `regent sim`; returns the exit code.
pub(crate) fn run(args: &SimArgs) -> Result<u8, CliError> {
    let config = args.config()?;
    match args.seeds {
        None | Some(1) => single(args, &config),
        Some(0) => Err(CliError("--seeds must be at least 1".into())),
        Some(n) => sweep(args, &config, n),
    }
}

fn single(args: &SimArgs, config: &SimConfig) -> Result<u8, CliError> {
    let started = Instant::now();
    let report = regent::sim::run(config);
    if args.timeline {
        say!("{}", report.timeline);
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, &report.svg)
            .map_err(|e| CliError(format!("cannot write {}: {e}", path.display())))?;
        say!("wrote {}", path.display());
    }
    out::text(&report.to_string());
    say!("wall time: {:.2?}", started.elapsed());
    Ok(if report.passed() { 0 } else { EXIT_VIOLATION })
}

fn sweep(args: &SimArgs, config: &SimConfig, n: u64) -> Result<u8, CliError> {
    let started = Instant::now();
    let jobs = args.jobs.unwrap_or_else(default_jobs);
    let mut stderr = std::io::stderr();
    let first = args.seed;
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let progress = |total: &SweepReport| {
        let done = total.seeds;
        let failed = total.runs.last().is_some_and(|r| !r.passed);
        if last_draw.elapsed() >= Duration::from_millis(200) || done == n || failed {
            last_draw = Instant::now();
            let width = 30u64;
            let filled = (done * width / n) as usize;
            let _ = write!(
                stderr,
                "\r[{}{}] {done}/{n} seeds, {} violations",
                "#".repeat(filled),
                " ".repeat(width as usize - filled),
                total.failures.len()
            );
            let _ = stderr.flush();
        }
    };
    let total = regent::sim::sweep_each(
        first..first.saturating_add(n),
        jobs,
        !args.keep_going,
        |seed| config.with_seed(seed),
        progress,
    );
    let _ = writeln!(std::io::stderr());
    let wall = started.elapsed();
    say!("{}", summary(&total, wall, jobs));
    if let Some(fail) = total.failures.first() {
        say!("first violation (seed {}):", fail.config.seed);
        out::text(&fail.to_string());
        return Ok(EXIT_VIOLATION);
    }
    Ok(0)
}

fn summary(total: &SweepReport, wall: Duration, jobs: NonZeroUsize) -> String {
    let hours = total.simulated.as_secs_f64() / 3600.0;
    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("  {k:<34} {v}\n"));
    row("seeds", total.seeds.to_string());
    row("simulated cluster-hours", format!("{hours:.1}"));
    row("events", total.events.to_string());
    row("violations", total.failures.len().to_string());
    // Threads beyond the cores (or the seeds) add no speed: per core means
    // per core actually busy.
    let cores = jobs
        .get()
        .min(default_jobs().get())
        .min(usize::try_from(total.seeds).unwrap_or(usize::MAX))
        .max(1);
    row("jobs (threads)", format!("{jobs} ({cores} cores busy)"));
    row("wall time", format!("{wall:.2?}"));
    let per_min = if wall.as_secs_f64() > 0.0 {
        hours / (wall.as_secs_f64() / 60.0)
    } else {
        0.0
    };
    row("cluster-hours per wall-minute", format!("{per_min:.0}"));
    row(
        "cluster-hours per wall-minute per core",
        format!("{:.0}", per_min / cores as f64),
    );
    out.push_str("  availability (per seed: worst, median):\n");
    for line in total.availability_lines() {
        out.push_str(&format!("    {line}\n"));
    }
    out.push_str("  coverage (sum over seeds):\n");
    for (k, v) in &total.coverage {
        out.push_str(&format!("    {k:<32} {v}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use regent::sim::{default_jobs, sweep_jobs};

    use super::*;

    #[test]
    fn jobs_must_be_positive() {
        assert!(crate::Cli::try_parse_from(["regent", "sim", "--jobs", "0"]).is_err());
        assert!(crate::Cli::try_parse_from(["regent", "sim", "--jobs", "3"]).is_ok());
    }

    #[test]
    fn the_summary_shows_speed_per_core_and_availability() {
        let base = SimConfig {
            nodes: 3,
            roles: 2,
            duration: Duration::from_secs(60),
            ..SimConfig::default()
        };
        let jobs = NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN);
        let total = sweep_jobs(&base, 0..4, jobs);
        let text = summary(&total, Duration::from_secs(1), jobs);
        let cores = jobs.min(default_jobs());
        assert!(
            text.contains(&format!("{jobs} ({cores} cores busy)")),
            "{text}"
        );
        // 4 minutes simulated in one second: 4 cluster-hours per minute.
        assert!(
            text.contains("cluster-hours per wall-minute      4\n"),
            "{text}"
        );
        let per_core = 4.0 / cores.get() as f64;
        assert!(
            text.contains(&format!("per wall-minute per core {per_core:.0}\n")),
            "{text}"
        );
        assert!(text.contains("fraction of time led: worst "), "{text}");
        assert!(
            text.contains("of it without a blocked lock: worst "),
            "{text}"
        );
    }
}
