//! What a run found: [`SimReport`], and [`SweepReport`] over many seeds.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::config::SimConfig;
use crate::invariants::availability::RoleAvailability;
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
    /// Per role (index = role number): time led, longest leaderless
    /// stretches (see [`crate::invariants::availability`]).
    pub availability: Vec<RoleAvailability>,
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
        writeln!(
            f,
            "availability (led = some is_leader() true; stretches: no leader while a healthy node campaigned):"
        )?;
        writeln!(
            f,
            "  {:<5} {:>8} {:>26} {:>30}",
            "role", "led", "longest stretch (from)", "longest w/o blocked lock (from)"
        )?;
        for (r, a) in self.availability.iter().enumerate() {
            writeln!(
                f,
                "  r{r:<4} {:>7.3}% {:>26} {:>30}",
                a.fraction_led() * 100.0,
                format!(
                    "{:.1}s ({})",
                    a.longest_leaderless.length.as_secs_f64(),
                    a.longest_leaderless.from
                ),
                format!(
                    "{:.1}s ({})",
                    a.longest_accountable.length.as_secs_f64(),
                    a.longest_accountable.from
                ),
            )?;
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
    /// Time led, summed over roles.
    pub led: Duration,
    /// Time observed, summed over roles.
    pub observed: Duration,
    /// The longest leaderless stretch with a healthy node, over roles.
    pub longest_leaderless: Duration,
    /// The longest such stretch with the lock not blocked, over roles.
    pub longest_accountable: Duration,
}

impl RunSummary {
    /// The brief of `report`.
    pub fn of(report: &SimReport) -> Self {
        let a = &report.availability;
        Self {
            seed: report.config.seed,
            passed: report.passed(),
            log_hash: report.log_hash,
            events: report.events,
            simulated: report.simulated,
            led: a.iter().map(|r| r.led).sum(),
            observed: a.iter().map(|r| r.observed).sum(),
            longest_leaderless: a
                .iter()
                .map(|r| r.longest_leaderless.length)
                .max()
                .unwrap_or_default(),
            longest_accountable: a
                .iter()
                .map(|r| r.longest_accountable.length)
                .max()
                .unwrap_or_default(),
        }
    }

    /// The fraction of role-time with a leader (1 for no time).
    pub fn fraction_led(&self) -> f64 {
        if self.observed.is_zero() {
            1.0
        } else {
            self.led.as_secs_f64() / self.observed.as_secs_f64()
        }
    }
}

/// Worst and median of one availability measure over a sweep's seeds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread<T> {
    /// The worst seed's value, and that seed.
    pub worst: (T, u64),
    /// The median (the lower one of an even count).
    pub p50: T,
}

fn spread<T: Copy + PartialOrd>(
    runs: &[RunSummary],
    value: impl Fn(&RunSummary) -> T,
    worse: impl Fn(T, T) -> bool,
) -> Option<Spread<T>> {
    let mut values: Vec<(T, u64)> = runs.iter().map(|r| (value(r), r.seed)).collect();
    // Worst first; among equals the lower seed first, so ties are stable.
    values.sort_by(|a, b| {
        if worse(a.0, b.0) {
            std::cmp::Ordering::Less
        } else if worse(b.0, a.0) {
            std::cmp::Ordering::Greater
        } else {
            a.1.cmp(&b.1)
        }
    });
    let worst = *values.first()?;
    let p50 = values[(values.len() - 1) / 2].0;
    Some(Spread { worst, p50 })
}

/// The outcome of many seeds.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    /// Seeds run.
    pub seeds: u64,
    /// Every seed run, in the order added (seed order for the sweeps of
    /// [`mod@crate::sweep`]).
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

    /// Fraction of role-time led per seed: the lowest, and the median.
    pub fn fraction_led(&self) -> Option<Spread<f64>> {
        spread(&self.runs, RunSummary::fraction_led, |a, b| a < b)
    }

    /// Longest leaderless stretch with a healthy node per seed: the
    /// longest, and the median.
    pub fn longest_leaderless(&self) -> Option<Spread<Duration>> {
        spread(&self.runs, |r| r.longest_leaderless, |a, b| a > b)
    }

    /// The same without blocked-lock time (what the invariant bounds).
    pub fn longest_accountable(&self) -> Option<Spread<Duration>> {
        spread(&self.runs, |r| r.longest_accountable, |a, b| a > b)
    }

    /// The availability lines of the summary: worst and median per seed.
    pub fn availability_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(s) = self.fraction_led() {
            out.push(format!(
                "fraction of time led: worst {:.3}% (seed {}), p50 {:.3}%",
                s.worst.0 * 100.0,
                s.worst.1,
                s.p50 * 100.0
            ));
        }
        for (what, s) in [
            (
                "longest leaderless stretch, healthy node",
                self.longest_leaderless(),
            ),
            ("  of it without a blocked lock", self.longest_accountable()),
        ] {
            if let Some(s) = s {
                out.push(format!(
                    "{what}: worst {:.1}s (seed {}), p50 {:.1}s",
                    s.worst.0.as_secs_f64(),
                    s.worst.1,
                    s.p50.as_secs_f64()
                ));
            }
        }
        out
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
        for line in self.availability_lines() {
            writeln!(f, "{line}")?;
        }
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
