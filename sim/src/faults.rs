//! Faults: the discrete ones that can be scheduled ([`Fault`]), and the
//! per-seed knobs ([`FaultKnobs`]) that decide which kinds happen, how often
//! and how badly.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use crate::config::{FaultKind, FaultSelection};
use crate::rng::SimRng;

/// Which way a partition cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Node → database messages are dropped.
    ToDb,
    /// Database → node messages are dropped.
    FromDb,
    /// Both.
    Both,
}

impl Direction {
    /// Whether node → database traffic is cut.
    pub fn cuts_to_db(self) -> bool {
        matches!(self, Direction::ToDb | Direction::Both)
    }
    /// Whether database → node traffic is cut.
    pub fn cuts_from_db(self) -> bool {
        matches!(self, Direction::FromDb | Direction::Both)
    }
}

/// A discrete fault. Node indices are taken modulo the number of nodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Kill a node; it restarts after `down_for`. With `zombie`, its backend
    /// stays alive (a pooler keeps it) instead of being closed.
    Crash {
        /// The node.
        node: usize,
        /// How long it stays down.
        down_for: Duration,
        /// Whether its session becomes a zombie.
        zombie: bool,
    },
    /// Stop a node's process for `duration` (it processes nothing; requests
    /// it already sent still run).
    Pause {
        /// The node.
        node: usize,
        /// How long.
        duration: Duration,
    },
    /// Cut a node off from the database.
    Partition {
        /// The node.
        node: usize,
        /// Which way.
        direction: Direction,
        /// How long.
        duration: Duration,
    },
    /// Restart PostgreSQL; it is down for `down_for`.
    PgRestart {
        /// Downtime.
        down_for: Duration,
    },
    /// `pg_terminate_backend` of one live session, picked by `pick` modulo
    /// the number of sessions.
    Terminate {
        /// Which session.
        pick: usize,
    },
    /// Step a node's wall clock by `micros` (its monotonic clock is
    /// unaffected).
    ClockJump {
        /// The node.
        node: usize,
        /// The step, positive forward.
        micros: i64,
    },
    /// Step the database server's clock by `micros` (positive forward).
    /// With `bounded`, a forward step is applied only if no forward step
    /// happened in the last two leases (else it is skipped).
    DbClockStep {
        /// The step, positive forward.
        micros: i64,
        /// Whether the once-per-two-leases rule applies.
        bounded: bool,
    },
    /// PostgreSQL fails over: down for `down_for` (every session, lock and
    /// open transaction gone), its clock stepped by `clock_micros` (with
    /// the rule of a bounded [`Fault::DbClockStep`]), and the row changes
    /// of the last `lost` taken back.
    Failover {
        /// Downtime.
        down_for: Duration,
        /// The new host's clock minus the old one's.
        clock_micros: i64,
        /// How much of the latest commits the standby never received.
        lost: Duration,
    },
}

impl Fault {
    /// A short label for logs and timelines.
    pub fn label(&self) -> &'static str {
        match self {
            Fault::Crash { zombie: true, .. } => "crash+zombie",
            Fault::Crash { .. } => "crash",
            Fault::Pause { .. } => "pause",
            Fault::Partition { .. } => "partition",
            Fault::PgRestart { .. } => "pg-restart",
            Fault::Terminate { .. } => "terminate",
            Fault::ClockJump { .. } => "clock-jump",
            Fault::DbClockStep { .. } => "db-clock-step",
            Fault::Failover { lost, .. } if !lost.is_zero() => "failover-lossy",
            Fault::Failover { .. } => "failover",
        }
    }
}

/// A fault at a point in simulated time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScheduledFault {
    /// When, from the start of the run.
    pub at: Duration,
    /// What.
    pub fault: Fault,
}

