//! The world: nodes running the real machine, a simulated Postgres, a
//! network, faults and invariant checks, all on one thread and virtual time.
//!
//! The loop pops the earliest of (a scheduled event, a node's wake-up),
//! moves true time there, handles it, then checks every invariant. Every
//! random choice comes from one seeded RNG, so a seed replays exactly.

mod counts;
mod dbfaults;
mod event;
mod fenced_tx;
mod inject;
mod node;
mod observe;
mod server;
mod session;
mod workload;

use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Duration;

use regent_core::{Command, Config, LocalInstant, Namespace, NodeId, Role, Term};
use thiserror::Error;

use counts::Counts;
use event::{Ev, Request, Scheduled};

use crate::config::SimConfig;
use crate::db::{Pid, SimDb, TerminatePrivilege};
use crate::faults::{Direction, FaultKnobs};
use crate::invariants::Checker;
use crate::log::{Entry, Log, NONE};
use crate::mutant::Subject;
use crate::report::{Coverage, SimReport};
use crate::rng::SimRng;
use crate::time::{NodeClock, SimTime, db_time};
use crate::timeline::Timeline;

/// Why a run could not start.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SimError {
    /// `nodes` or `roles` was zero.
    #[error("a simulation needs at least one node and one role (got {nodes} nodes, {roles} roles)")]
    EmptyWorld {
        /// Nodes asked for.
        nodes: usize,
        /// Roles asked for.
        roles: usize,
    },
    /// The machine configuration was rejected.
    #[error(transparent)]
    Config(#[from] regent_core::ConfigError),
    /// A generated name was rejected.
    #[error(transparent)]
    Name(#[from] regent_core::NameError),
}

/// A client connection (one session) of one node incarnation.
#[derive(Debug, Clone)]
struct Conn {
    node: usize,
    inc: u32,
    pid: Option<Pid>,
    /// The client is gone (closed, crashed): nothing new may connect.
    client_gone: bool,
    /// A pooler keeps the backend after the client died.
    zombie: bool,
    req_fifo: SimTime,
    reply_fifo: SimTime,
    /// Statements that arrived and have not run yet, in order, with when
    /// they arrived.
    queue: VecDeque<(Command, SimTime)>,
    /// The statement running on the session ends then.
    busy_until: SimTime,
    /// A [`Ev::DbExec`] of the current generation is scheduled.
    exec_scheduled: bool,
    /// The generation of the latest [`Ev::DbExec`]; older ones are stale.
    exec_gen: u64,
    /// The front statement: when it started, how long it takes, and
    /// whether it waited on a row lock.
    front: Option<(SimTime, Duration, bool)>,
}

/// One simulated node.
struct Node {
    id: NodeId,
    clock: NodeClock,
    /// Incarnation: bumped on crash so stale messages are dropped.
    inc: u32,
    subject: Option<Subject>,
    paused_until: Option<SimTime>,
    cut: Option<(Direction, SimTime)>,
    conn: Option<usize>,
    listener_up: bool,
    wake: Option<SimTime>,
    last_wake: Option<SimTime>,
    buffered: Vec<Ev>,
    /// Per role: the machine is in `Elect` waiting out a lease.
    elect_waiting: Vec<bool>,
    /// Per role: the machine campaigns for it (added, not stopped), as of
    /// its last input.
    campaigning: Vec<bool>,
    /// Per role: when a release notification last arrived.
    notified_at: Vec<Option<SimTime>>,
    /// A graceful shutdown is in progress.
    shutting_down: bool,
    /// Per role: when this node's session was terminated while it led.
    terminated_while_leading: Vec<Option<SimTime>>,
    /// The machine had an input since beliefs were last read.
    dirty: bool,
    /// Per role: the term it believes it leads with, and until when that
    /// belief holds without new input.
    belief: Vec<Option<(Option<Term>, LocalInstant)>>,
    /// The earliest `until` in `belief`: the local instant at which a
    /// belief may run out without new input (`None` without beliefs).
    belief_ends: Option<LocalInstant>,
    /// Until when a fault that hit this node may still cost it a role
    /// (see [`crate::invariants::blast_radius`]).
    disturbed_until: SimTime,
}

impl Node {
    fn up(&self) -> bool {
        self.subject.is_some()
    }
    fn paused(&self) -> bool {
        self.paused_until.is_some()
    }
    fn cut_to_db(&self) -> bool {
        self.cut.is_some_and(|(d, _)| d.cuts_to_db())
    }
    fn cut_from_db(&self) -> bool {
        self.cut.is_some_and(|(d, _)| d.cuts_from_db())
    }
}

/// The whole simulated world of one run.
pub(crate) struct World {
    cfg: SimConfig,
    machine_cfg: Config,
    knobs: FaultKnobs,
    rng: SimRng,
    now: SimTime,
    end: SimTime,
    heal_at: SimTime,
    healed: bool,
    queue: BinaryHeap<Scheduled>,
    slab: Vec<Option<Ev>>,
    free: Vec<usize>,
    seq: u64,
    db: SimDb,
    db_epoch: u64,
    ns: Namespace,
    roles: Vec<Role>,
    nodes: Vec<Node>,
    conns: Vec<Conn>,
    by_pid: BTreeMap<Pid, usize>,
    checker: Checker,
    cov: Coverage,
    /// `count`s not yet added to `cov`.
    counts: Counts,
    log: Log,
    leaders: Vec<Vec<usize>>,
    /// Per role: when (and by whom) a lease was last released gracefully,
    /// to time the handover.
    released: Vec<Option<(SimTime, usize)>>,
    /// The term each believer in `leaders` holds.
    terms: Vec<Vec<Option<Term>>>,
    timeline: Timeline,
    /// A node's beliefs changed since the last step ended (read after an
    /// input, see `track_elect`).
    beliefs_changed: bool,
    /// Scratch buffers of [`World::pump`], kept to reuse their allocations.
    command_buf: Vec<Command>,
    event_buf: Vec<regent_core::Event>,
    /// Scratch buffer of the per-role availability status of a step.
    status_buf: Vec<crate::invariants::availability::RoleStatus>,
    /// Scratch buffer: the nodes healthy apart from the role, in a step.
    ready_buf: Vec<usize>,
    /// Per role: the key of its advisory lock.
    lock_keys: Vec<crate::db::LockKey>,
    /// Open fenced transactions, by id.
    fenced_txs: BTreeMap<crate::db::TxId, fenced_tx::FencedTx>,
    /// The last transaction id handed out.
    next_tx: crate::db::TxId,
    /// When the database clock last stepped forward under the bounded
    /// rule (see [`crate::faults::Fault::DbClockStep`]).
    last_forward_step: Option<SimTime>,
}

/// How long after the heal every role must have been led: two leases,
/// a retry, the longest keepalive, plus what the database may still hold
/// up after the heal — fenced work up to its idle timeout and a lease
/// lengthened by a backward clock step.
fn liveness_bound(c: &Config, keepalive_max: Duration) -> Duration {
    c.lease_duration() * 2
        + c.retry_interval()
        + c.retry_jitter()
        + keepalive_max
        + Duration::from_secs(5)
        + crate::faults::FENCED_IDLE_TIMEOUT
        + crate::faults::DB_STEP_BACK_MAX
}

/// The availability bound of a seed: the machine's ([`bound`]), plus what
/// the seed's database can add — fenced work that keeps claims busy up to
/// its idle timeout, a backward clock step that lengthens a lease, a
/// statement stalled up to the statement timeout.
///
/// [`bound`]: crate::invariants::availability::bound
fn availability_bound(c: &Config, knobs: &FaultKnobs) -> Duration {
    use crate::config::FaultKind;
    use crate::faults::{DB_STEP_BACK_MAX, FENCED_IDLE_TIMEOUT, STATEMENT_TIMEOUT};
    let mut b = crate::invariants::availability::bound(c, KEEPALIVE_MAX, crate::faults::SPIKE_MAX);
    if knobs.fenced_work > 0.0 {
        b += FENCED_IDLE_TIMEOUT;
    }
    if [
        FaultKind::DbClock,
        FaultKind::Failover,
        FaultKind::FailoverLossy,
    ]
    .into_iter()
    .any(|k| knobs.on(k))
    {
        b += DB_STEP_BACK_MAX;
    }
    if knobs.on(FaultKind::SlowDb) {
        b += STATEMENT_TIMEOUT;
    }
    b
}

/// The node index logged for world and database entries.
const NONE_NODE: usize = usize::MAX;

/// The longest keepalive timeout the knobs can draw.
const KEEPALIVE_MAX: Duration = Duration::from_secs(10);

impl World {
    pub(crate) fn new(cfg: &SimConfig) -> Result<Self, SimError> {
        if cfg.nodes == 0 || cfg.roles == 0 {
            return Err(SimError::EmptyWorld {
                nodes: cfg.nodes,
                roles: cfg.roles,
            });
        }
        let mut rng = SimRng::new(cfg.seed);
        let defaults = Config::default();
        let knobs = FaultKnobs::draw(&mut rng, &cfg.faults, defaults.max_drift());
        let machine_cfg = Config::builder()
            .takeover_policy(cfg.policy)
            .preempt_zombies(knobs.preempt_zombies)
            .build()?;
        let bound = liveness_bound(&machine_cfg, KEEPALIVE_MAX);
        let availability_bound = availability_bound(&machine_cfg, &knobs);
        let end = SimTime::from_duration(cfg.duration);
        let heal_at =
            SimTime::from_duration(cfg.duration.saturating_sub(bound + Duration::from_secs(1)));
        let privilege = if knobs.terminate_permitted {
            TerminatePrivilege::Permitted
        } else {
            TerminatePrivilege::Denied
        };
        let roles = (0..cfg.roles)
            .map(|i| Role::new(format!("r{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut nodes = Vec::with_capacity(cfg.nodes);
        for i in 0..cfg.nodes {
            let drift = if knobs.drift_max_ppb > 0 {
                let span = knobs.drift_max_ppb.unsigned_abs() * 2 + 1;
                i64::try_from(rng.below(span)).unwrap_or(0) - knobs.drift_max_ppb
            } else {
                0
            };
            let origin = rng.below(1_000_000_000_000);
            let wall = if knobs.on(crate::config::FaultKind::Clock) {
                i64::try_from(rng.below(10_000_001)).unwrap_or(0) - 5_000_000
            } else {
                0
            };
            nodes.push(Node {
                id: NodeId::new(format!("n{i}"))?,
                clock: NodeClock::new(drift, origin, wall),
                inc: 0,
                subject: None,
                paused_until: None,
                cut: None,
                conn: None,
                listener_up: false,
                wake: None,
                last_wake: None,
                buffered: Vec::new(),
                elect_waiting: vec![false; cfg.roles],
                campaigning: vec![false; cfg.roles],
                notified_at: vec![None; cfg.roles],
                shutting_down: false,
                terminated_while_leading: vec![None; cfg.roles],
                dirty: true,
                belief: vec![None; cfg.roles],
                belief_ends: None,
                disturbed_until: SimTime::ZERO,
            });
        }
        Ok(Self {
            machine_cfg,
            now: SimTime::ZERO,
            end,
            heal_at,
            healed: false,
            queue: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            seq: 0,
            db: {
                let mut db = SimDb::new(db_time(SimTime::ZERO), privilege);
                if knobs.on(crate::config::FaultKind::FailoverLossy) {
                    db.keep_history(knobs.lag_max + Duration::from_secs(1));
                }
                db
            },
            db_epoch: 0,
            ns: Namespace::default(),
            leaders: vec![Vec::new(); cfg.roles],
            released: vec![None; cfg.roles],
            terms: vec![Vec::new(); cfg.roles],
            checker: Checker::new(
                cfg.nodes,
                cfg.roles,
                cfg.policy,
                bound,
                availability_bound,
                cfg.mutant.is_none(),
            ),
            cov: Coverage::new(),
            counts: Counts::new(),
            log: Log::new(400, cfg.trace),
            timeline: Timeline::new(cfg.nodes, cfg.roles),
            beliefs_changed: false,
            command_buf: Vec::new(),
            event_buf: Vec::new(),
            status_buf: Vec::new(),
            ready_buf: Vec::new(),
            lock_keys: roles
                .iter()
                .map(|r| (Namespace::default(), r.clone()))
                .collect(),
            fenced_txs: BTreeMap::new(),
            next_tx: 0,
            last_forward_step: None,
            roles,
            nodes,
            conns: Vec::new(),
            by_pid: BTreeMap::new(),
            rng,
            knobs,
            cfg: cfg.clone(),
        })
    }

    pub(crate) fn knob_lines(&self) -> Vec<String> {
        let mut lines = self.knobs.lines();
        for (i, n) in self.nodes.iter().enumerate() {
            lines.push(format!(
                "n{i}: drift {} ppb, wall clock offset {:.3}s",
                n.clock.drift_ppb(),
                n.clock.wall_offset_micros() as f64 / 1e6
            ));
        }
        lines.push(format!(
            "policy {}, mutant {}, heal at {}, liveness bound {:.1}s, availability bound {:.1}s",
            crate::config::policy_name(self.cfg.policy),
            self.cfg.mutant.map_or("none", |m| m.name()),
            self.heal_at,
            self.checker.liveness.bound().as_secs_f64(),
            self.checker.availability.bound().as_secs_f64()
        ));
        lines
    }

    fn log(&mut self, node: usize, kind: &'static str, role: Option<usize>, a: u64, b: u64) {
        self.log.push(Entry {
            at: self.now,
            node: u32::try_from(node).unwrap_or(NONE),
            kind,
            role: role.and_then(|r| u32::try_from(r).ok()).unwrap_or(NONE),
            a,
            b,
        });
    }

    fn count(&mut self, what: &'static str) {
        self.counts.bump(what, &mut self.cov);
    }

    fn role_ix(&self, role: &Role) -> Option<usize> {
        // The world names its roles `r0`, `r1`, ...: read the index off the
        // name (digits only, no leading zero, so the name is exactly
        // `r{index}`) instead of comparing names.
        let digits = role.as_str().strip_prefix('r')?;
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits.len() == 1 || !digits.starts_with('0'));
        if canonical
            && let Ok(i) = digits.parse::<usize>()
            && i < self.roles.len()
        {
            return Some(i);
        }
        self.roles.iter().position(|r| r == role)
    }

    fn local(&self, n: usize) -> LocalInstant {
        self.nodes[n].clock.local(self.now)
    }

    /// Runs to the end (or the first violation) and reports.
    pub(crate) fn run(mut self, knob_lines: Vec<String>) -> SimReport {
        self.start();
        loop {
            let next_event = self.queue.peek().map(|s| s.at);
            let next_wake = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.up() && !n.paused())
                .filter_map(|(i, n)| n.wake.map(|w| (w, i)))
                .min();
            let wake_first = match (next_event, next_wake) {
                (Some(e), Some((w, _))) => w < e,
                (None, Some(_)) => true,
                _ => false,
            };
            let at = if wake_first {
                next_wake.map(|(w, _)| w)
            } else {
                next_event
            };
            let Some(at) = at else { break };
            if at > self.end {
                break;
            }
            self.now = self.now.max(at);
            self.db.set_now(db_time(self.now));
            if wake_first {
                if let Some((_, n)) = next_wake {
                    self.wake(n);
                }
            } else if let Some(ev) = self.pop_event() {
                self.handle(ev);
            }
            self.after_step();
            if self.cfg.stop_at_first_violation && !self.checker.violations.is_empty() {
                break;
            }
        }
        self.finish(knob_lines)
    }

    fn start(&mut self) {
        for n in 0..self.nodes.len() {
            self.boot(n);
        }
        self.schedule_faults();
        let heal = self.heal_at;
        self.schedule(heal, Ev::Heal);
        let every = self.knobs.resign_every;
        let first = self.rng.exp(every);
        self.after(first, Ev::Workload);
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::ToDb { conn, req } => self.at_db(conn, req),
            Ev::FencedWrite { node, role, token } => self.fenced_at_db(node, role, token),
            Ev::DbExec { conn, generation } => self.db_exec(conn, generation),
            Ev::FencedBegin {
                node,
                role,
                token,
                hold,
            } => self.fenced_begin(node, role, token, hold),
            Ev::FencedEnd { tx, commit } => self.fenced_end(tx, commit),
            Ev::ToNode { node, inc, .. }
            | Ev::Notification { node, inc, .. }
            | Ev::SessionClosed { node, inc, .. }
            | Ev::Drained { node, inc, .. }
                if self.nodes[node].inc == inc && self.nodes[node].paused() =>
            {
                self.nodes[node].buffered.push(ev);
            }
            Ev::ToNode {
                node,
                inc,
                conn,
                id,
                result,
            } => self.reply(node, inc, conn, id, result),
            Ev::Notification { node, inc, role } => self.notified(node, inc, role),
            Ev::SessionClosed { node, inc, conn } => self.session_closed(node, inc, conn),
            Ev::AppTick { node, inc } => self.app_tick(node, inc),
            Ev::Drained { node, inc, role } => self.drained(node, inc, role),
            Ev::ListenerCheck { node, inc } => self.listener_check(node, inc),
            Ev::Workload => self.workload(),
            Ev::AddRole { node, inc, role } => self.add_role(node, inc, role),
            Ev::ShutdownDeadline { node, inc } => self.shutdown_deadline(node, inc),
            Ev::NextFault(kind) => self.next_fault(kind),
            Ev::Fault(f) => self.apply(f),
            Ev::Restart { node, inc } => self.restart(node, inc),
            Ev::PauseEnd { node, until } => self.pause_end(node, until),
            Ev::PartitionEnd { node, until } => self.partition_end(node, until),
            Ev::KeepaliveCheck { node, conn } => self.keepalive_check(node, conn),
            Ev::PgStart { epoch } => self.pg_start(epoch),
            Ev::ServerDrop { conn } => self.server_drop(conn),
            Ev::Heal => self.heal(),
            Ev::LivenessDeadline => {
                let now = self.now;
                self.checker.on_liveness_deadline(now);
            }
        }
    }

    fn finish(mut self, knobs: Vec<String>) -> SimReport {
        let now = self.now;
        self.timeline.close_all(now);
        let reproduce = self.cfg.reproduce_line();
        let mut knobs = knobs;
        if let Some(s) = &self.cfg.schedule {
            knobs.push(format!("explicit schedule: {s:?}"));
        }
        SimReport {
            availability: self.checker.availability.finish(now),
            knobs,
            violations: self.checker.violations,
            coverage: {
                let mut cov = self.cov;
                self.counts.add_to(&mut cov);
                cov
            },
            events: self.log.count(),
            simulated: now.as_duration(),
            log_hash: self.log.hash(),
            tail: self.log.tail_text(),
            trace: self.log.take_trace(),
            timeline: self.timeline.text(now, 100),
            svg: self.timeline.svg(now),
            reproduce,
            config: self.cfg,
        }
    }
}

#[cfg(test)]
mod tests;
