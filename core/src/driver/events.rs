//! How the node task turns the machine's events into what handles see:
//! [`Leadership`], [`RoleStatus`], drain overruns, logs and metrics.

use std::time::SystemTime;

use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::driver::node::{Ctrl, NodeTask};
use crate::driver::status::{DrainOverrun, Leadership, RoleShared, RoleStatus, Unhealthy};
use crate::machine::Event;
use crate::types::Role;

impl NodeTask {
    /// Makes `shared` the campaign `role` publishes to. A campaign it
    /// replaces (one whose handles are all gone, or stopped) hands over its
    /// current state and is told it stopped.
    pub(super) fn attach(&mut self, role: &Role, shared: RoleShared) {
        if let Some(old) = self.attached.insert(role.clone(), shared.clone())
            && !old.same(&shared)
        {
            let current = old.status.borrow().clone();
            if current.leadership != Leadership::Stopped {
                shared.status.send_replace(current);
            }
            old.update(true, |s| s.stop());
        }
    }

    fn shared(&self, role: &Role) -> Option<&RoleShared> {
        self.attached.get(role)
    }

    /// The status of a role that does not lead.
    fn following(&self, role: &Role) -> RoleStatus {
        match &self.unhealthy {
            Some((_, reason)) => RoleStatus::Unhealthy {
                reason: reason.clone(),
            },
            None => RoleStatus::Following {
                leader: self.machine.observed_leader(role).cloned(),
            },
        }
    }

    /// Republishes the status of every role that does not lead.
    fn refresh_following(&self) {
        for (role, shared) in &self.attached {
            let next = self.following(role);
            shared.status.send_if_modified(|s| match s.health {
                RoleStatus::Following { .. } | RoleStatus::Unhealthy { .. } if s.health != next => {
                    s.health = next;
                    true
                }
                _ => false,
            });
        }
    }

    fn set_unhealthy(&mut self, cleared_by: Option<&'static str>, reason: Unhealthy) {
        self.unhealthy = Some((cleared_by, reason));
        self.refresh_following();
    }

    /// A backend call of kind `command` succeeded: clears what it proves
    /// fixed.
    pub(super) fn on_success(&mut self, command: &'static str) {
        let clears = match &self.unhealthy {
            // Closing the old session proves nothing about the new one.
            Some((None, _)) => command != "reset_session",
            Some((Some(failed), _)) => *failed == command,
            None => false,
        };
        if clears {
            info!(command, "backend call succeeded again; healthy");
            self.unhealthy = None;
            self.refresh_following();
        }
    }