/// Everything the seed decided about faults, printed with every report.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultKnobs {
    /// The kinds switched on for this seed.
    pub enabled: BTreeSet<FaultKind>,
    /// Mean time between crashes (whole cluster).
    pub crash_every: Duration,
    /// Probability that a crash leaves a zombie backend.
    pub zombie_chance: f64,
    /// Mean time between pauses.
    pub pause_every: Duration,
    /// Longest pause.
    pub pause_max: Duration,
    /// Mean time between partitions.
    pub partition_every: Duration,
    /// Longest partition.
    pub partition_max: Duration,
    /// Mean time between PostgreSQL restarts.
    pub pg_restart_every: Duration,
    /// Mean time between operator terminations.
    pub terminate_every: Duration,
    /// Mean time between wall-clock jumps.
    pub clock_jump_every: Duration,
    /// Largest wall-clock jump.
    pub clock_jump_max: Duration,
    /// Largest clock drift, in parts per billion (below the machine's
    /// `max_drift`).
    pub drift_max_ppb: i64,
    /// Base one-way network delay range.
    pub delay: (Duration, Duration),
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is delayed by up to `spike_max`.
    pub spike: f64,
    /// Longest delay spike.
    pub spike_max: Duration,
    /// Whether replies on one session may overtake each other.
    pub reorder: bool,
    /// Probability a reply is lost after the statement ran.
    pub reply_loss: f64,
    /// Probability a release notification to one node is lost.
    pub notify_loss: f64,
    /// How long the server takes to notice a vanished client (TCP
    /// keepalives).
    pub keepalive: Duration,
    /// Whether drivers see a closed session at once (tokio-postgres) or only
    /// at the next statement (sqlx).
    pub sees_session_close: bool,
    /// Whether nodes preempt zombies (`Config::preempt_zombies`).
    pub preempt_zombies: bool,
    /// Whether the database permits `pg_terminate_backend`.
    pub terminate_permitted: bool,
    /// Largest extra delay of a node's timers (scheduler lag), when pauses
    /// are on: `handle_timeout` runs late and `is_leader` must cope.
    pub timer_lag: Duration,
    /// Mean time between voluntary resignations (workload), per cluster.
    pub resign_every: Duration,
    /// Probability that a server statement stalls (slow-db).
    pub stall: f64,
    /// Longest stall; past the statement timeout the statement fails.
    pub stall_max: Duration,
    /// Mean time between database clock steps (db-clock, db-clock-big).
    pub db_step_every: Duration,
    /// Mean time between failovers (failover, failover-lossy).
    pub failover_every: Duration,
    /// Longest replication lag a lossy failover loses.
    pub lag_max: Duration,
    /// Workload: the chance, per application tick and role a node leads,
    /// that it opens a long fenced transaction.
    pub fenced_work: f64,
    /// Workload: the longest a fenced transaction stays open (beyond the
    /// server's idle timeout it is rolled back).
    pub fenced_max: Duration,
}

/// The longest backward step of the database clock that `db-clock` and
/// `failover` draw.
pub const DB_STEP_BACK_MAX: Duration = Duration::from_secs(3);

/// The longest forward step `db-clock-big` draws.
pub const DB_STEP_BIG_MAX: Duration = Duration::from_secs(5);

