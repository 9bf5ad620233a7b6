//! Per-role transitions: leading, stepping down, releasing, settling,
//! and losing the session.

use crate::machine::role::{Intent, LockHold, OwnExpiry, ReleasePhase, RoleState};
use crate::machine::{Command, Event, Machine, Pending, StepDownReason};
use crate::types::Role;

impl Machine {
    /// Queues `event` for the application.
    pub(super) fn emit(&mut self, event: Event) {
        self.events.push_back(event);
    }

    /// Gives the lock of `role` a new epoch: commands tagged with an older
    /// one no longer count.
    pub(super) fn bump_epoch(&mut self, role: &Role) {
        self.lock_epoch += 1;
        let epoch = self.lock_epoch;
        if let Some(e) = self.roles.get_mut(role) {
            e.lock_epoch = epoch;
        }
    }

    /// An elect whose lead instant has come starts leading, if its lease
    /// still runs.
    pub(super) fn become_leader(&mut self, role: &Role) {
        let now = self.now;
        let Some(e) = self.roles.get_mut(role) else {
            return;
        };
        let (Some(term), Some(deadline)) = (e.term, e.deadline) else {
            return;
        };
        if now >= deadline {
            return;
        }
        e.state = RoleState::Leader { since: now };
        e.led = Some(term);
        e.observed = None;
        self.emit(Event::StartedLeading {
            role: role.clone(),
            term,
            deadline,
        });
    }

    /// Tells the application this node no longer leads `role`, if it had
    /// said it did.
    pub(super) fn step_down(&mut self, role: &Role, reason: StepDownReason) {
        if let Some(e) = self.roles.get_mut(role)
            && let Some(term) = e.led.take()
        {
            self.emit(Event::StoppedLeading {
                role: role.clone(),
                term,
                reason,
            });
        }
    }

    /// Voluntary step-down (resign or stop).
    pub(super) fn give_up(&mut self, role: &Role, reason: StepDownReason) {
        let now = self.now;
        let hold_off = self.config.retry_interval() * 2;
        let Some(e) = self.roles.get_mut(role) else {
            return;
        };
        if reason == StepDownReason::Resigned {
            e.hold_off_until = now + hold_off;
            e.next_try = e.next_try.max(e.hold_off_until);
        }
        match e.state {
            RoleState::Leader { .. } | RoleState::Suspect { .. } => {
                self.step_down(role, reason);
                self.begin_release(role, true);
            }
            RoleState::Elect { .. } => self.begin_release(role, false),
            RoleState::Follower if e.intent == Intent::Stop => self.finish(role),
            // A candidate settles when its result arrives; a follower only
            // holds off; a releasing role goes on releasing.
            _ => {}
        }
    }

    /// Starts giving up the lock of `role`.
    pub(super) fn begin_release(&mut self, role: &Role, drain: bool) {
        let until = self.now + self.config.drain_timeout();
        let Some(e) = self.roles.get_mut(role) else {
            return;
        };
        if drain && e.lock == LockHold::Held {
            e.state = RoleState::Releasing {
                phase: ReleasePhase::Draining { until },
            };
            self.emit(Event::DrainRequested { role: role.clone() });
        } else {
            e.state = RoleState::Releasing {
                phase: ReleasePhase::Unlocking,
            };
            self.issue_release(role);
        }
    }

    /// Sends `Release` if the lock is held and none is in flight; finishes at
    /// once if nothing is held; waits for validation if unknown.
    pub(super) fn issue_release(&mut self, role: &Role) {
        let Some(e) = self.roles.get(role) else {
            return;
        };
        // Never while a claim or release of the same lock may still run on
        // the session; `drive` sends it once that command is settled.
        let in_flight = self.lock_command_in_flight(role);
        match e.lock {
            LockHold::Held if !in_flight => {
                // Expire the lease only once the predecessor's lease has
                // passed: before that, an expired row would let the next
                // holder lead at once, while the predecessor may still lead.
                let term = e.term.filter(|_| e.lead_at.is_some_and(|t| self.now >= t));
                // Announce only the release of a term this node claimed: a
                // lock held for an instant (a claim that was busy, or lost)
                // was never taken over from anyone, and a resigned node's
                // hold-off reads a second release as "the node that took
                // over let go" (see `handle_release_notified`).
                let claimed = e.term.is_some();
                let epoch = e.lock_epoch;
                let id = self.next_id();
                self.send(
                    Command::Release {
                        id,
                        role: role.clone(),
                        term,
                    },
                    Pending::Release(role.clone(), epoch, claimed),
                );
            }
            LockHold::NotHeld => self.finish(role),
            _ => {}
        }
    }

    /// The lock of `role` is free: settle into `Follower` or `Stopped`.
    pub(super) fn finish(&mut self, role: &Role) {
        let round = self.next_round();
        let Some(e) = self.roles.get_mut(role) else {
            return;
        };
        e.term = None;
        e.deadline = None;
        e.lead_at = None;
        e.led = None;
        if e.intent == Intent::Stop {
            e.intent = Intent::Stop;
            if e.state != RoleState::Stopped {
                e.state = RoleState::Stopped;
                self.emit(Event::RoleStopped { role: role.clone() });
            }
        } else {
            e.state = RoleState::Follower;
            e.next_try = round.max(e.hold_off_until);
        }
    }

    /// Every lock on the session may be gone.
    pub(super) fn session_lost(&mut self, reason: &str) {
        self.emit(Event::SessionLost {
            reason: reason.to_owned(),
        });
        let held: Vec<Role> = self
            .roles
            .values()
            .filter(|e| e.lock == LockHold::Held)
            .map(|e| e.role.clone())
            .collect();
        for role in held {
            self.mark_unknown(&role, StepDownReason::LockLost);
        }
    }

    /// The lock of `role` is in doubt: step down, stop renewing, and let the
    /// next validation (due now) settle it.
    pub(super) fn mark_unknown(&mut self, role: &Role, reason: StepDownReason) {
        let led = self.roles.get(role).and_then(|e| e.led);
        self.step_down(role, reason);
        let now = self.now;
        if let Some(term) = led {
            // This node led `term` and no longer does: once its work has
            // drained it ends that lease itself (holder and term must
            // match, so a lease someone else took meanwhile is untouched),
            // rather than make a standby wait out a lease nobody uses.
            let not_before = now + self.config.drain_timeout();
            if let Some(e) = self.roles.get_mut(role) {
                e.own_expiry = Some(OwnExpiry {
                    term,
                    not_before,
                    drained: false,
                });
            }
            self.emit(Event::DrainRequested { role: role.clone() });
        }
        let Some(e) = self.roles.get_mut(role) else {
            return;
        };
        e.lock = LockHold::Unknown;
        e.deadline = None;
        if !matches!(e.state, RoleState::Stopped) {
            e.state = RoleState::Releasing {
                phase: ReleasePhase::Unlocking,
            };
        }
        self.bump_epoch(role);
        self.next_validate = now;
    }
}
