//! Scheduling: time passing, overdue commands, the session work that is
//! due (renew, validate, try, ping, reset), and the next wake-up.

use std::time::Duration;

use crate::backend::{BackendError, HeldLease};
use crate::machine::role::{Intent, LockHold, ReleasePhase, RoleEntry, RoleState};
use crate::machine::{Command, CommandId, InFlight, Machine, Pending, StepDownReason};
use crate::types::{LocalInstant, Role};

/// Which batch kinds of command are in flight, from one pass over them.
#[derive(Default)]
struct BatchInFlight {
    reset: bool,
    try_lock: bool,
    renew: bool,
    validate: bool,
    ping: bool,
}

impl RoleEntry {
    /// Whether `Machine::advance_role` has anything to do for this role
    /// at `now` (its match arms, exactly).
    fn due(&self, now: LocalInstant) -> bool {
        let expired = self.renewable() && self.deadline.is_some_and(|d| now >= d);
        match self.state {
            RoleState::Leader { .. } | RoleState::Suspect { .. } | RoleState::Elect { .. }
                if expired =>
            {
                true
            }
            RoleState::Elect { lead_at } => now >= lead_at,
            RoleState::Releasing {
                phase: ReleasePhase::Draining { until },
            } => now >= until || expired,
            _ => false,
        }
    }
}

