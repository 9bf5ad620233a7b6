//! Property test: one to three machines, campaigning for one or two roles,
//! driven by random event sequences against a modelled database.
//!
//! The model:
//! - **Clocks.** A database clock runs on; each node's local clock runs at
//!   a rate within `[1-ρ, 1+ρ]` of it (`ρ = max_drift`), changing at random
//!   and starting at an arbitrary origin. Every database timestamp in a
//!   result is the modelled database clock at the instant the command ran.
//! - **Database.** Advisory locks bound to sessions, lease rows whose term
//!   only grows (a claim is `term + 1`), renew/expire only if holder and
//!   term match, `pg_terminate_backend`-like preemption. Commands run at a
//!   random step after they were sent (or never: lost), only within the
//!   attempt timeout (drivers time calls out), and may fail with every
//!   [`BackendError`] kind, or run and then lose their reply or report a
//!   timeout.
//! - **Faults and inputs.** Operators terminating sessions (noticed at
//!   once, at the next call, or announced spuriously), paused nodes, an
//!   external well-behaved holder that also leaves zombie locks, process
//!   crashes and restarts under the same node id, release notifications
//!   and gaps, resign, stop, shutdown, re-adding roles, and "a renew
//!   fails, then nothing more is heard" silences.
//!
//! Checked after every step: (a) a node never reports leader at or past its
//! local deadline, and that deadline is never later than the send instant
//! of a successful claim/renew plus the leader window; (b) terms in
//! `StartedLeading` strictly increase per node and role; (c) under
//! `WaitForLease` a node starts leading only once the predecessor's lease
//! (as returned in `ClaimOutcome::previous`) has passed in database time,
//! and at most one node leads a role at any instant; (d) `StoppedLeading`
//! follows a `StartedLeading` of the same term, and the role's state is
//! leading exactly between the two; (e) after any input the machine is not
//! leading at or past its deadline, and after a failed renew followed by
//! silence it steps down by the deadline; (f) a node leads only
//! while the database lease of its term runs; (g) `Notify` goes out only
//! once the lock is free; (h) the machine never tries a lock its session
//! holds, and never busy-loops on `poll_timeout`. Every case then ends
//! with two liveness checks on a healed database: once every node
//! campaigns again, each role soon has exactly one leader; and a shutdown
//! of every node reaches `is_stopped()`.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::backend::{
    BackendError, ClaimOutcome, LockAttempt, PreemptOutcome, RenewOutcome, TryLockOutcome,
};
use crate::config::{Config, TakeoverPolicy};
use crate::machine::{
    Command, CommandOutput, CommandResult, Event, Machine, ReleasePhase, RoleState, StepDownReason,
};
use crate::types::{DbTimestamp, LeaseRecord, LocalInstant, Namespace, NodeId, Role, Term};

const EPOCH_US: i64 = 1_700_000_000_000_000;
const EXT: &str = "node-ext";
const EXT_SESSION: u64 = 0;
const MS: f64 = 1e6;

#[derive(Debug, Clone)]
struct Row {
    holder: String,
    term: u64,
    session: u64,
    acquired: i64,
    renewed: i64,
    until: i64,
}

#[derive(Debug)]
struct Db {
    /// Nanoseconds since the model started.
    now_ns: f64,
    locks: BTreeMap<Role, u64>,
    rows: BTreeMap<Role, Row>,
    /// When the lease of (node, role, term) ends in database µs, as the
    /// database has it now.
    lease_end: BTreeMap<(usize, Role, u64), i64>,
    preempt_permitted: bool,
    next_session: u64,
}

impl Db {
    fn now_us(&self) -> i64 {
        EPOCH_US + (self.now_ns / 1000.0) as i64
    }

    fn ts(&self) -> DbTimestamp {
        DbTimestamp::from_micros(self.now_us())
    }

    fn record(&self, role: &Role, row: &Row) -> LeaseRecord {
        LeaseRecord {
            namespace: Namespace::default(),
            role: role.clone(),
            holder: row.holder.clone(),
            term: Term(row.term),
            session: Some(row.session as i64),
            acquired_at: DbTimestamp::from_micros(row.acquired),
            renewed_at: DbTimestamp::from_micros(row.renewed),
            lease_until: DbTimestamp::from_micros(row.until),
        }
    }

    fn free_session(&mut self, session: u64) {
        self.locks.retain(|_, s| *s != session);
    }
}

#[derive(Debug, Clone)]
struct Sent {
    cmd: Command,
    at: LocalInstant,
}

struct Node {
    m: Machine,
    name: String,
    local_f: f64,
    local: LocalInstant,
    /// Database nanoseconds per local nanosecond.
    rate: f64,
    session: u64,
    /// Terminated by an operator; the node has not noticed yet.
    session_dead: bool,
    paused_until: Option<f64>,
    silent_until: Option<f64>,
    /// Roles leading when a silence began, with the term and deadline.
    watch: Vec<(Role, Term, LocalInstant)>,
    pending: Vec<Sent>,
    replies: Vec<(Sent, CommandResult)>,
    started: BTreeMap<Role, Term>,
    last_term: BTreeMap<Role, Term>,
    model_deadline: BTreeMap<(Role, Term), LocalInstant>,
    claim_prev: BTreeMap<(Role, Term), Option<i64>>,
    last_wake: (LocalInstant, u32),
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    Transient,
    Timeout,
    Misconfigured,
    SessionLost,
    LoseReply,
    RunThenTimeout,
}

fn fault(x: u16) -> Fault {
    match x % 100 {
        0..=54 => Fault::None,
        55..=61 => Fault::Transient,
        62..=67 => Fault::Timeout,
        68..=70 => Fault::Misconfigured,
        71..=76 => Fault::SessionLost,
        77..=88 => Fault::LoseReply,
        _ => Fault::RunThenTimeout,
    }
}

