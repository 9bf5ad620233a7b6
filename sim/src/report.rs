//! What a run found: [`SimReport`], and [`SweepReport`] over many seeds.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::config::SimConfig;
use crate::time::SimTime;

/// An invariant that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// True simulated time of the step that broke it.
    pub at: SimTime,
    /// The invariant's name (its module under `invariants`).
    pub invariant: &'static str,
    /// What exactly was seen.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] at {}: {}", self.invariant, self.at, self.message)
    }
}

/// "Sometimes" counters: how often each interesting (often dangerous)
/// situation was reached, so a green run proves it went somewhere.
pub type Coverage = BTreeMap<&'static str, u64>;

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// The configuration that ran.
    pub config: SimConfig,
    /// The fault knobs drawn from the seed, one per line.
    pub knobs: Vec<String>,
    /// Invariants broken (empty for a clean run).
    pub violations: Vec<Violation>,
    /// Coverage counters.
    pub coverage: Coverage,
    /// Steps (log entries) processed.
    pub events: u64,
    /// Simulated time reached.
    pub simulated: Duration,
    /// Hash of the whole event log: equal for equal seeds.
    pub log_hash: u64,
    /// The last log entries before the end (or the first violation).
    pub tail: Vec<String>,
    /// Every log entry, when [`SimConfig::trace`] was set.
    pub trace: Option<Vec<String>>,
    /// A per-node text timeline of roles led and faults.
    pub timeline: String,
    /// An SVG picture of who led when, with faults marked.
    pub svg: String,
    /// The one-line command that reproduces this run.
    pub reproduce: String,
}

impl SimReport {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        writeln!(
            f,
            "regent-sim seed {} {}: {} nodes x {} roles, {:.1}s simulated, {} events, log hash {:016x}",
            self.config.seed,
            verdict,
            self.config.nodes,
            self.config.roles,
            self.simulated.as_secs_f64(),
            self.events,
            self.log_hash
        )?;
        writeln!(f, "knobs:")?;
        for k in &self.knobs {
            writeln!(f, "  {k}")?;
        }
        writeln!(f, "coverage:")?;
        for (k, v) in &self.coverage {
            writeln!(f, "  {k:<32} {v}")?;
        }
        if !self.passed() {
            writeln!(f, "violations:")?;
            for v in &self.violations {
                writeln!(f, "  {v}")?;
            }
            writeln!(f, "timeline:")?;
            f.write_str(&self.timeline)?;
            writeln!(
                f,
                "last events (true time, node, what, [role], then two numbers: command id and ok, term, pid, ...):"
            )?;
            for line in &self.tail {
                writeln!(f, "  {line}")?;
            }
        }
        writeln!(f, "{}", self.reproduce)
    }
}

/// One seed of a sweep, in brief: enough to compare two sweeps seed by
/// seed and to aggregate over seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The seed.
    pub seed: u64,
    /// Whether every invariant held.
    pub passed: bool,
    /// [`SimReport::log_hash`].
    pub log_hash: u64,
    /// [`SimReport::events`].
    pub events: u64,
    /// [`SimReport::simulated`].
    pub simulated: Duration,
}

impl RunSummary {
    /// The brief of `report`.
    pub fn of(report: &SimReport) -> Self {
        Self {
            seed: report.config.seed,
            passed: report.passed(),
            log_hash: report.log_hash,
            events: report.events,
            simulated: report.simulated,
        }
    }
}

/// The outcome of many seeds.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    /// Seeds run.
    pub seeds: u64,
    /// Every seed run, in the order added (seed order for the sweeps of
    /// [`crate::sweep`]).
    pub runs: Vec<RunSummary>,
    /// Reports of the seeds that failed (all of them if the sweep did not
    /// stop at the first).
    pub failures: Vec<SimReport>,
    /// Coverage summed over every seed.
    pub coverage: Coverage,
    /// Events summed over every seed.
    pub events: u64,
    /// Simulated time summed over every seed.
    pub simulated: Duration,
}

impl SweepReport {
    /// Whether every seed passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Adds one seed's report to the totals (kept only if it failed).
    pub fn add(&mut self, report: SimReport) {
        self.seeds += 1;
        self.runs.push(RunSummary::of(&report));
        self.events += report.events;
        self.simulated += report.simulated;
        for (k, v) in &report.coverage {
            *self.coverage.entry(k).or_default() += v;
        }
        if !report.passed() {
            self.failures.push(report);
        }
    }
}

impl fmt::Display for SweepReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "sweep: {} seeds, {} failed, {:.1} simulated hours, {} events",
            self.seeds,
            self.failures.len(),
            self.simulated.as_secs_f64() / 3600.0,
            self.events
        )?;
        writeln!(f, "coverage (sum over seeds):")?;
        for (k, v) in &self.coverage {
            writeln!(f, "  {k:<32} {v}")?;
        }
        if let Some(first) = self.failures.first() {
            writeln!(f, "first failure:")?;
            write!(f, "{first}")?;
        }
        Ok(())
    }
}
