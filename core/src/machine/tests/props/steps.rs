//! The random steps of a run, and the healing, election and shutdown
//! phases that end every case.

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use super::db::{Fault, fault};
use super::world::World;
use crate::backend::BackendError;
use crate::machine::{Command, Machine, ReleasePhase, RoleState};
use crate::types::{LocalInstant, Namespace, NodeId};

/// A millisecond in nanoseconds.
const MS: f64 = 1e6;

impl World {
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

    /// Runs one random step, then checks every node.
    pub(super) fn step(&mut self, (k, a, b): (u8, u16, u16)) {
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

    /// Every machine's state, for failure reports.
    fn dump(&self) -> String {
        let states: Vec<String> = self.nodes.iter().map(|n| format!("{:?}", n.m)).collect();
        format!("{states:#?}")
    }

    /// Liveness: once faults heal and every node campaigns again, each
    /// role soon has exactly one leader.
    pub(super) fn heal_and_elect(&mut self) {
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
    pub(super) fn shut_down(&mut self) {
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
