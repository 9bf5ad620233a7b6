//! Watching the machines: their events, who believes it leads after every
//! step, and coverage.

use std::time::Duration;

use regent_core::{Event, LocalInstant, StepDownReason};

use super::{Ev, World};
use crate::db::TerminatePrivilege;
use crate::invariants::availability::RoleStatus;
use crate::time::SimTime;
use crate::timeline::Tag;

impl World {
    pub(super) fn on_machine_event(&mut self, n: usize, e: Event) {
        let now = self.now;
        match e {
            Event::StartedLeading { role, term, .. } => {
                let Some(r) = self.role_ix(&role) else { return };
                self.log(n, "started_leading", Some(r), term.0, 0);
                self.count("started_leading");
                self.checker.on_started_leading(now, n, r, term);
                if std::mem::take(&mut self.nodes[n].elect_waiting[r]) {
                    self.count("elect_waited_out_lease");
                }
                let recent = self.nodes[n].notified_at[r]
                    .is_some_and(|t| now.saturating_since(t) < Duration::from_secs(1));
                if recent {
                    self.count("handover_via_notification");
                }
                if let Some((t, by)) = self.released[r].take()
                    && by != n
                {
                    let d = now.saturating_since(t);
                    self.count(if d < Duration::from_millis(50) {
                        "graceful_handover_under_50ms"
                    } else if d < Duration::from_secs(2) {
                        "graceful_handover_50ms_to_2s"
                    } else {
                        "graceful_handover_over_2s"
                    });
                }
            }
            Event::StoppedLeading { role, term, reason } => {
                let r = self.role_ix(&role);
                self.log(n, "stopped_leading", r, term.0, 0);
                if let Some(r) = r {
                    self.cancel_fenced(n, r);
                    if matches!(
                        reason,
                        StepDownReason::DeadlineExpired | StepDownReason::LockLost
                    ) {
                        let until = self.nodes[n].disturbed_until;
                        let v = crate::invariants::blast_radius::check(
                            now,
                            n,
                            r,
                            reason.as_str(),
                            until,
                        );
                        self.checker.push_violation(v);
                    }
                }
                self.count(match reason {
                    StepDownReason::Resigned => "stepped_down_resigned",
                    StepDownReason::Shutdown => "stepped_down_shutdown",
                    StepDownReason::DeadlineExpired => "stepped_down_at_deadline",
                    StepDownReason::LockLost => "stepped_down_lock_lost",
                    StepDownReason::LeaseLost => "stepped_down_lease_lost",
                });
            }
            Event::DrainRequested { role } => {
                let Some(r) = self.role_ix(&role) else { return };
                let inc = self.nodes[n].inc;
                // Fenced work is cancelled; the drain ends once its
                // rollback reached the server.
                let rollback = self.cancel_fenced(n, r).unwrap_or(Duration::ZERO);
                // Usually the work drains quickly; sometimes it hangs and
                // the drain timeout has to end it.
                if self.rng.chance(0.9) {
                    let d = self.rng.between(Duration::ZERO, Duration::from_millis(300));
                    let d = d.max(rollback + Duration::from_millis(1));
                    self.after(
                        d,
                        Ev::Drained {
                            node: n,
                            inc,
                            role: r,
                        },
                    );
                } else {
                    self.count("drain_hung");
                }
            }
            Event::LeadershipAtRisk { role, .. } => {
                let r = self.role_ix(&role);
                self.log(n, "leadership_at_risk", r, 0, 0);
                self.count("leadership_at_risk");
            }
            Event::LeadershipRecovered { role } => {
                let r = self.role_ix(&role);
                self.log(n, "leadership_recovered", r, 0, 0);
                self.count("leadership_recovered");
            }
            Event::ZombiePreempted { role, .. } => {
                let r = self.role_ix(&role);
                self.log(n, "zombie_preempted", r, 0, 0);
                self.count("zombie_preempted");
            }
            Event::PreemptNotPermitted { role } => {
                let r = self.role_ix(&role);
                self.log(n, "preempt_not_permitted", r, 0, 0);
                self.count("preempt_not_permitted");
            }
            Event::SessionLost { .. } => {
                self.log(n, "session_lost", None, 0, 0);
                self.count("session_lost_seen_by_machine");
            }
            Event::CommandFailed { command, .. } => {
                self.log(n, "command_failed", None, 0, 0);
                self.count(match command {
                    "renew" => "renew_failed",
                    "driver" => "driver_protocol_error",
                    _ => "command_failed",
                });
            }
            Event::LeaderObserved { .. }
            | Event::DeadlineExtended { .. }
            | Event::RoleStopped { .. } => {}
        }
    }