/// What a run exercised, to show the property is not vacuous.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    started: u32,
    /// Started only after waiting out an unexpired predecessor.
    waited: u32,
    deadline_expired: u32,
    lease_lost: u32,
    lock_lost: u32,
    resigned: u32,
    /// Leaders checked to step down by the deadline after a failed renew.
    silence_checked: u32,
    preempted: u32,
    resets: u32,
    /// Steps at which some node was leader.
    leading_steps: u32,
}

struct World {
    stats: Stats,
    cfg: Config,
    lease_us: i64,
    window: Duration,
    wait_for_lease: bool,
    nodes: Vec<Node>,
    roles: Vec<Role>,
    db: Db,
    log: Vec<String>,
}

fn config_from(s: &[u16; 8]) -> Config {
    let l = 1000 + u64::from(s[0] % 10) * 1000;
    let ms = Duration::from_millis;
    let retry = 100 + u64::from(s[4] % 2000);
    let rho = [0.0, 1e-4, 1e-3, 1e-2, 5e-2][usize::from(s[5] % 5)];
    let margin = [1, 10, 50, 200][usize::from((s[5] >> 4) % 4)];
    Config::builder()
        .lease_duration(ms(l))
        .renew_interval(ms(l * (10 + u64::from(s[1] % 35)) / 100))
        .attempt_timeout(ms(l * (5 + u64::from(s[2] % 40)) / 100))
        .validate_interval(ms(100 + u64::from(s[3] % 2000)))
        .retry_interval(ms(retry))
        .retry_jitter(ms(retry * u64::from((s[4] >> 12) % 2) / 4))
        .max_drift(rho)
        .safety_margin(ms(margin))
        .takeover_policy(if s[6].is_multiple_of(8) {
            TakeoverPolicy::Immediate
        } else {
            TakeoverPolicy::WaitForLease
        })
        .preempt_zombies((s[6] >> 3) % 2 == 1)
        .zombie_grace(ms(500 + u64::from((s[6] >> 4) % 3000)))
        .drain_timeout(ms(100 + u64::from(s[7] % 3000)))
        .keepalive_interval(ms(500 + u64::from(s[7] >> 8) * 20))
        .build()
        .unwrap_or_else(|_| Config::default())
}

impl World {
    fn new(s: [u16; 8]) -> Self {
        let cfg = config_from(&s);
        let rho = cfg.max_drift();
        let n_nodes = 1 + usize::from((s[3] >> 12) % 3);
        let n_roles = 1 + usize::from((s[2] >> 12) % 2);
        let roles: Vec<Role> = ["alpha", "beta"][..n_roles]
            .iter()
            .map(|n| Role::new(*n).unwrap())
            .collect();
        let nodes = (0..n_nodes)
            .map(|j| {
                let name = format!("node-{j}");
                let seed = u64::from(s[j]) * 31 + j as u64;
                let origin = f64::from(s[(j + 3) % 8]) * 1e7;
                let rate = 1.0 + rho * (f64::from(s[(j + 5) % 8] % 201) / 100.0 - 1.0);
                Node {
                    m: Machine::new(
                        NodeId::new(name.clone()).unwrap(),
                        Namespace::default(),
                        cfg.clone(),
                        ChaCha8Rng::seed_from_u64(seed),
                    ),
                    name,
                    local_f: origin,
                    local: LocalInstant::from_nanos(origin as u64),
                    rate,
                    session: 1 + j as u64,
                    session_dead: false,
                    paused_until: None,
                    silent_until: None,
                    watch: Vec::new(),
                    pending: Vec::new(),
                    replies: Vec::new(),
                    started: BTreeMap::new(),
                    last_term: BTreeMap::new(),
                    model_deadline: BTreeMap::new(),
                    claim_prev: BTreeMap::new(),
                    last_wake: (LocalInstant::ZERO, 0),
                }
            })
            .collect();
        let mut w = World {
            stats: Stats::default(),
            lease_us: cfg.lease_duration().as_micros() as i64,
            window: cfg.leader_window(),
            wait_for_lease: cfg.takeover_policy() == TakeoverPolicy::WaitForLease,
            cfg,
            nodes,
            roles,
            db: Db {
                now_ns: 0.0,
                locks: BTreeMap::new(),
                rows: BTreeMap::new(),
                lease_end: BTreeMap::new(),
                preempt_permitted: (s[1] >> 12).is_multiple_of(2),
                next_session: 100,
            },
            log: Vec::new(),
        };
        w.log.push(format!("config {:?}", w.cfg));
        for j in 0..w.nodes.len() {
            for role in w.roles.clone() {
                let now = w.nodes[j].local;
                w.nodes[j].m.add_role(now, role);
                w.settle(j);
            }
        }
        w.check_all();
        w
    }

    #[track_caller]
    fn fail(&self, msg: String) -> ! {
        let tail: Vec<&String> = self.log.iter().rev().take(80).collect();
        let tail: Vec<&str> = tail.into_iter().rev().map(String::as_str).collect();
        panic!(
            "{msg}\n--- db at {} µs: locks {:?}\nrows {:?}\n--- last steps:\n{}",
            self.db.now_us() - EPOCH_US,
            self.db.locks,
            self.db.rows,
            tail.join("\n")
        );
    }