impl Machine {
    /// Moves the clock to `now` (never back), times out overdue commands,
    /// and runs the deadlines of every role.
    pub(super) fn advance(&mut self, now: LocalInstant) {
        if now > self.now {
            self.now = now;
        }
        let now = self.now;
        // Commands whose result is overdue count as timed out.
        let overdue: Vec<CommandId> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            if let Some(flight) = self.in_flight.remove(&id) {
                let timeout = self.config.attempt_timeout();
                self.on_result(flight, Err(BackendError::Timeout(timeout)));
            }
        }
        // Most inputs find nothing due. `advance_role` leaves a role with
        // nothing due untouched, so when no role is due the loop below is a
        // no-op: skip it, and the clone of every role's name it needs.
        if !self.roles.values().any(|e| e.due(now)) {
            return;
        }
        let roles: Vec<Role> = self.roles.keys().cloned().collect();
        for role in roles {
            self.advance_role(&role, now);
        }
    }

    /// Runs what is due for `role` at `now`: a lapsed deadline, a lead
    /// instant reached, or a drain that has run out.
    pub(super) fn advance_role(&mut self, role: &Role, now: LocalInstant) {
        let Some(e) = self.roles.get_mut(role) else {
            return;
        };
        let expired = e.renewable() && e.deadline.is_some_and(|d| now >= d);
        match e.state {
            RoleState::Leader { .. } | RoleState::Suspect { .. } if expired => {
                self.step_down(role, StepDownReason::DeadlineExpired);
                self.begin_release(role, false);
            }
            RoleState::Elect { .. } if expired => self.begin_release(role, false),
            RoleState::Elect { lead_at } if now >= lead_at => self.become_leader(role),
            RoleState::Releasing {
                phase: ReleasePhase::Draining { until },
            } if now >= until || expired => {
                e.state = RoleState::Releasing {
                    phase: ReleasePhase::Unlocking,
                };
                self.issue_release(role);
            }
            _ => {}
        }
    }

    /// The earliest instant anything is due; see [`Machine::poll_timeout`].
    pub(super) fn next_wake(&self) -> Option<LocalInstant> {
        let mut wake: Option<LocalInstant> = None;
        let mut at = |t: LocalInstant| {
            wake = Some(wake.map_or(t, |w| w.min(t)));
        };
        for f in self.in_flight.values() {
            at(f.expires_at);
        }
        let batch = self.batch_in_flight();
        let try_in_flight = batch.try_lock;
        // While the session is being reset, `drive` sends nothing: waking
        // for renewals, validations, tries or pings then would only spin.
        let resetting = self.reset_wanted || batch.reset;
        let mut any_renewable = false;
        let mut any_lock = false;
        let mut any_active = false;
        for e in self.roles.values() {
            any_renewable |= e.renewable();
            any_lock |= e.lock != LockHold::NotHeld;
            any_active |= e.state != RoleState::Stopped;
            match e.state {
                RoleState::Follower
                    if !try_in_flight
                        && !resetting
                        && e.intent == Intent::Campaign
                        && e.lock == LockHold::NotHeld
                        && !self.lock_command_in_flight(&e.role) =>
                {
                    at(e.next_try)
                }
                RoleState::Elect { lead_at } => at(lead_at),
                RoleState::Releasing {
                    phase: ReleasePhase::Draining { until },
                } => at(until),
                _ => {}
            }
            if e.renewable()
                && let Some(d) = e.deadline
            {
                at(d);
            }
            // The drain bound of a lost lease to end; once it has passed,
            // whatever still blocks the expiry (a validation, a lock
            // command) wakes the machine by its own result.
            if let Some(x) = e.own_expiry
                && !x.drained
                && x.not_before > self.now
            {
                at(x.not_before);
            }
        }
        if resetting {
            return wake;
        }
        if any_renewable && !batch.renew {
            at(self.next_renew);
        }
        if any_lock && !batch.validate {
            at(self.next_validate);
        }
        if any_active && !batch.ping {
            at(self.last_sent + self.config.keepalive_interval());
        }
        wake
    }

    /// Issues whatever session work is due.
    pub(super) fn drive(&mut self) {
        let now = self.now;
        if self.reset_wanted {
            let lock_busy = self.kind_in_flight(|p| {
                matches!(
                    p,
                    Pending::TryLock(_)
                        | Pending::Claim(..)
                        | Pending::Release(..)
                        | Pending::ExpireOwn(..)
                        | Pending::Reset
                )
            });
            if !lock_busy {
                self.reset_wanted = false;
                let id = self.next_id();
                self.send(Command::ResetSession { id }, Pending::Reset);
            }
            return;
        }
        // Each flag is read once below, and every command sent before that
        // read is of another kind: the flags stay exact.
        let batch = self.batch_in_flight();
        if batch.reset {
            return;
        }
        // Renew every held lease in one statement. (The list is built only
        // when a renewal is due: building it costs a clone per role.)
        let renew_due = now >= self.next_renew && !batch.renew;
        let leases: Vec<HeldLease> = if renew_due {
            self.roles
                .values()
                .filter(|e| e.renewable())
                .filter_map(|e| {
                    e.term.map(|term| HeldLease {
                        role: e.role.clone(),
                        term,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        if !leases.is_empty() {
            let id = self.next_id();
            self.send(
                Command::Renew {
                    id,
                    leases: leases.clone(),
                },
                Pending::Renew(leases),
            );
        }
        // Validate held (or unknown) locks.
        let validate_due = now >= self.next_validate && !batch.validate;
        let to_validate: Vec<(Role, u64)> = if validate_due {
            self.roles
                .values()
                .filter(|e| e.lock != LockHold::NotHeld)
                .map(|e| (e.role.clone(), e.lock_epoch))
                .collect()
        } else {
            Vec::new()
        };
        if !to_validate.is_empty() {
            let id = self.next_id();
            let roles = to_validate.iter().map(|(r, _)| r.clone()).collect();
            self.send(
                Command::Validate { id, roles },
                Pending::Validate(to_validate),
            );
        }
        // A release whose command was lost track of (it was in flight when
        // the lock's epoch changed) is sent again once nothing else about
        // that lock is in flight.
        let stuck: Vec<Role> = self
            .roles
            .values()
            .filter(|e| {
                e.lock == LockHold::Held
                    && e.state
                        == RoleState::Releasing {
                            phase: ReleasePhase::Unlocking,
                        }
                    && !self.lock_command_in_flight(&e.role)
            })
            .map(|e| e.role.clone())
            .collect();
        for role in stuck {
            self.issue_release(&role);
        }
        // End the leases this node lost with its session, once their work
        // has drained and the lock is known not held (the session answers
        // again). Before the try-lock batch, so it runs first on the
        // session; never beside another command about the same lock.
        if !batch.try_lock {
            let own: Vec<(Role, crate::types::Term)> = self
                .roles
                .values()
                .filter_map(|e| {
                    let x = e.own_expiry?;
                    (x.ready(now)
                        && e.state == RoleState::Follower
                        && e.lock == LockHold::NotHeld
                        && !self.lock_command_in_flight(&e.role))
                    .then(|| (e.role.clone(), x.term))
                })
                .collect();
            for (role, term) in own {
                let id = self.next_id();
                self.send(
                    Command::Release {
                        id,
                        role: role.clone(),
                        term: Some(term),
                    },
                    Pending::ExpireOwn(role),
                );
            }
        }
        // Try every follower that is due, in one batch. Never while an
        // earlier command about the same lock may still run: a late release
        // would unlock the new hold.
        if !batch.try_lock {
            let due: Vec<Role> = self
                .roles
                .values()
                .filter(|e| {
                    e.state == RoleState::Follower
                        && e.intent == Intent::Campaign
                        && e.lock == LockHold::NotHeld
                        && e.next_try <= now
                        && !self.lock_command_in_flight(&e.role)
                })
                .map(|e| e.role.clone())
                .collect();
            if !due.is_empty() {
                let mut tagged = Vec::with_capacity(due.len());
                for role in &due {
                    if let Some(e) = self.roles.get_mut(role) {
                        e.state = RoleState::Candidate;
                        tagged.push((role.clone(), e.lock_epoch));
                    }
                }
                let id = self.next_id();
                self.send(
                    Command::TryLock { id, roles: due },
                    Pending::TryLock(tagged),
                );
            }
        }
        // Keep an idle session alive.
        let active = self.roles.values().any(|e| e.state != RoleState::Stopped);
        if active && now >= self.last_sent + self.config.keepalive_interval() && !batch.ping {
            let id = self.next_id();
            self.send(Command::Ping { id }, Pending::Ping);
        }
    }

    /// Which batch kinds are in flight.
    fn batch_in_flight(&self) -> BatchInFlight {
        let mut b = BatchInFlight::default();
        for f in self.in_flight.values() {
            match f.pending {
                Pending::Reset => b.reset = true,
                Pending::TryLock(_) => b.try_lock = true,
                Pending::Renew(_) => b.renew = true,
                Pending::Validate(_) => b.validate = true,
                Pending::Ping => b.ping = true,
                _ => {}
            }
        }
        b
    }

    /// Whether a command whose pending kind matches `f` is in flight.
    pub(super) fn kind_in_flight(&self, f: impl Fn(&Pending) -> bool) -> bool {
        self.in_flight.values().any(|x| f(&x.pending))
    }

    /// Whether a claim or release of `role` is in flight, current or not.
    pub(super) fn lock_command_in_flight(&self, role: &Role) -> bool {
        self.kind_in_flight(|p| {
            matches!(p, Pending::Claim(r, _) | Pending::Release(r, _, _) | Pending::ExpireOwn(r) if r == role)
        })
    }

    /// A fresh command id.
    pub(super) fn next_id(&mut self) -> CommandId {
        self.next_id += 1;
        CommandId(self.next_id)
    }

    /// Queues `command` and tracks it as in flight until its attempt
    /// timeout.
    pub(super) fn send(&mut self, command: Command, pending: Pending) {
        let now = self.now;
        if !matches!(pending, Pending::Notify) {
            self.last_sent = now;
        }
        self.in_flight.insert(
            command.id(),
            InFlight {
                pending,
                name: command.name(),
                sent_at: now,
                expires_at: now + self.config.attempt_timeout(),
            },
        );
        self.commands.push_back(command);
    }

    /// The retry interval plus a random jitter of up to `retry_jitter`.
    /// When a follower that must wait a retry interval tries next. Every
    /// follower of the node shares one round, so however many roles it
    /// follows they go out in one `TryLock` batch per interval (the database
    /// cost does not grow with the role count). A role joins the round
    /// already scheduled unless that round is less than a quarter interval
    /// away; then it starts the next round, which the others join when
    /// their results come back.
    pub(super) fn next_round(&mut self) -> LocalInstant {
        let now = self.now;
        let quarter = self.config.retry_interval() / 4;
        if let Some(round) = self.follower_round
            && round >= now + quarter
        {
            return round;
        }
        let round = now + self.jittered_retry();
        self.follower_round = Some(round);
        round
    }

    pub(super) fn jittered_retry(&mut self) -> Duration {
        let jitter = self.config.retry_jitter().as_nanos() as u64;
        let extra = if jitter == 0 {
            0
        } else {
            self.rng.next_u64() % (jitter + 1)
        };
        self.config.retry_interval() + Duration::from_nanos(extra)
    }
}