    /// Refreshes node `n`'s cached beliefs if it had input or a belief may
    /// have run out; returns whether any belief (or its term) changed.
    fn refresh_beliefs(&mut self, n: usize) -> bool {
        let node = &mut self.nodes[n];
        // Reading the node's clock costs a division: only a node that
        // believes it leads something needs it when it had no input.
        let local = match (node.dirty, node.belief_ends) {
            (true, _) => node.clock.local(self.now),
            (false, Some(ends)) => {
                let local = node.clock.local(self.now);
                if local < ends {
                    return false;
                }
                local
            }
            (false, None) => return false,
        };
        node.dirty = false;
        let mut changed = false;
        let mut ends: Option<LocalInstant> = None;
        for (r, role) in self.roles.iter().enumerate() {
            let b = node.subject.as_ref().and_then(|s| s.view(role, local).1);
            if let Some((_, until)) = b {
                ends = Some(ends.map_or(until, |e| e.min(until)));
            }
            let old = node.belief[r];
            changed |= old.map(|(t, _)| t) != b.map(|(t, _)| t);
            node.belief[r] = b;
        }
        node.belief_ends = ends;
        changed
    }

    /// After every step: who believes it leads, the timeline, the checks.
    pub(super) fn after_step(&mut self) {
        self.sessions_ended();
        let now = self.now;
        // Beliefs read after this step's inputs (see `track_elect`), then
        // those of nodes that crashed or whose deadline passed.
        let mut changed = std::mem::take(&mut self.beliefs_changed);
        for n in 0..self.nodes.len() {
            changed |= self.refresh_beliefs(n);
        }
        // `leaders` and `terms` mirror the beliefs as of the last step: with
        // no belief changed they are still exact.
        if changed {
            self.sync_leaders(now);
        }
        let db_now = crate::time::db_time(now);
        let mut status = std::mem::take(&mut self.status_buf);
        self.role_statuses(&mut status);
        self.checker.on_step(
            now,
            db_now,
            &self.leaders,
            &self.terms,
            &status,
            changed,
            &mut self.cov,
        );
        self.status_buf = status;
    }

    /// A fault is about to hit node `n` (or, with `pid`, that one session):
    /// roles whose lock its current session holds restart their
    /// accountable leaderless stretch (see
    /// [`crate::invariants::availability`]).
    pub(super) fn fault_hits(&mut self, n: Option<usize>, pid: Option<crate::db::Pid>) {
        let now = self.now;
        if let Some(n) = n {
            self.disturb(n, now);
        }
        for r in 0..self.roles.len() {
            let Some((holder, _)) = self.db.lock_holder(&self.lock_keys[r]) else {
                continue;
            };
            let hit = pid == Some(holder)
                || n.is_some_and(|n| {
                    self.nodes[n]
                        .conn
                        .is_some_and(|c| self.conns[c].pid == Some(holder))
                });
            if hit {
                self.checker.availability.holder_faulted(now, r);
            }
        }
    }

