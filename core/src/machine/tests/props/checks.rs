//! The invariants checked after every input and every step: (a) to (h)
//! of the [module docs](super).

use super::db::EPOCH_US;
use super::world::{Sent, World};
use crate::machine::{Command, Event, RoleState, StepDownReason};

impl World {
    // ----- the node side ----------------------------------------------

    /// Collects the outputs of node `j` after an input and checks them.
    pub(super) fn settle(&mut self, j: usize) {
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

    /// Checks event `ev` of node `j` against what the model knows.
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
    pub(super) fn check_all(&self) {
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
}