/// PostgreSQL's `statement_timeout` on the election session.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The server's idle-in-transaction timeout for fenced transactions
/// (`fenced_idle_timeout`, default 10 s): how long fenced work can hold
/// its row lock at most.
pub const FENCED_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest network delay spike any seed can draw.
pub(crate) const SPIKE_MAX: Duration = Duration::from_secs(4);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl FaultKnobs {
    /// Draws the knobs of one seed. `schedule` runs keep only the
    /// continuous knobs (no random discrete faults).
    pub fn draw(rng: &mut SimRng, selection: &FaultSelection, max_drift: f64) -> Self {
        let mut enabled = BTreeSet::new();
        for kind in FaultKind::ALL {
            // Each selected kind is on for about three seeds in four, so
            // every combination shows up in a sweep.
            if selection.allows(kind) && rng.chance(0.75) {
                enabled.insert(kind);
            }
        }
        let on = |k| enabled.contains(&k);
        let drift_limit = (max_drift * 1e9 * 0.99) as i64;

        Self {
            crash_every: rng.between(secs(15), secs(60)),
            zombie_chance: if on(FaultKind::Zombie) {
                rng.between_f64(0.3, 1.0)
            } else {
                0.0
            },
            pause_every: rng.between(secs(15), secs(60)),
            pause_max: rng.between(secs(8), secs(30)),
            partition_every: rng.between(secs(15), secs(60)),
            partition_max: rng.between(secs(3), secs(30)),
            pg_restart_every: rng.between(secs(25), secs(90)),
            terminate_every: rng.between(secs(8), secs(40)),
            clock_jump_every: rng.between(secs(5), secs(30)),
            clock_jump_max: rng.between(secs(2), secs(30)),
            drift_max_ppb: if on(FaultKind::Clock) { drift_limit } else { 0 },
            delay: (
                Duration::from_micros(100),
                rng.between(Duration::from_micros(200), Duration::from_millis(5)),
            ),
            loss: if on(FaultKind::Network) {
                rng.between_f64(0.0, 0.05)
            } else {
                0.0
            },
            spike: if on(FaultKind::Network) {
                rng.between_f64(0.0, 0.05)
            } else {
                0.0
            },
            spike_max: rng.between(Duration::from_millis(200), SPIKE_MAX),
            reorder: on(FaultKind::Network) && rng.chance(0.5),
            reply_loss: if on(FaultKind::ReplyLoss) {
                rng.between_f64(0.0, 0.05)
            } else {
                0.0
            },
            notify_loss: if on(FaultKind::NotifyLoss) {
                rng.between_f64(0.0, 0.7)
            } else {
                0.0
            },
            keepalive: rng.between(secs(2), secs(10)),
            sees_session_close: rng.chance(0.5),
            preempt_zombies: rng.chance(0.6),
            terminate_permitted: rng.chance(0.8),
            resign_every: rng.between(secs(10), secs(60)),
            timer_lag: if on(FaultKind::Pause) {
                rng.between(Duration::ZERO, Duration::from_millis(300))
            } else {
                Duration::ZERO
            },
            stall: if on(FaultKind::SlowDb) {
                rng.between_f64(0.0005, 0.01)
            } else {
                0.0
            },
            stall_max: rng.between(secs(1), secs(8)),
            db_step_every: rng.between(secs(15), secs(60)),
            failover_every: rng.between(secs(30), secs(120)),
            lag_max: rng.between(Duration::from_millis(100), secs(3)),
            fenced_work: if rng.chance(0.75) {
                rng.between_f64(0.005, 0.06)
            } else {
                0.0
            },
            fenced_max: rng.between(secs(1), secs(14)),
            enabled,
        }
    }

    /// Whether `kind` is on for this seed.
    pub fn on(&self, kind: FaultKind) -> bool {
        self.enabled.contains(&kind)
    }

    /// Mean time between random occurrences of a discrete kind, if it is on
    /// and occurs by itself (zombies, losses and drift come with others).
    pub fn every(&self, kind: FaultKind) -> Option<Duration> {
        if !self.on(kind) {
            return None;
        }
        match kind {
            FaultKind::Crash => Some(self.crash_every),
            FaultKind::Pause => Some(self.pause_every),
            FaultKind::Partition => Some(self.partition_every),
            FaultKind::PgRestart => Some(self.pg_restart_every),
            FaultKind::Terminate => Some(self.terminate_every),
            FaultKind::Clock => Some(self.clock_jump_every),
            FaultKind::DbClock | FaultKind::DbClockBig => Some(self.db_step_every),
            FaultKind::Failover | FaultKind::FailoverLossy => Some(self.failover_every),
            _ => None,
        }
    }

    /// The knobs, one per line.
    pub fn lines(&self) -> Vec<String> {
        let kinds: Vec<&str> = self.enabled.iter().map(|k| k.name()).collect();
        let mut v = vec![format!(
            "faults on: {}",
            if kinds.is_empty() {
                "none".to_owned()
            } else {
                kinds.join(",")
            }
        )];
        let d = |d: Duration| format!("{:.1}s", d.as_secs_f64());
        for kind in FaultKind::ALL {
            if let Some(e) = self.every(kind) {
                v.push(format!("{kind}: every ~{}", d(e)));
            }
        }
        if self.on(FaultKind::Crash) {
            v.push(format!(
                "zombie chance per crash: {:.2}",
                self.zombie_chance
            ));
        }
        if self.on(FaultKind::Pause) {
            v.push(format!(
                "pause up to {}, timers late by up to {:?}",
                d(self.pause_max),
                self.timer_lag
            ));
        }
        if self.on(FaultKind::Partition) {
            v.push(format!("partition up to {}", d(self.partition_max)));
        }
        if self.on(FaultKind::Clock) {
            v.push(format!(
                "drift up to {} ppb, wall jumps up to {}",
                self.drift_max_ppb,
                d(self.clock_jump_max)
            ));
        }
        v.push(format!(
            "network: delay {:?}..{:?}, loss {:.3}, spikes {:.3} up to {}, reorder {}",
            self.delay.0,
            self.delay.1,
            self.loss,
            self.spike,
            d(self.spike_max),
            self.reorder
        ));
        v.push(format!(
            "reply loss {:.3}, notify loss {:.3}",
            self.reply_loss, self.notify_loss
        ));
        v.push(format!(
            "keepalive {}, driver sees session close: {}, preempt zombies: {} (permitted: {})",
            d(self.keepalive),
            self.sees_session_close,
            self.preempt_zombies,
            self.terminate_permitted
        ));
        if self.on(FaultKind::SlowDb) {
            v.push(format!(
                "statement stalls {:.4} up to {}",
                self.stall,
                d(self.stall_max)
            ));
        }
        if self.on(FaultKind::FailoverLossy) {
            v.push(format!("lossy failovers lose up to {}", d(self.lag_max)));
        }
        v.push(format!(
            "workload: a resignation every ~{}, long fenced work {:.3} per tick up to {}",
            d(self.resign_every),
            self.fenced_work,
            d(self.fenced_max)
        ));
        v
    }
}