    /// Every role's availability status now (see
    /// [`crate::invariants::availability`] for the definitions), into `out`.
    fn role_statuses(&mut self, out: &mut Vec<RoleStatus>) {
        out.clear();
        let led = RoleStatus {
            led: true,
            healthy: false,
            blocked: false,
        };
        if self.leaders.iter().all(|l| !l.is_empty()) {
            out.resize(self.roles.len(), led);
            return;
        }
        // Nodes healthy apart from the role: reachable, with a live backend
        // on the current session (found once per step, not per role).
        let mut ready = std::mem::take(&mut self.ready_buf);
        ready.clear();
        if self.db.is_up() {
            ready.extend((0..self.nodes.len()).filter(|&n| {
                self.reachable(n)
                    && self.nodes[n]
                        .conn
                        .and_then(|c| self.conns[c].pid)
                        .is_some_and(|pid| self.db.is_alive(pid))
            }));
        }
        for r in 0..self.roles.len() {
            if !self.leaders[r].is_empty() {
                out.push(led);
                continue;
            }
            let healthy = ready.iter().any(|&n| self.nodes[n].campaigning[r]);
            out.push(RoleStatus {
                led: false,
                healthy,
                blocked: healthy && self.blocked(r),
            });
        }
        self.ready_buf = ready;
    }

    /// Role `r`'s lock is held by a session of no healthy node that
    /// preemption cannot reach.
    fn blocked(&self, r: usize) -> bool {
        let preemptible = self.machine_cfg.preempt_zombies()
            && self.db.privilege() == TerminatePrivilege::Permitted;
        let key = &self.lock_keys[r];
        self.db.lock_holder(key).is_some_and(|(pid, _)| {
            // A session of no live incarnation (a zombie, a backend the
            // server has not dropped yet) or of an unhealthy node...
            let unhealthy = !self.by_pid.get(&pid).is_some_and(|&c| {
                let n = self.conns[c].node;
                self.nodes[n].conn == Some(c) && self.reachable(n)
            });
            // ...that preemption cannot reach: it is off or denied, or the
            // lease row names another session (the holder took the lock but
            // never claimed), and preemption only terminates the session
            // the row names.
            let reachable =
                preemptible && self.db.row(key).is_some_and(|row| row.session == Some(pid));
            unhealthy && !reachable
        })
    }

    /// Node `n` runs and talks to the database: up, not paused, not cut off,
    /// not shutting down.
    fn reachable(&self, n: usize) -> bool {
        let node = &self.nodes[n];
        node.up() && !node.paused() && node.cut.is_none() && !node.shutting_down
    }

    /// Brings `leaders` and `terms` up to date with the beliefs, and the
    /// timeline with them.
    fn sync_leaders(&mut self, now: SimTime) {
        for r in 0..self.roles.len() {
            let same = {
                let mut believers = self
                    .nodes
                    .iter()
                    .enumerate()
                    .filter_map(|(i, n)| n.belief[r].map(|(t, _)| (i, t)));
                let mut k = 0;
                let mut same = true;
                for (i, t) in &mut believers {
                    if self.leaders[r].get(k) != Some(&i) || self.terms[r].get(k) != Some(&t) {
                        same = false;
                        break;
                    }
                    k += 1;
                }
                same && k == self.leaders[r].len()
            };
            if same {
                continue;
            }
            let mut who = Vec::new();
            let mut terms = Vec::new();
            for (i, node) in self.nodes.iter().enumerate() {
                if let Some((term, _)) = node.belief[r] {
                    who.push(i);
                    terms.push(term);
                }
            }
            if who != self.leaders[r] {
                for k in 0..self.leaders[r].len() {
                    let i = self.leaders[r][k];
                    if !who.contains(&i) {
                        self.timeline.close(i, Tag::Leading(r), now);
                        if let Some(t) = self.nodes[i].terminated_while_leading[r].take() {
                            // DESIGN §6: a leader whose backend is terminated
                            // steps down within one validate interval (plus
                            // 100 ms for the round trip); late only when the
                            // network is faulty too.
                            let bound =
                                self.machine_cfg.validate_interval() + Duration::from_millis(100);
                            self.count(if now.saturating_since(t) <= bound {
                                "terminated_leader_stepped_down_in_time"
                            } else {
                                "terminated_leader_stepped_down_late"
                            });
                        }
                    }
                }
                for (k, &i) in who.iter().enumerate() {
                    if !self.leaders[r].contains(&i) {
                        let term = terms[k].map_or(0, |t| t.0);
                        self.timeline.open(i, Tag::Leading(r), term, now);
                    }
                }
                self.leaders[r] = who;
            }
            self.terms[r] = terms;
        }
    }
}
