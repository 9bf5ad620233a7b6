//! What to simulate: [`SimConfig`], fault kinds and their selection.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use regent_core::TakeoverPolicy;
use thiserror::Error;

use crate::faults::ScheduledFault;
use crate::mutant::Mutant;

/// A kind of fault the world can inject. Each kind is switched on or off per
/// seed, with randomised rates, when selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A node process dies and restarts later with a fresh machine and a
    /// new session.
    Crash,
    /// A node process is stopped (SIGSTOP-like), often longer than a lease.
    Pause,
    /// The network between a node and the database is cut, one way or both.
    Partition,
    /// Messages are delayed (sometimes beyond the attempt timeout), lost
    /// and reordered.
    Network,
    /// The server runs a statement but its reply is lost.
    ReplyLoss,
    /// Node clocks drift (within the configured bound) and wall clocks jump.
    Clock,
    /// A crashed node's backend stays alive with its locks (a pooler keeps
    /// it): a zombie.
    Zombie,
    /// Release notifications are lost.
    NotifyLoss,
    /// PostgreSQL restarts: every session and lock is gone, rows stay.
    PgRestart,
    /// An operator runs `pg_terminate_backend` on a random session.
    Terminate,
    /// A statement stalls on the server now and then (a checkpoint, lock
    /// contention elsewhere, a slow disk), up to several seconds; past the
    /// server's `statement_timeout` it is cancelled.
    SlowDb,
    /// The database server's clock steps: backward by up to
    /// [`crate::faults::DB_STEP_BACK_MAX`], or forward by at most half the
    /// safety margin and at most once per two leases (what the README's
    /// guarantee allows).
    DbClock,
    /// PostgreSQL fails over to a standby that has every commit: every
    /// session, lock and open transaction is gone, rows stay, and the new
    /// host's clock may differ (as [`FaultKind::DbClock`] steps it).
    Failover,
    /// Forward steps of the database clock larger than the safety margin
    /// (up to [`crate::faults::DB_STEP_BIG_MAX`]). Outside the documented
    /// guarantee: never part of `all`, selected by name to show the gap.
    DbClockBig,
    /// A failover to an asynchronous standby that lost the last commits
    /// (up to a few seconds of them). Outside the documented guarantee
    /// (terms can repeat): never part of `all`, selected by name.
    FailoverLossy,
}

impl FaultKind {
    /// Every kind, in a fixed order (including those outside the
    /// guarantees, see [`FaultKind::is_gap`]).
    pub const ALL: [FaultKind; 15] = [
        FaultKind::Crash,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Network,
        FaultKind::ReplyLoss,
        FaultKind::Clock,
        FaultKind::Zombie,
        FaultKind::NotifyLoss,
        FaultKind::PgRestart,
        FaultKind::Terminate,
        FaultKind::SlowDb,
        FaultKind::DbClock,
        FaultKind::Failover,
        FaultKind::DbClockBig,
        FaultKind::FailoverLossy,
    ];

    /// Whether the kind breaks an assumption the README states (so some
    /// invariants are expected to fail under it): such kinds are left out
    /// of [`FaultSelection::All`] and run only when named.
    pub fn is_gap(self) -> bool {
        matches!(self, FaultKind::DbClockBig | FaultKind::FailoverLossy)
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Crash => "crash",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Network => "network",
            FaultKind::ReplyLoss => "reply-loss",
            FaultKind::Clock => "clock",
            FaultKind::Zombie => "zombie",
            FaultKind::NotifyLoss => "notify-loss",
            FaultKind::PgRestart => "pg-restart",
            FaultKind::Terminate => "terminate",
            FaultKind::SlowDb => "slow-db",
            FaultKind::DbClock => "db-clock",
            FaultKind::Failover => "failover",
            FaultKind::DbClockBig => "db-clock-big",
            FaultKind::FailoverLossy => "failover-lossy",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A word on the command line that names nothing known.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown {what} {got:?}; expected one of: {expected}")]
pub struct ParseError {
    /// What was being parsed.
    pub what: &'static str,
    /// The rejected word.
    pub got: String,
    /// The accepted words.
    pub expected: String,
}

impl FromStr for FaultKind {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| ParseError {
                what: "fault",
                got: s.to_owned(),
                expected: FaultKind::ALL.map(FaultKind::name).join(", "),
            })
    }
}

/// Which fault kinds may be injected.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FaultSelection {
    /// Every kind within the documented guarantees (each still switched
    /// on or off per seed): all but the [`FaultKind::is_gap`] ones.
    #[default]
    All,
    /// No faults at all.
    None,
    /// Only these kinds.
    Only(BTreeSet<FaultKind>),
}