    #[track_caller]
    fn check(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(msg());
        }
    }

    fn note(&mut self, s: String) {
        self.log.push(s);
    }

    // ----- the node side ----------------------------------------------

    /// Collects the outputs of node `j` after an input and checks them.
    fn settle(&mut self, j: usize) {
        let now = self.nodes[j].local;
        while let Some(cmd) = self.nodes[j].m.poll_command() {
            if let Command::Notify { role, .. } = &cmd {
                let session = self.nodes[j].session;
                self.check(self.db.locks.get(role) != Some(&session), || {
                    format!(
                        "node-{j} notifies the release of {role} while its session holds the lock"
                    )
                });
            }
            if let Command::ResetSession { .. } = cmd {
                self.stats.resets += 1;
            }
            self.note(format!("  node-{j} @{now} sends {cmd:?}"));
            self.nodes[j].pending.push(Sent { cmd, at: now });
        }
        while let Some(ev) = self.nodes[j].m.poll_event() {
            self.note(format!("  node-{j} @{now} event {ev:?}"));
            self.on_event(j, ev);
        }
        // (e) after any input, no role is leading at or past its deadline.
        for role in self.roles.clone() {
            let n = &self.nodes[j];
            let leading = matches!(
                n.m.state(&role),
                Some(RoleState::Leader { .. } | RoleState::Suspect { .. })
            );
            if leading {
                let d = n.m.deadline(&role);
                self.check(d.is_some_and(|d| now < d), || {
                    format!("node-{j} still leads {role} at {now}, deadline {d:?}")
                });
            }
        }
    }

    fn on_event(&mut self, j: usize, ev: Event) {
        let now = self.nodes[j].local;
        let db_now = self.db.now_us();
        match ev {
            Event::StartedLeading {
                role,
                term,
                deadline,
            } => {
                let n = &self.nodes[j];
                // (d)
                self.check(!n.started.contains_key(&role), || {
                    format!("node-{j} started leading {role} twice")
                });
                // (b)
                let last = n.last_term.get(&role).copied();
                self.check(last.is_none_or(|l| term > l), || {
                    format!("node-{j} leads {role} with term {term} after term {last:?}")
                });
                // (a) the deadline is backed by a successful claim/renew.
                let md = n.model_deadline.get(&(role.clone(), term)).copied();
                self.check(md.is_some_and(|md| deadline <= md), || {
                    format!("node-{j} leads {role}/{term} until {deadline}, model allows {md:?}")
                });
                self.check(deadline > now, || {
                    format!("node-{j} starts leading {role} past its deadline")
                });
                // (c) the predecessor's lease has passed in database time.
                let prev = n.claim_prev.get(&(role.clone(), term)).copied();
                self.check(prev.is_some(), || {
                    format!("node-{j} leads {role} with term {term} it never claimed")
                });
                self.stats.started += 1;
                if prev.is_some_and(|p| p.is_some_and(|until| until > db_now - 1_000_000)) {
                    self.stats.waited += 1;
                }
                if self.wait_for_lease
                    && let Some(Some(until)) = prev
                {
                    self.check(db_now >= until, || {
                        format!(
                            "node-{j} leads {role}/{term} at db {} µs before the \
                                 predecessor's lease ends at {} µs",
                            db_now - EPOCH_US,
                            until - EPOCH_US
                        )
                    });
                }
                let n = &mut self.nodes[j];
                n.started.insert(role.clone(), term);
                n.last_term.insert(role, term);
            }
            Event::StoppedLeading { role, term, reason } => {
                match reason {
                    StepDownReason::DeadlineExpired => self.stats.deadline_expired += 1,
                    StepDownReason::LeaseLost => self.stats.lease_lost += 1,
                    StepDownReason::LockLost => self.stats.lock_lost += 1,
                    StepDownReason::Resigned => self.stats.resigned += 1,
                    StepDownReason::Shutdown => {}
                }
                let had = self.nodes[j].started.remove(&role);
                self.check(had == Some(term), || {
                    format!("node-{j} stopped leading {role}/{term}, but had started {had:?}")
                });
                if let Some(pos) = self.nodes[j]
                    .watch
                    .iter()
                    .position(|(r, t, _)| r == &role && *t == term)
                {
                    let (_, _, d) = self.nodes[j].watch.remove(pos);
                    self.stats.silence_checked += 1;
                    self.check(now <= d, || {
                        format!(
                            "node-{j} stepped down from {role} at {now}, after its deadline {d}"
                        )
                    });
                }
            }
            Event::ZombiePreempted { .. } => self.stats.preempted += 1,
            Event::LeadershipAtRisk { role, deadline } => {
                self.check(deadline > now, || {
                    format!("node-{j}: {role} at risk until {deadline}, which has passed")
                });
            }
            _ => {}
        }
    }

    /// Checks every node against every other and against the database.
    fn check_all(&self) {
        let db_now = self.db.now_us();
        for role in &self.roles {
            let mut leaders = Vec::new();
            for (j, n) in self.nodes.iter().enumerate() {
                let leading = matches!(
                    n.m.state(role),
                    Some(RoleState::Leader { .. } | RoleState::Suspect { .. })
                );
                // (d) leading exactly between Started and Stopped.
                self.check(leading == n.started.contains_key(role), || {
                    format!(
                        "node-{j} {role}: state {:?} but started {:?}",
                        n.m.state(role),
                        n.started.get(role)
                    )
                });
                if !n.m.is_leader(role, n.local) {
                    continue;
                }
                leaders.push(j);
                let term = n.m.term(role).unwrap();
                self.check(n.started.get(role) == Some(&term), || {
                    format!("node-{j} leads {role} with term {term} it did not announce")
                });
                // (a)
                let d = n.m.deadline(role).unwrap();
                let md = n.model_deadline.get(&(role.clone(), term)).copied();
                self.check(n.local < d && md.is_some_and(|md| n.local < md), || {
                    format!(
                        "node-{j} is leader of {role} at {} with deadline {d}, model {md:?}",
                        n.local
                    )
                });
                // (f)
                let end = self.db.lease_end.get(&(j, role.clone(), term.0)).copied();
                self.check(end.is_some_and(|e| db_now < e), || {
                    format!(
                        "node-{j} is leader of {role}/{term} at db {} µs but its lease ends at {:?}",
                        db_now - EPOCH_US,
                        end.map(|e| e - EPOCH_US)
                    )
                });
            }
            // (c) mutual exclusion.
            if self.wait_for_lease {
                self.check(leaders.len() <= 1, || {
                    format!(
                        "nodes {leaders:?} all lead {role} at db {} µs",
                        db_now - EPOCH_US
                    )
                });
            }
        }
    }

    // ----- time --------------------------------------------------------

    fn move_time(&mut self, d: f64) {
        if d <= 0.0 {
            return;
        }
        self.db.now_ns += d;
        for n in &mut self.nodes {
            n.local_f += d / n.rate;
            n.local = n.local.max(LocalInstant::from_nanos(n.local_f as u64));
        }
    }

    /// Lets `dt` of database time pass, waking every node that is not
    /// paused at each of its `poll_timeout`s, exactly.
    fn advance(&mut self, dt: f64) {
        let target = self.db.now_ns + dt;
        loop {
            let now = self.db.now_ns;
            let mut best: Option<(f64, usize, Option<LocalInstant>)> = None;
            for (j, n) in self.nodes.iter().enumerate() {
                let (at, wake) = if let Some(p) = n.paused_until {
                    (p, None)
                } else if let Some(w) = n.m.poll_timeout() {
                    let ahead = (w.as_nanos() as f64 - n.local_f).max(0.0);
                    (now + ahead * n.rate, Some(w))
                } else {
                    (f64::INFINITY, None)
                };
                let (at, wake) = match n.silent_until {
                    Some(s) if s < at => (s, None),
                    _ => (at, wake),
                };
                if best.is_none_or(|(b, _, _)| at < b) {
                    best = Some((at, j, wake));
                }
            }
            match best {
                Some((at, j, wake)) if at <= target => {
                    self.move_time(at - now);
                    self.wake(j, wake);
                }
                _ => {
                    self.move_time(target - now);
                    return;
                }
            }
        }
    }

    fn wake(&mut self, j: usize, wake: Option<LocalInstant>) {
        let now_ns = self.db.now_ns;
        let n = &mut self.nodes[j];
        if n.paused_until.is_some_and(|p| now_ns >= p - 0.5) {
            n.paused_until = None;
        }
        if let Some(w) = wake
            && w > n.local
        {
            n.local = w;
            n.local_f = n.local_f.max(w.as_nanos() as f64);
        }
        let local = n.local;
        if n.last_wake.0 == local {
            n.last_wake.1 += 1;
        } else {
            n.last_wake = (local, 0);
        }
        let spins = n.last_wake.1;
        let ended_silence = n.silent_until.is_some_and(|s| now_ns >= s - 0.5);
        self.check(spins < 200, || {
            format!(
                "node-{j} busy-loops: woken {spins} times at {local}, poll_timeout {:?}: {:#?}",
                self.nodes[j].m.poll_timeout(),
                self.nodes[j].m
            )
        });
        if spins == 0 {
            self.note(format!("node-{j} wakes @{local}"));
        }
        self.nodes[j].m.handle_timeout(local);
        self.settle(j);
        if ended_silence {
            let n = &mut self.nodes[j];
            n.silent_until = None;
            let watch = std::mem::take(&mut n.watch);
            let local = n.local;
            for (role, term, d) in watch {
                self.check(local < d, || {
                    format!("node-{j} did not step down from {role}/{term} by its deadline {d}")
                });
            }
        }
        self.check_all();
    }

    // ----- the database side -------------------------------------------

    fn new_session(&mut self, j: usize) {
        let old = self.nodes[j].session;
        self.db.free_session(old);
        self.db.next_session += 1;
        self.nodes[j].session = self.db.next_session;
        self.nodes[j].session_dead = false;
    }

    fn kill_session(&mut self, j: usize) {
        let s = self.nodes[j].session;
        self.db.free_session(s);
        self.nodes[j].session_dead = true;
    }

    /// Runs `cmd` of node `j` in the database now.
    fn exec(&mut self, j: usize, cmd: &Command) -> CommandResult {
        if self.nodes[j].session_dead && !matches!(cmd, Command::Notify { .. }) {
            // The backend notices, reports it, and reconnects next time.
            self.new_session(j);
            return Err(BackendError::SessionLost {
                reason: "terminated".to_owned(),
            });
        }
        let now = self.db.now_us();
        let session = self.nodes[j].session;
        let name = self.nodes[j].name.clone();
        match cmd {
            Command::TryLock { roles, .. } => {
                let mut attempts = Vec::new();
                for role in roles {
                    let granted = match self.db.locks.get(role) {
                        None => {
                            self.db.locks.insert(role.clone(), session);
                            true
                        }
                        Some(s) if *s == session => self.fail(format!(
                            "node-{j} tries the lock of {role} that its session holds"
                        )),
                        Some(_) => false,
                    };
                    let lease = self.db.rows.get(role).map(|r| self.db.record(role, r));
                    attempts.push(LockAttempt {
                        role: role.clone(),
                        granted,
                        lease,
                    });
                }
                Ok(CommandOutput::TryLock(TryLockOutcome {
                    db_now: self.db.ts(),
                    attempts,
                }))
            }
            Command::Claim { role, .. } => {
                // Like the SQL upsert: it does not look at the lock.
                let prev = self.db.rows.get(role).cloned();
                let term = prev.as_ref().map_or(0, |r| r.term) + 1;
                let until = now + self.lease_us;
                self.db.rows.insert(
                    role.clone(),
                    Row {
                        holder: name,
                        term,
                        session,
                        acquired: now,
                        renewed: now,
                        until,
                    },
                );
                self.db.lease_end.insert((j, role.clone(), term), until);
                self.nodes[j]
                    .claim_prev
                    .insert((role.clone(), Term(term)), prev.as_ref().map(|r| r.until));
                Ok(CommandOutput::Claim(ClaimOutcome {
                    term: Term(term),
                    previous: prev.map(|r| self.db.record(role, &r)),
                    db_now: self.db.ts(),
                }))
            }
            Command::Renew { leases, .. } => {
                let mut renewed = Vec::new();
                for l in leases {
                    if let Some(row) = self.db.rows.get_mut(&l.role)
                        && row.holder == name
                        && row.term == l.term.0
                    {
                        row.until = now + self.lease_us;
                        row.renewed = now;
                        self.db
                            .lease_end
                            .insert((j, l.role.clone(), l.term.0), row.until);
                        renewed.push(l.role.clone());
                    }
                }
                Ok(CommandOutput::Renew(RenewOutcome {
                    db_now: self.db.ts(),
                    renewed,
                }))
            }
            Command::Validate { roles, .. } => Ok(CommandOutput::Validate(
                roles
                    .iter()
                    .filter(|r| self.db.locks.get(*r) == Some(&session))
                    .cloned()
                    .collect(),
            )),
            Command::Ping { .. } => Ok(CommandOutput::Ping),
            Command::Preempt { lease, grace, .. } => {
                let role = &lease.role;
                let zombie = match (self.db.locks.get(role), self.db.rows.get(role)) {
                    (Some(&s), Some(row))
                        if row.holder == lease.holder
                            && row.term == lease.term.0
                            && now > row.until + grace.as_micros() as i64 =>
                    {
                        Some(s)
                    }
                    _ => None,
                };
                match zombie {
                    Some(_) if !self.db.preempt_permitted => {
                        Ok(CommandOutput::Preempt(PreemptOutcome::NotPermitted))
                    }
                    Some(s) => {
                        self.db.free_session(s);
                        if let Some(k) = self.nodes.iter().position(|n| n.session == s) {
                            self.nodes[k].session_dead = true;
                        }
                        Ok(CommandOutput::Preempt(PreemptOutcome::Terminated))
                    }
                    None => Ok(CommandOutput::Preempt(PreemptOutcome::NotZombie)),
                }
            }
            Command::Release { role, term, .. } => {
                if let Some(term) = term
                    && let Some(row) = self.db.rows.get_mut(role)
                    && row.holder == name
                    && row.term == term.0
                {
                    row.until = row.until.min(now);
                    self.db
                        .lease_end
                        .insert((j, role.clone(), term.0), row.until);
                }
                if self.db.locks.get(role) == Some(&session) {
                    self.db.locks.remove(role);
                }
                Ok(CommandOutput::Released)
            }
            Command::Notify { role, .. } => {
                for k in 0..self.nodes.len() {
                    if k != j && self.nodes[k].paused_until.is_none() {
                        let local = self.nodes[k].local;
                        self.nodes[k].m.handle_release_notified(local, role);
                        self.settle(k);
                    }
                }
                Ok(CommandOutput::Notified)
            }
            Command::ResetSession { .. } => {
                self.new_session(j);
                Ok(CommandOutput::Reset)
            }
        }
    }

    /// Node `j`'s `idx`-th pending command reaches the database.
    fn execute(&mut self, j: usize, idx: usize, f: Fault) {
        let n = &mut self.nodes[j];
        if n.pending.is_empty() {
            return;
        }
        let sent = n.pending.remove(idx % n.pending.len());
        // A silent node's commands are lost; a driver drops calls that ran
        // past the attempt timeout.
        if n.silent_until.is_some() || n.local >= sent.at + self.cfg.attempt_timeout() {
            self.note(format!("db drops {:?} of node-{j}", sent.cmd));
            return;
        }
        let err = |e: BackendError| Some(Err(e));
        let timeout = BackendError::Timeout(self.cfg.attempt_timeout());
        let reply = match f {
            Fault::None => Some(self.exec(j, &sent.cmd)),
            Fault::Transient => err(BackendError::Transient("reset by peer".to_owned())),
            Fault::Timeout => err(timeout),
            Fault::Misconfigured => err(BackendError::Misconfigured("no table".to_owned())),
            Fault::SessionLost => {
                self.new_session(j);
                err(BackendError::SessionLost {
                    reason: "statement failed".to_owned(),
                })
            }
            Fault::LoseReply => {
                let _ = self.exec(j, &sent.cmd);
                None
            }
            Fault::RunThenTimeout => {
                let _ = self.exec(j, &sent.cmd);
                err(timeout)
            }
        };
        self.note(format!(
            "db runs {:?} of node-{j} ({f:?}) -> {reply:?}",
            sent.cmd
        ));
        if let Some(reply) = reply {
            self.nodes[j].replies.push((sent, reply));
        }
    }

    /// Node `j` receives its `idx`-th reply.
    fn deliver(&mut self, j: usize, idx: usize) -> bool {
        let n = &mut self.nodes[j];
        if n.replies.is_empty() || n.paused_until.is_some() || n.silent_until.is_some() {
            return false;
        }
        let (sent, result) = n.replies.remove(idx % n.replies.len());
        let window = self.window;
        match (&sent.cmd, &result) {
            (Command::Claim { role, .. }, Ok(CommandOutput::Claim(out))) => {
                let e = n
                    .model_deadline
                    .entry((role.clone(), out.term))
                    .or_insert(sent.at + window);
                *e = (*e).max(sent.at + window);
            }
            (Command::Renew { leases, .. }, Ok(CommandOutput::Renew(out))) => {
                for l in leases.iter().filter(|l| out.renewed.contains(&l.role)) {
                    let e = n
                        .model_deadline
                        .entry((l.role.clone(), l.term))
                        .or_insert(sent.at + window);
                    *e = (*e).max(sent.at + window);
                }
            }
            _ => {}
        }
        let local = n.local;
        self.note(format!(
            "node-{j} @{local} gets {} -> {result:?}",
            sent.cmd.id()
        ));
        self.nodes[j].m.handle_result(local, sent.cmd.id(), result);
        self.settle(j);
        true
    }

    // ----- the external holder ------------------------------------------

    fn ext_lock(&mut self, role: &Role) {
        if !self.db.locks.contains_key(role) {
            self.note(format!("ext locks {role}"));
            self.db.locks.insert(role.clone(), EXT_SESSION);
        }
    }

    /// The external node claims only once the previous lease has passed.
    fn ext_claim(&mut self, role: &Role, lease_us: i64) {
        let now = self.db.now_us();
        if self.db.locks.get(role) != Some(&EXT_SESSION) {
            return;
        }
        let prev = self.db.rows.get(role);
        if prev.is_some_and(|r| r.until > now) {
            return;
        }
        let term = prev.map_or(0, |r| r.term) + 1;
        self.note(format!("ext claims {role} term {term}"));
        self.db.rows.insert(
            role.clone(),
            Row {
                holder: EXT.to_owned(),
                term,
                session: EXT_SESSION,
                acquired: now,
                renewed: now,
                until: now + lease_us,
            },
        );
    }

    fn ext_renew(&mut self, role: &Role, lease_us: i64) {
        let now = self.db.now_us();
        if self.db.locks.get(role) != Some(&EXT_SESSION) {
            return;
        }
        if let Some(row) = self.db.rows.get_mut(role)
            && row.holder == EXT
        {
            row.until = row.until.max(now + lease_us);
            row.renewed = now;
        }
    }

    fn ext_release(&mut self, role: &Role) {
        let now = self.db.now_us();
        if self.db.locks.get(role) != Some(&EXT_SESSION) {
            return;
        }
        self.note(format!("ext releases {role}"));
        if let Some(row) = self.db.rows.get_mut(role)
            && row.holder == EXT
        {
            row.until = row.until.min(now);
        }
        self.db.locks.remove(role);
        for k in 0..self.nodes.len() {
            if self.nodes[k].paused_until.is_none() {
                let local = self.nodes[k].local;
                self.nodes[k].m.handle_release_notified(local, role);
                self.settle(k);
            }
        }
    }

    // ----- steps --------------------------------------------------------

    /// An application-side input to node `j`, unless it is paused.
    fn input(&mut self, j: usize, what: &str, f: impl FnOnce(&mut Machine, LocalInstant)) {
        let n = &mut self.nodes[j];
        if n.paused_until.is_some() {
            return;
        }
        let local = n.local;
        f(&mut n.m, local);
        self.note(format!("node-{j} @{local} {what}"));
        self.settle(j);
    }

    fn step(&mut self, (k, a, b): (u8, u16, u16)) {
        let j = usize::from(a) % self.nodes.len();
        let role = self.roles[usize::from(b) % self.roles.len()].clone();
        let lease_ms = self.cfg.lease_duration().as_millis() as f64;
        match k % 100 {
            0..=19 => self.execute(j, usize::from(b >> 3), fault(a >> 2)),
            20..=34 => {
                self.deliver(j, usize::from(b >> 3));
            }
            35..=54 => self.healthy_round(j, b),
            55..=66 => {
                if (a >> 8) % 6 == 0 {
                    let rho = self.cfg.max_drift();
                    self.nodes[j].rate = 1.0 + rho * (f64::from(b % 201) / 100.0 - 1.0);
                }
                self.advance((f64::from(b % 400) + 1.0) * MS);
            }
            67..=68 => self.advance(f64::from(b % 1000) / 1000.0 * 1.5 * lease_ms * MS),
            69..=71 => self.input(j, "resigns", |m, t| m.handle_resign(t, &role)),
            72 => self.input(j, "stops", |m, t| m.handle_stop(t, &role)),
            73 => {
                if b % 4 == 0 {
                    self.input(j, "shuts down", |m, t| m.handle_shutdown(t));
                }
            }
            74..=75 => self.input(j, "adds", |m, t| m.add_role(t, role.clone())),
            76 => self.input(j, "drained", |m, t| m.handle_drained(t, &role)),
            77 => self.input(j, "notify gap", |m, t| m.handle_notify_gap(t)),
            78..=79 => {
                self.note(format!("operator kills the session of node-{j}"));
                self.kill_session(j);
                if b % 2 == 0 {
                    self.notice_session_lost(j);
                }
            }
            80 => self.input(j, "spurious session lost", |m, t| {
                m.handle_session_lost(t, "spurious")
            }),
            81 => self.notice_session_lost(j),
            82 => {
                let n = &mut self.nodes[j];
                if n.paused_until.is_none() && n.silent_until.is_none() {
                    let until = self.db.now_ns + f64::from(b % 1000) / 1000.0 * lease_ms * MS;
                    self.note(format!("node-{j} paused until {until}"));
                    self.nodes[j].paused_until = Some(until);
                }
            }
            83..=85 => self.fail_renew_then_silence(j, a),
            86..=88 => self.ext_lock(&role),
            89 => self.ext_claim(&role, i64::from(b % 5000 + 100) * 1000),
            90 => self.ext_renew(&role, i64::from(b % 5000 + 100) * 1000),
            91 => self.crash_and_restart(j),
            92..=93 => self.ext_release(&role),
            _ => {
                for j in 0..self.nodes.len() {
                    self.healthy_round(j, b.wrapping_add(j as u16));
                }
            }
        }
        self.check_all();
        let leading = self
            .nodes
            .iter()
            .any(|n| self.roles.iter().any(|r| n.m.is_leader(r, n.local)));
        self.stats.leading_steps += u32::from(leading);
    }

    /// Node `j`'s commands run and are answered, with rare faults drawn
    /// from `seed`, until it has nothing more to say.
    fn healthy_round(&mut self, j: usize, seed: u16) {
        let n = &self.nodes[j];
        if n.paused_until.is_some() || n.silent_until.is_some() {
            return;
        }
        let mut x = u32::from(seed).wrapping_mul(2_654_435_761);
        for _ in 0..4 {
            while !self.nodes[j].pending.is_empty() {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let f = if (x >> 16) % 100 < 88 {
                    Fault::None
                } else {
                    fault((x >> 8) as u16)
                };
                self.execute(j, 0, f);
            }
            while self.deliver(j, 0) {}
            if self.nodes[j].pending.is_empty() {
                return;
            }
        }
    }

    /// The backend saw node `j`'s session close.
    fn notice_session_lost(&mut self, j: usize) {
        let n = &self.nodes[j];
        if !n.session_dead || n.paused_until.is_some() {
            return;
        }
        self.new_session(j);
        self.input(j, "session lost", |m, t| m.handle_session_lost(t, "closed"));
    }

    /// A pending renew of node `j` fails; then nothing more is heard from
    /// the database for longer than a lease.
    fn fail_renew_then_silence(&mut self, j: usize, a: u16) {
        let n = &mut self.nodes[j];
        if n.paused_until.is_some() || n.silent_until.is_some() {
            return;
        }
        let Some(pos) = n
            .pending
            .iter()
            .position(|s| matches!(s.cmd, Command::Renew { .. }))
        else {
            return;
        };
        let sent = n.pending.remove(pos);
        let err = if a.is_multiple_of(2) {
            BackendError::Transient("reset".to_owned())
        } else {
            BackendError::Timeout(self.cfg.attempt_timeout())
        };
        let local = n.local;
        n.m.handle_result(local, sent.cmd.id(), Err(err));
        self.note(format!("node-{j} @{local} renew fails, then silence"));
        self.settle(j);
        let n = &mut self.nodes[j];
        n.watch = self
            .roles
            .iter()
            .filter(|r| {
                matches!(
                    n.m.state(r),
                    Some(RoleState::Leader { .. } | RoleState::Suspect { .. })
                )
            })
            .map(|r| (r.clone(), n.m.term(r).unwrap(), n.m.deadline(r).unwrap()))
            .collect();
        let span = self.cfg.lease_duration().as_nanos() as f64 * 1.2
            + self.cfg.attempt_timeout().as_nanos() as f64;
        n.silent_until = Some(self.db.now_ns + span);
    }

    /// Faults heal: paused nodes resume, silences end early (their
    /// deadlines were checked on every step), the external holder lets go,
    /// and terminated sessions are noticed.
    fn heal(&mut self) {
        for j in 0..self.nodes.len() {
            self.nodes[j].paused_until = None;
            self.nodes[j].silent_until = None;
            self.nodes[j].watch.clear();
        }
        for role in self.roles.clone() {
            self.ext_release(&role);
        }
        for j in 0..self.nodes.len() {
            self.notice_session_lost(j);
        }
        self.advance(0.0);
    }

    /// Runs and answers every command at once, without faults, until no
    /// node has anything more to say; answers drain requests if `drain`.
    fn serve_all(&mut self, drain: bool) {
        for j in 0..self.nodes.len() {
            while !self.nodes[j].pending.is_empty() || !self.nodes[j].replies.is_empty() {
                while !self.nodes[j].pending.is_empty() {
                    self.execute(j, 0, Fault::None);
                }
                if !self.deliver(j, 0) && self.nodes[j].pending.is_empty() {
                    break;
                }
                while self.deliver(j, 0) {}
            }
            if !drain {
                continue;
            }
            for role in self.roles.clone() {
                if matches!(
                    self.nodes[j].m.state(&role),
                    Some(RoleState::Releasing {
                        phase: ReleasePhase::Draining { .. }
                    })
                ) {
                    self.input(j, "drained", |m, t| m.handle_drained(t, &role));
                }
            }
        }
        self.check_all();
    }

    /// Lets time pass until the next wake-up of any node.
    fn advance_to_next_wake(&mut self) {
        let next = self
            .nodes
            .iter()
            .filter_map(|n| {
                let w = n.m.poll_timeout()?;
                Some((w.as_nanos() as f64 - n.local_f).max(0.0) * n.rate)
            })
            .fold(f64::INFINITY, f64::min);
        self.advance(if next.is_finite() { next } else { MS });
    }

    fn dump(&self) -> String {
        let states: Vec<String> = self.nodes.iter().map(|n| format!("{:?}", n.m)).collect();
        format!("{states:#?}")
    }

    /// Liveness: once faults heal and every node campaigns again, each
    /// role soon has exactly one leader.
    fn heal_and_elect(&mut self) {
        self.note("--- faults heal, every node campaigns".to_owned());
        self.heal();
        for j in 0..self.nodes.len() {
            for role in self.roles.clone() {
                self.input(j, "adds", |m, t| m.add_role(t, role));
            }
        }
        // The longest lease in the rows, a few retries with hold-off and
        // jitter, drains, and the waits' drift and margins.
        let limit = self.db.now_ns
            + 2.0 * (self.cfg.lease_duration().as_nanos() as f64 + 5.1e9)
            + 10.0 * self.cfg.retry_interval().as_nanos() as f64
            + 2.0 * self.cfg.drain_timeout().as_nanos() as f64
            + 5e9;
        loop {
            self.serve_all(true);
            let led = self.roles.iter().all(|r| {
                self.nodes
                    .iter()
                    .filter(|n| n.m.is_leader(r, n.local))
                    .count()
                    == 1
            });
            if led {
                return;
            }
            if self.db.now_ns > limit {
                self.fail(format!("no leader after faults healed: {}", self.dump()));
            }
            self.advance_to_next_wake();
        }
    }

    /// Every node shuts down on a healthy database; all must stop.
    fn shut_down(&mut self) {
        self.note("--- shutdown on a healthy database".to_owned());
        let limit = self.db.now_ns
            + 1e9 * 60.0
            + 10.0 * self.cfg.lease_duration().as_nanos() as f64
            + 2.0 * self.cfg.drain_timeout().as_nanos() as f64;
        self.heal();
        for j in 0..self.nodes.len() {
            self.input(j, "shuts down", |m, t| m.handle_shutdown(t));
        }
        loop {
            self.serve_all(true);
            let busy = self
                .nodes
                .iter()
                .any(|n| !n.pending.is_empty() || !n.replies.is_empty());
            if !busy && self.nodes.iter().all(|n| n.m.is_stopped()) {
                return;
            }
            if self.db.now_ns > limit {
                self.fail(format!("not stopped after shutdown: {}", self.dump()));
            }
            self.advance_to_next_wake();
        }
    }

    /// Node `j`'s process crashes (its session and every lock on it go)
    /// and restarts with a fresh machine under the same node id.
    fn crash_and_restart(&mut self, j: usize) {
        self.note(format!("node-{j} crashes and restarts"));
        self.new_session(j);
        let seed = self.db.next_session;
        let n = &mut self.nodes[j];
        n.m = Machine::new(
            NodeId::new(n.name.clone()).unwrap(),
            Namespace::default(),
            self.cfg.clone(),
            ChaCha8Rng::seed_from_u64(seed),
        );
        n.paused_until = None;
        n.silent_until = None;
        n.watch.clear();
        n.pending.clear();
        n.replies.clear();
        // The old process's leadership ended with it; terms go on growing.
        n.started.clear();
        n.model_deadline.clear();
        n.claim_prev.clear();
        for role in self.roles.clone() {
            self.input(j, "restarts", |m, t| m.add_role(t, role));
        }
    }
}

