//! The modelled world: nodes with drifting local clocks, what a run
//! exercised, construction from a random setup, failure reports, and the
//! passing of time.

use std::collections::BTreeMap;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::db::{Db, EPOCH_US};
use crate::config::{Config, TakeoverPolicy};
use crate::machine::{Command, CommandResult, Machine};
use crate::types::{LocalInstant, Namespace, NodeId, Role, Term};

/// A command as sent, with the local instant it left.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    /// The command.
    pub(super) cmd: Command,
    /// The local instant it was sent.
    pub(super) at: LocalInstant,
}

/// One modelled node: its machine, clock, session and what the checks
/// remember about it.
pub(super) struct Node {
    /// The machine under test.
    pub(super) m: Machine,
    /// The node id.
    pub(super) name: String,
    /// The local clock in nanoseconds, unrounded.
    pub(super) local_f: f64,
    /// The local clock as the machine sees it; never goes back.
    pub(super) local: LocalInstant,
    /// Database nanoseconds per local nanosecond.
    pub(super) rate: f64,
    /// The database session the node's backend uses now.
    pub(super) session: u64,
    /// Terminated by an operator; the node has not noticed yet.
    pub(super) session_dead: bool,
    /// Paused (no inputs, no wake-ups) until this database instant.
    pub(super) paused_until: Option<f64>,
    /// Hears nothing from the database until this database instant.
    pub(super) silent_until: Option<f64>,
    /// Roles leading when a silence began, with the term and deadline.
    pub(super) watch: Vec<(Role, Term, LocalInstant)>,
    /// Commands sent that have not reached the database.
    pub(super) pending: Vec<Sent>,
    /// Replies the node has not received yet.
    pub(super) replies: Vec<(Sent, CommandResult)>,
    /// The term of each role the node announced it leads.
    pub(super) started: BTreeMap<Role, Term>,
    /// The last term the node started leading, per role.
    pub(super) last_term: BTreeMap<Role, Term>,
    /// The latest deadline a successful claim/renew allows, per role and
    /// term.
    pub(super) model_deadline: BTreeMap<(Role, Term), LocalInstant>,
    /// The predecessor's lease end (database µs) a claim returned.
    pub(super) claim_prev: BTreeMap<(Role, Term), Option<i64>>,
    /// The last wake-up instant and how often it repeated, to catch
    /// busy loops.
    last_wake: (LocalInstant, u32),
}

/// What a run exercised, to show the property is not vacuous.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Stats {
    /// Times some node started leading.
    pub(super) started: u32,
    /// Started only after waiting out an unexpired predecessor.
    pub(super) waited: u32,
    /// Step-downs because the deadline passed.
    pub(super) deadline_expired: u32,
    /// Step-downs because the lease was lost.
    pub(super) lease_lost: u32,
    /// Step-downs because the lock was lost.
    pub(super) lock_lost: u32,
    /// Step-downs by resigning.
    pub(super) resigned: u32,
    /// Leaders checked to step down by the deadline after a failed renew.
    pub(super) silence_checked: u32,
    /// Zombie holders preempted.
    pub(super) preempted: u32,
    /// Session resets sent.
    pub(super) resets: u32,
    /// Steps at which some node was leader.
    pub(super) leading_steps: u32,
}

/// The nodes, the database and the checks' bookkeeping of one run.
pub(super) struct World {
    /// What the run exercised so far.
    pub(super) stats: Stats,
    /// The config every node runs with.
    pub(super) cfg: Config,
    /// The lease duration in µs.
    pub(super) lease_us: i64,
    /// The leader window of `cfg`.
    pub(super) window: Duration,
    /// Whether the takeover policy is `WaitForLease`.
    pub(super) wait_for_lease: bool,
    /// The nodes, `node-0` first.
    pub(super) nodes: Vec<Node>,
    /// The roles every node campaigns for.
    pub(super) roles: Vec<Role>,
    /// The modelled database.
    pub(super) db: Db,
    /// What happened, for failure reports.
    log: Vec<String>,
}

/// A valid config drawn from the setup words (the default if the draw
/// is rejected).
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
    /// A world drawn from the setup words; every node adds every role.
    pub(super) fn new(s: [u16; 8]) -> Self {
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

    /// Fails the case with `msg`, the database and the last steps.
    #[track_caller]
    pub(super) fn fail(&self, msg: String) -> ! {
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

    /// Fails the case with `msg()` unless `ok`.
    #[track_caller]
    pub(super) fn check(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(msg());
        }
    }

    /// Logs `s` for failure reports.
    pub(super) fn note(&mut self, s: String) {
        self.log.push(s);
    }

    // ----- time --------------------------------------------------------

    /// Moves the database clock by `d` ns and every local clock by its
    /// rate, without waking anyone.
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
    pub(super) fn advance(&mut self, dt: f64) {
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

    /// Wakes node `j` at `wake` (or now), checks it does not spin, and ends
    /// its silence if due.
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
}