impl FaultSelection {
    /// Whether `kind` may be injected.
    pub fn allows(&self, kind: FaultKind) -> bool {
        match self {
            FaultSelection::All => !kind.is_gap(),
            FaultSelection::None => false,
            FaultSelection::Only(set) => set.contains(&kind),
        }
    }
}

impl fmt::Display for FaultSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultSelection::All => f.write_str("all"),
            FaultSelection::None => f.write_str("none"),
            FaultSelection::Only(set) if set.is_empty() => f.write_str("none"),
            FaultSelection::Only(set) => {
                let names: Vec<&str> = set.iter().map(|k| k.name()).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

impl FromStr for FaultSelection {
    type Err = ParseError;
    /// `all`, `none`, or a comma-separated list such as `crash,pause`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(FaultSelection::All),
            "none" | "" => Ok(FaultSelection::None),
            list => list
                .split(',')
                .map(|w| w.trim().parse())
                .collect::<Result<BTreeSet<_>, _>>()
                .map(FaultSelection::Only),
        }
    }
}

/// The command-line name of a takeover policy.
pub fn policy_name(policy: TakeoverPolicy) -> &'static str {
    policy.name()
}

/// Parses `wait-for-lease` or `immediate`.
///
/// # Errors
/// [`ParseError`] for any other word.
pub fn parse_policy(s: &str) -> Result<TakeoverPolicy, ParseError> {
    s.parse().map_err(|_| ParseError {
        what: "policy",
        got: s.to_owned(),
        expected: "wait-for-lease, immediate".to_owned(),
    })
}

/// One simulation run: the seed decides everything else (fault rates, node
/// clocks, delays), so `(SimConfig, commit)` reproduces a run exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// The seed of the world's only RNG.
    pub seed: u64,
    /// How many nodes campaign (each for every role).
    pub nodes: usize,
    /// How many roles.
    pub roles: usize,
    /// Simulated time, including the final liveness phase in which every
    /// fault is healed.
    pub duration: Duration,
    /// Which faults may be injected.
    pub faults: FaultSelection,
    /// The takeover policy every node uses.
    pub policy: TakeoverPolicy,
    /// A deliberately broken machine to run instead of the real one.
    pub mutant: Option<Mutant>,
    /// Stop at the first violation (sweeps and mutant tests) or keep going.
    pub stop_at_first_violation: bool,
    /// Keep a full text trace of the run in the report (slow; for
    /// debugging one seed).
    pub trace: bool,
    /// An explicit fault schedule to inject instead of random faults (see
    /// [`crate::strategies`]); `None` draws faults from the seed.
    pub schedule: Option<Vec<ScheduledFault>>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            nodes: 3,
            roles: 2,
            duration: Duration::from_secs(120),
            faults: FaultSelection::All,
            policy: TakeoverPolicy::WaitForLease,
            mutant: None,
            stop_at_first_violation: true,
            trace: false,
            schedule: None,
        }
    }
}

impl SimConfig {
    /// The same config with another seed.
    pub fn with_seed(&self, seed: u64) -> Self {
        Self {
            seed,
            ..self.clone()
        }
    }

    /// The one line that reproduces this run.
    pub fn reproduce_line(&self) -> String {
        let minutes = self.duration.as_secs_f64() / 60.0;
        let mut line = format!(
            "reproduce with: cargo run --release --features cli -- sim --seed {} --nodes {} --roles {} --minutes {} --faults {}",
            self.seed,
            self.nodes,
            self.roles,
            trim_float(minutes),
            self.faults
        );
        if self.policy != TakeoverPolicy::WaitForLease {
            line.push_str(" --policy ");
            line.push_str(policy_name(self.policy));
        }
        if let Some(m) = self.mutant {
            line.push_str(" --mutant ");
            line.push_str(m.name());
        }
        if self.schedule.is_some() {
            line.push_str("  # plus the explicit fault schedule printed above");
        }
        line
    }
}

fn trim_float(x: f64) -> String {
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_round_trip() {
        for text in ["all", "none", "crash,pause", "pg-restart"] {
            let sel: FaultSelection = text.parse().unwrap();
            assert_eq!(sel.to_string(), text);
        }
        assert!("crash,bogus".parse::<FaultSelection>().is_err());
    }

    #[test]
    fn reproduce_line_names_everything() {
        let c = SimConfig {
            seed: 42,
            duration: Duration::from_secs(90),
            policy: TakeoverPolicy::Immediate,
            mutant: Some(Mutant::SkipsLeaseWait),
            ..SimConfig::default()
        };
        assert_eq!(
            c.reproduce_line(),
            "reproduce with: cargo run --release --features cli -- sim --seed 42 --nodes 3 --roles 2 \
             --minutes 1.5 --faults all --policy immediate --mutant skips-lease-wait"
        );
    }
}