impl fmt::Display for FaultKnobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in self.lines() {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Draws one random instance of a discrete fault kind.
pub(crate) fn draw_fault(
    rng: &mut SimRng,
    kind: FaultKind,
    knobs: &FaultKnobs,
    nodes: usize,
) -> Option<Fault> {
    let node = rng.below(nodes as u64) as usize;
    Some(match kind {
        FaultKind::Crash => Fault::Crash {
            node,
            down_for: rng.between(secs(1), secs(25)),
            zombie: rng.chance(knobs.zombie_chance),
        },
        FaultKind::Pause => Fault::Pause {
            node,
            duration: rng.between(Duration::from_millis(500), knobs.pause_max),
        },
        FaultKind::Partition => Fault::Partition {
            node,
            direction: match rng.below(3) {
                0 => Direction::ToDb,
                1 => Direction::FromDb,
                _ => Direction::Both,
            },
            duration: rng.between(Duration::from_millis(500), knobs.partition_max),
        },
        FaultKind::PgRestart => Fault::PgRestart {
            down_for: rng.between(Duration::from_millis(200), secs(8)),
        },
        FaultKind::Terminate => Fault::Terminate {
            pick: rng.below(1 << 16) as usize,
        },
        FaultKind::Clock => {
            let max = i64::try_from(knobs.clock_jump_max.as_micros()).unwrap_or(i64::MAX);
            let step = i64::try_from(rng.below(max.unsigned_abs() + 1)).unwrap_or(0);
            Fault::ClockJump {
                node,
                micros: if rng.chance(0.5) { step } else { -step },
            }
        }
        FaultKind::DbClock => Fault::DbClockStep {
            micros: small_db_step(rng),
            bounded: true,
        },
        FaultKind::DbClockBig => Fault::DbClockStep {
            micros: i64::try_from(
                rng.between(Duration::from_millis(500), DB_STEP_BIG_MAX)
                    .as_micros(),
            )
            .unwrap_or(0),
            bounded: false,
        },
        FaultKind::Failover | FaultKind::FailoverLossy => Fault::Failover {
            down_for: rng.between(Duration::from_millis(200), secs(5)),
            clock_micros: if rng.chance(0.5) {
                small_db_step(rng)
            } else {
                0
            },
            lost: if kind == FaultKind::FailoverLossy {
                rng.between(Duration::from_millis(10), knobs.lag_max)
            } else {
                Duration::ZERO
            },
        },
        _ => return None,
    })
}

/// A step of the database clock within the README's guarantee: backward
/// by up to [`DB_STEP_BACK_MAX`], or forward by up to 100 ms (half the
/// default safety margin).
fn small_db_step(rng: &mut SimRng) -> i64 {
    if rng.chance(0.5) {
        i64::try_from(rng.below(100_001)).unwrap_or(0)
    } else {
        let back = u64::try_from(DB_STEP_BACK_MAX.as_micros()).unwrap_or(0);
        -i64::try_from(rng.below(back + 1)).unwrap_or(0)
    }
}