fn run(setup: [u16; 8], steps: &[(u8, u16, u16)]) -> Stats {
    let mut w = World::new(setup);
    for (i, s) in steps.iter().enumerate() {
        w.note(format!("#{i} {s:?}"));
        w.step(*s);
    }
    // What the random phase exercised (healing elects leaders anyway).
    let stats = w.stats;
    w.heal_and_elect();
    w.shut_down();
    stats
}

fn steps_strategy() -> impl Strategy<Value = Vec<(u8, u16, u16)>> {
    prop::collection::vec(any::<(u8, u16, u16)>(), 50..150)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn machines_are_safe_under_random_events(
        setup in any::<[u16; 8]>(),
        steps in steps_strategy(),
    ) {
        run(setup, &steps);
    }
}

/// The random runs reach the situations the property is about.
#[test]
fn random_runs_cover_the_interesting_cases() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (any::<[u16; 8]>(), steps_strategy());
    let mut total = Stats::default();
    let mut cases_leading = 0;
    let n = 500;
    for _ in 0..n {
        let (setup, steps) = strategy.new_tree(&mut runner).unwrap().current();
        let s = run(setup, &steps);
        cases_leading += u32::from(s.started > 0);
        total.started += s.started;
        total.waited += s.waited;
        total.deadline_expired += s.deadline_expired;
        total.lease_lost += s.lease_lost;
        total.lock_lost += s.lock_lost;
        total.resigned += s.resigned;
        total.silence_checked += s.silence_checked;
        total.preempted += s.preempted;
        total.resets += s.resets;
        total.leading_steps += s.leading_steps;
    }
    println!("{n} cases, {cases_leading} with a leader: {total:?}");
    assert!(cases_leading > n / 4, "{cases_leading} {total:?}");
    assert!(total.waited > 10, "{total:?}");
    assert!(total.deadline_expired > 10, "{total:?}");
    assert!(total.lease_lost > 0, "{total:?}");
    assert!(total.lock_lost > 10, "{total:?}");
    assert!(total.resigned > 10, "{total:?}");
    assert!(total.silence_checked > 5, "{total:?}");
    assert!(total.resets > 0, "{total:?}");
}

#[test]
fn a_quiet_run_elects_exactly_one_leader() {
    // Three nodes, no faults: answer everything, let time pass.
    let mut w = World::new([3, 10, 10, 0x2000 | 500, 200, 2, 1, 1000]);
    assert_eq!(w.nodes.len(), 3);
    for _ in 0..200 {
        for j in 0..w.nodes.len() {
            while !w.nodes[j].pending.is_empty() {
                w.execute(j, 0, Fault::None);
                while w.deliver(j, 0) {}
            }
        }
        w.check_all();
        w.step((50, 1, 100));
    }
    let leaders = w
        .nodes
        .iter()
        .filter(|n| n.m.is_leader(&w.roles[0], n.local))
        .count();
    assert_eq!(leaders, 1);
    w.shut_down();
}