    pub(super) fn on_event(&mut self, event: Event) {
        let ns = self.ctx.namespace.to_string();
        match event {
            Event::StartedLeading {
                role,
                term,
                deadline,
            } => {
                info!(role = %role, term = %term, "started leading");
                metrics::counter!("regent_elections_won_total", "namespace" => ns.clone(), "role" => role.to_string()).increment(1);
                metrics::gauge!("regent_is_leader", "namespace" => ns, "role" => role.to_string())
                    .set(1.0);
                let deadline = self.instant(deadline);
                let now = Instant::now();
                if let Some(shared) = self.shared(&role) {
                    shared.update(true, |s| {
                        s.leadership = Leadership::Leader {
                            token: term,
                            since: now,
                        };
                        s.deadline = Some(deadline);
                        s.health = RoleStatus::Leading {
                            term,
                            since: SystemTime::now(),
                            since_instant: now,
                        };
                    });
                }
            }
            Event::DeadlineExtended { role, deadline } => {
                let at = self.instant(deadline);
                if let Some(shared) = self.shared(&role) {
                    // Quietly: watchers care about leadership, not deadlines.
                    shared.update(false, |s| s.deadline = Some(at));
                }
            }
            Event::LeadershipAtRisk { role, deadline } => {
                let at = self.instant(deadline);
                let left = at.saturating_duration_since(crate::driver::clock::now());
                warn!(role = %role, remaining = ?left, "renewals failing; leadership at risk");
                if let Some(shared) = self.shared(&role) {
                    shared.status.send_if_modified(|s| match s.health {
                        RoleStatus::Leading {
                            term,
                            since,
                            since_instant,
                        } => {
                            s.health = RoleStatus::AtRisk {
                                term,
                                since,
                                since_instant,
                                deadline: at,
                            };
                            true
                        }
                        _ => false,
                    });
                }
            }
            Event::LeadershipRecovered { role } => {
                info!(role = %role, "renewal succeeded again");
                if let Some(shared) = self.shared(&role) {
                    shared.status.send_if_modified(|s| match s.health {
                        RoleStatus::AtRisk {
                            term,
                            since,
                            since_instant,
                            ..
                        } => {
                            s.health = RoleStatus::Leading {
                                term,
                                since,
                                since_instant,
                            };
                            true
                        }
                        _ => false,
                    });
                }
            }
            Event::StoppedLeading { role, term, reason } => {
                if reason.drains() {
                    info!(role = %role, term = %term, reason = %reason, "stopped leading");
                } else {
                    warn!(role = %role, term = %term, reason = %reason, "stopped leading");
                }
                metrics::counter!("regent_leadership_lost_total", "namespace" => ns.clone(), "role" => role.to_string(), "reason" => reason.as_str()).increment(1);
                metrics::gauge!("regent_is_leader", "namespace" => ns, "role" => role.to_string())
                    .set(0.0);
                let health = self.following(&role);
                if let Some(shared) = self.shared(&role) {
                    shared.update(true, |s| {
                        s.leadership = Leadership::Follower { leader: None };
                        s.deadline = None;
                        s.health = health;
                    });
                }
            }
            Event::DrainRequested { role } => self.spawn_drain(role),
            Event::LeaderObserved { role, leader } => {
                let health = self.following(&role);
                if let Some(shared) = self.shared(&role) {
                    let holder = leader.map(|l| l.holder);
                    shared.status.send_if_modified(|s| {
                        let mut changed = false;
                        if let Leadership::Follower { leader } = &mut s.leadership
                            && *leader != holder
                        {
                            *leader = holder;
                            changed = true;
                        }
                        if matches!(s.health, RoleStatus::Following { .. }) && s.health != health {
                            s.health = health;
                            changed = true;
                        }
                        changed
                    });
                }
            }
            Event::ZombiePreempted { role, holder } => {
                warn!(role = %role, holder = %holder, "terminated the session of a zombie holder whose lease had expired");
            }
            Event::PreemptNotPermitted { role } => warn!(
                role = %role,
                "zombie preemption is on but the backend cannot depose the holder (no privilege, \
                 or the engine has no such capability; the backend's log says which grant is \
                 missing) -- grant it or turn preemption off. Waiting for the lock instead"
            ),
            Event::SessionLost { reason } => {
                warn!(reason = %reason, "database session lost; every lock on it is gone");
                self.set_unhealthy(None, Unhealthy::SessionDown { detail: reason });
            }
            Event::CommandFailed {
                command,
                error,
                retryable,
            } => {
                if retryable {
                    debug!(command, error = %error, "backend call failed; the machine will retry");
                } else {
                    error!(command, error = %error, "backend call failed and will not succeed until fixed");
                    let reason = Unhealthy::Misconfigured {
                        command,
                        detail: error,
                    };
                    // "driver" (a result of the wrong kind) names no call
                    // whose success would show it fixed.
                    let cleared_by = (command != "driver").then_some(command);
                    self.set_unhealthy(cleared_by, reason);
                }
            }
            Event::RoleStopped { role } => {
                if let Some(shared) = self.shared(&role) {
                    shared.update(true, |s| s.stop());
                }
            }
        }
    }

    /// Answers [`Event::DrainRequested`] once no leader-only work of the
    /// role runs.
    fn spawn_drain(&mut self, role: Role) {
        let Some(shared) = self.shared(&role).cloned() else {
            if let Some(tx) = self.weak.upgrade() {
                let _ = tx.send(Ctrl::Drained(role));
            }
            return;
        };
        self.draining.insert(role.clone(), Instant::now());
        let weak = self.weak.clone();
        tokio::spawn(async move {
            let mut work = shared.work.subscribe();
            let _ = work.wait_for(|n| *n == 0).await;
            if let Some(tx) = weak.upgrade() {
                let _ = tx.send(Ctrl::Drained(role));
            }
        });
    }

    /// Reports every role whose drain ended (by the drain bound or the
    /// deadline) with leader-only work still running.
    pub(super) fn check_drains(&mut self) {
        let machine = &self.machine;
        let now = self.now();
        let ended: Vec<(Role, Instant)> = self
            .draining
            .iter()
            .filter(|(role, _)| !machine.is_draining(role, now))
            .map(|(role, since)| (role.clone(), *since))
            .collect();
        for (role, since) in ended {
            self.draining.remove(&role);
            let Some(shared) = self.shared(&role) else {
                continue;
            };
            let still_running = *shared.work.borrow();
            if still_running == 0 {
                continue;
            }
            let waited = Instant::now().saturating_duration_since(since);
            warn!(
                role = %role,
                waited = ?waited,
                still_running,
                "leader-only work outlived the drain bound; releasing the lease anyway, so \
                 another node may lead while it runs (raise drain_timeout or make the work \
                 stop sooner on cancellation)"
            );
            metrics::counter!("regent_drain_timeouts_total", "namespace" => self.ctx.namespace.to_string(), "role" => role.to_string()).increment(1);
            let overrun = DrainOverrun {
                role,
                waited,
                still_running,
            };
            shared.update(false, |s| s.overrun = Some(overrun));
        }
    }
}
