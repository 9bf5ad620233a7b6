//! How the machine reacts to each command's result.

use crate::backend::{
    BackendError, ClaimOutcome, HeldLease, PreemptOutcome, RenewOutcome, TryLockOutcome,
};
use crate::config::TakeoverPolicy;
use crate::machine::command::{
    CommandOutput, CommandResult, Event, ObservedLeader, StepDownReason,
};
use crate::machine::role::{Echo, Intent, LockHold, ReleasePhase, RoleState};
use crate::machine::{Command, InFlight, Machine, Pending};
use crate::types::{LeaseRecord, LocalInstant, Role, Term};

impl Machine {
    pub(super) fn on_result(&mut self, flight: InFlight, result: CommandResult) {
        let sent_at = flight.sent_at;
        if let Err(error) = &result {
            self.emit(Event::CommandFailed {
                command: flight.name,
                error: error.to_string(),
                retryable: error.is_retryable(),
            });
        }
        match (flight.pending, result) {
            (Pending::TryLock(roles), Ok(CommandOutput::TryLock(out))) => {
                self.on_try_lock(&roles, out)
            }
            (Pending::TryLock(roles), Err(e)) => {
                for (role, epoch) in roles {
                    if self.current(&role, epoch) && self.is_state(&role, RoleState::Candidate) {
                        // Some locks may have been granted: find out.
                        self.mark_unknown(&role, StepDownReason::LockLost);
                    }
                }
                self.fail_session_if_lost(&e);
            }
            (Pending::Claim(role, epoch), Ok(CommandOutput::Claim(out))) => {
                if self.current(&role, epoch) {
                    self.on_claim(&role, sent_at, out);
                }
            }
            (Pending::Claim(role, epoch), Err(e)) => {
                if e.is_session_lost() {
                    // The lock went with the session (validation confirms):
                    // nothing to release.
                    self.session_lost(&e.to_string());
                } else if self.current(&role, epoch) {
                    // The lock is ours but the claim is in doubt: let go.
                    if let Some(en) = self.roles.get_mut(&role) {
                        en.term = None;
                    }
                    self.begin_release(&role, false);
                }
            }
            (Pending::Renew(leases), Ok(CommandOutput::Renew(out))) => {
                self.on_renew(&leases, sent_at, out)
            }
            (Pending::Renew(leases), Err(e)) => {
                self.next_renew = self.now + self.config.renew_interval() / 4;
                if e.is_session_lost() {
                    self.session_lost(&e.to_string());
                } else {
                    self.renew_failed(&leases);
                }
            }
            (Pending::Validate(roles), Ok(CommandOutput::Validate(held))) => {
                self.on_validate(&roles, &held)
            }
            (Pending::Validate(roles), Err(e)) => {
                if e.is_session_lost() {
                    self.session_lost(&e.to_string());
                } else if roles.iter().any(|(r, _)| {
                    self.roles
                        .get(r)
                        .is_some_and(|x| x.lock == LockHold::Unknown)
                }) {
                    // A lock in doubt (a try-lock or release whose outcome
                    // is unknown) and a validation that failed: this node
                    // cannot learn whether it holds the lock, and a lock it
                    // holds unknowingly would keep every other node out
                    // forever. Closing the session drops every lock for
                    // certain; the leases still held are re-taken after.
                    self.want_reset();
                }
                self.next_validate = self.now + self.config.validate_interval();
            }
            (Pending::Ping, Ok(_)) => {}
            (Pending::Ping, Err(e)) => self.fail_session_if_lost(&e),
            (Pending::Preempt(role, lease), Ok(CommandOutput::Preempt(out))) => {
                self.on_preempt(&role, lease, out)
            }
            (
                Pending::Release(role, epoch, claimed),
                Ok(out @ (CommandOutput::Released | CommandOutput::ReleasedAndNotified)),
            ) => {
                if self.current(&role, epoch) {
                    let now = self.now;
                    if let Some(en) = self.roles.get_mut(&role) {
                        // This release ended whatever lease was ours.
                        en.own_expiry = None;
                        en.lock = LockHold::NotHeld;
                        en.echo = if en.held_off(now) {
                            Echo::Expected
                        } else {
                            Echo::None
                        };
                    }
                    self.bump_epoch(&role);
                    // Only now is the lock free: tell the standbys (unless
                    // the engine already did, after freeing it, or this
                    // node never claimed a term with the lock).
                    if out == CommandOutput::Released && claimed {
                        let id = self.next_id();
                        self.send(
                            Command::Notify {
                                id,
                                role: role.clone(),
                            },
                            Pending::Notify,
                        );
                    }
                    self.finish(&role);
                }
            }
            (
                Pending::ExpireOwn(role),
                Ok(out @ (CommandOutput::Released | CommandOutput::ReleasedAndNotified)),
            ) => {
                if let Some(e) = self.roles.get_mut(&role) {
                    e.own_expiry = None;
                }
                // Standbys waiting for that lease can go now.
                if out == CommandOutput::Released {
                    let id = self.next_id();
                    self.send(Command::Notify { id, role }, Pending::Notify);
                }
            }
            (Pending::ExpireOwn(role), Err(e)) => {
                if e.is_session_lost() {
                    // Tried again once the session answers.
                    self.session_lost(&e.to_string());
                } else if let Some(en) = self.roles.get_mut(&role) {
                    // The lease then runs out by itself, as before.
                    en.own_expiry = None;
                }
            }
            (Pending::Release(role, epoch, _), Err(e)) => {
                if self.current(&role, epoch) {
                    self.mark_unknown(&role, StepDownReason::LockLost);
                }
                self.fail_session_if_lost(&e);
            }
            (Pending::Reset, Ok(CommandOutput::Reset)) => self.on_reset(),
            // Not known to be closed (the reset failed or timed out): the
            // session may still hold locks. Try again; nothing else goes out
            // meanwhile.
            (Pending::Reset, _) => self.reset_wanted = true,
            // Notifications and preemptions that fail change nothing; the
            // standbys retry on their own.
            (Pending::Notify | Pending::Preempt(..), _) => {}
            (pending, Ok(output)) => {
                self.emit(Event::CommandFailed {
                    command: "driver",
                    error: format!("driver returned {output:?} for {pending:?}"),
                    retryable: false,
                });
            }
        }
    }

    fn current(&self, role: &Role, epoch: u64) -> bool {
        self.roles.get(role).is_some_and(|e| e.lock_epoch == epoch)
    }

    fn is_state(&self, role: &Role, state: RoleState) -> bool {
        self.roles.get(role).is_some_and(|e| e.state == state)
    }

    fn fail_session_if_lost(&mut self, e: &BackendError) {
        if e.is_session_lost() {
            self.session_lost(&e.to_string());
        }
    }

    fn on_try_lock(&mut self, roles: &[(Role, u64)], out: TryLockOutcome) {
        let mut round = None;
        let now = self.now;
        let db_now = out.db_now;
        let mut attempts = out.attempts;
        for (role, epoch) in roles {
            if !(self.current(role, *epoch) && self.is_state(role, RoleState::Candidate)) {
                continue;
            }
            let attempt = attempts.iter_mut().find(|a| &a.role == role);
            let granted = attempt.as_ref().is_some_and(|a| a.granted);
            // Each role of a batch is distinct (`drive` lists each due role
            // once), so each attempt's row is read here at most once: move
            // it out rather than clone it.
            let lease = attempt.and_then(|a| a.lease.take());
            if granted {
                if let Some(e) = self.roles.get_mut(role) {
                    e.lock = LockHold::Held;
                }
                self.bump_epoch(role);
                let start = self
                    .roles
                    .values()
                    .filter(|e| e.lock == LockHold::Held)
                    .count()
                    == 1;
                if start {
                    self.next_validate = now + self.config.validate_interval();
                }
                let wants = self.roles.get(role).map(|e| (e.intent, e.held_off(now)));
                if wants == Some((Intent::Campaign, false)) {
                    let epoch = self.roles.get(role).map_or(0, |e| e.lock_epoch);
                    let id = self.next_id();
                    self.send(
                        Command::Claim {
                            id,
                            role: role.clone(),
                        },
                        Pending::Claim(role.clone(), epoch),
                    );
                } else {
                    // Stopped or resigned while the attempt was in flight.
                    self.begin_release(role, false);
                }
                continue;
            }
            let observed =
                lease
                    .as_ref()
                    .filter(|l| !l.expired_at(db_now))
                    .map(|l| ObservedLeader {
                        holder: l.holder.clone(),
                        term: l.term,
                    });
            let next = match round {
                Some(t) => t,
                None => *round.insert(self.next_round()),
            };
            if let Some(e) = self.roles.get_mut(role) {
                e.next_try = next.max(e.hold_off_until);
                if e.intent == Intent::Stop {
                    e.state = RoleState::Follower;
                    self.finish(role);
                    continue;
                }
                e.state = RoleState::Follower;
                if e.observed != observed {
                    e.observed = observed.clone();
                    self.emit(Event::LeaderObserved {
                        role: role.clone(),
                        leader: observed,
                    });
                }
            }
            // A live session holds the lock but its lease ran out long ago.
            let grace = self.config.zombie_grace();
            if let Some(lease) = lease
                && self.config.preempt_zombies()
                && !self.preempt_refused
                && db_now > lease.lease_until + grace
                && !self.kind_in_flight(|p| matches!(p, Pending::Preempt(..)))
                && self
                    .roles
                    .get(role)
                    .is_none_or(|e| e.futile_preempt != Some(preempt_key(&lease)))
            {
                let id = self.next_id();
                self.send(
                    Command::Preempt {
                        id,
                        lease: lease.clone(),
                        grace,
                    },
                    Pending::Preempt(role.clone(), lease),
                );
            }
        }
    }

    fn on_claim(&mut self, role: &Role, sent_at: LocalInstant, out: ClaimOutcome) {
        let now = self.now;
        let window = self.config.leader_window();
        let wait = match (self.config.takeover_policy(), &out.previous) {
            (TakeoverPolicy::WaitForLease, Some(prev)) if !prev.expired_at(out.db_now) => self
                .config
                .local_wait_for_db(prev.lease_until.saturating_since(out.db_now)),
            _ => std::time::Duration::ZERO,
        };
        let renewing = self
            .roles
            .values()
            .any(|e| e.renewable() && &e.role != role);
        let Some(e) = self.roles.get_mut(role) else {
            return;
        };
        let lead_at = now + wait;
        e.term = Some(out.term);
        // A new term of our own supersedes the lost one.
        e.own_expiry = None;
        // The deadline counts from when the claim was *sent*, not from when
        // its answer came back: the database started the lease at some
        // instant after `sent_at`, so `sent_at + L·(1-ρ) - m` is before the
        // lease ends in database time however long the round trip took
        // (DESIGN §2 rule 2). Counting from the reply would let a slow reply
        // push this node's belief past the real end of its lease.
        e.deadline = Some(sent_at + window);
        e.lead_at = Some(lead_at);
        // Stopped or resigned while the claim was in flight: never lead
        // with it; give the lock back (expiring the lease only if no
        // predecessor's lease is still running).
        if e.intent == Intent::Stop || e.held_off(now) {
            self.begin_release(role, false);
            return;
        }
        e.state = RoleState::Elect { lead_at };
        let first_renew = sent_at + self.config.renew_interval();
        if !renewing || first_renew < self.next_renew {
            self.next_renew = first_renew;
        }
        if lead_at <= now {
            self.become_leader(role);
        }
    }

    fn on_renew(&mut self, leases: &[HeldLease], sent_at: LocalInstant, out: RenewOutcome) {
        self.next_renew = sent_at + self.config.renew_interval();
        // From `sent_at`, for the same reason as a claim's deadline.
        let deadline = sent_at + self.config.leader_window();
        for lease in leases {
            let Some(e) = self.roles.get_mut(&lease.role) else {
                continue;
            };
            if e.term != Some(lease.term) || !e.renewable() {
                continue;
            }
            if out.renewed.contains(&lease.role) {
                if e.deadline.is_none_or(|d| d < deadline) {
                    e.deadline = Some(deadline);
                }
                let leading = e.leading();
                if let RoleState::Suspect { since } = e.state {
                    e.state = RoleState::Leader { since };
                    self.emit(Event::LeadershipRecovered {
                        role: lease.role.clone(),
                    });
                }
                if leading {
                    self.emit(Event::DeadlineExtended {
                        role: lease.role.clone(),
                        deadline,
                    });
                }
            } else {
                // The row names another holder or term: someone took over.
                self.step_down(&lease.role, StepDownReason::LeaseLost);
                if let Some(e) = self.roles.get_mut(&lease.role) {
                    e.term = None;
                    e.deadline = None;
                }
                self.begin_release(&lease.role, false);
            }
        }
    }

    fn renew_failed(&mut self, leases: &[HeldLease]) {
        for lease in leases {
            let Some(e) = self.roles.get_mut(&lease.role) else {
                continue;
            };
            if e.term != Some(lease.term) {
                continue;
            }
            // A leader past its deadline (the machine was woken late) steps
            // down right after this; it is not "at risk" any more.
            if let (RoleState::Leader { since }, Some(deadline)) = (e.state, e.deadline)
                && self.now < deadline
            {
                e.state = RoleState::Suspect { since };
                self.emit(Event::LeadershipAtRisk {
                    role: lease.role.clone(),
                    deadline,
                });
            }
        }
    }

    fn on_validate(&mut self, roles: &[(Role, u64)], held: &[Role]) {
        let now = self.now;
        for (role, epoch) in roles {
            if !self.current(role, *epoch) {
                continue;
            }
            let still = held.contains(role);
            let Some(e) = self.roles.get_mut(role) else {
                continue;
            };
            match (e.lock, still) {
                (LockHold::Held, true) => {}
                (LockHold::Held, false) => {
                    self.step_down(role, StepDownReason::LockLost);
                    if let Some(e) = self.roles.get_mut(role) {
                        e.lock = LockHold::NotHeld;
                        e.term = None;
                        e.deadline = None;
                    }
                    self.bump_epoch(role);
                    self.finish(role);
                }
                (LockHold::Unknown, true) => {
                    // Held after all, but nobody leads with it: give it back.
                    e.lock = LockHold::Held;
                    if e.state != RoleState::Stopped {
                        e.state = RoleState::Releasing {
                            phase: ReleasePhase::Unlocking,
                        };
                    }
                    self.bump_epoch(role);
                    self.issue_release(role);
                }
                (LockHold::Unknown, false) => {
                    e.lock = LockHold::NotHeld;
                    self.bump_epoch(role);
                    self.finish(role);
                }
                (LockHold::NotHeld, _) => {}
            }
        }
        let unknown = self.roles.values().any(|e| e.lock == LockHold::Unknown);
        self.next_validate = if unknown {
            now
        } else {
            now + self.config.validate_interval()
        };
    }

    fn on_preempt(&mut self, role: &Role, lease: LeaseRecord, out: PreemptOutcome) {
        let holder = lease.holder.clone();
        if let Some(e) = self.roles.get_mut(role) {
            e.futile_preempt = (out == PreemptOutcome::NotZombie).then(|| preempt_key(&lease));
        }
        match out {
            PreemptOutcome::Terminated => {
                // The zombie's name comes from the row it was preempted for:
                // a follower never "observes" a holder whose lease ran out.
                self.emit(Event::ZombiePreempted {
                    role: role.clone(),
                    holder,
                });
                let soon = self.now + self.config.retry_interval() / 10;
                if let Some(e) = self.roles.get_mut(role)
                    && e.state == RoleState::Follower
                {
                    e.next_try = e.next_try.min(soon);
                }
            }
            PreemptOutcome::NotZombie => {}
            PreemptOutcome::NotPermitted => {
                if !self.preempt_refused {
                    self.preempt_refused = true;
                    self.emit(Event::PreemptNotPermitted { role: role.clone() });
                }
            }
        }
    }

    /// The session is going to be closed: from now on nobody leads on it,
    /// even before the reset is sent (it may wait for lock commands in
    /// flight) or confirmed.
    fn want_reset(&mut self) {
        self.reset_wanted = true;
        let holding: Vec<Role> = self
            .roles
            .values()
            .filter(|e| e.renewable())
            .map(|e| e.role.clone())
            .collect();
        for role in holding {
            self.step_down(&role, StepDownReason::LockLost);
            if let Some(e) = self.roles.get_mut(&role) {
                e.deadline = None;
                e.state = RoleState::Releasing {
                    phase: ReleasePhase::Unlocking,
                };
            }
        }
    }

    fn on_reset(&mut self) {
        let touched: Vec<Role> = self
            .roles
            .values()
            .filter(|e| e.lock != LockHold::NotHeld)
            .map(|e| e.role.clone())
            .collect();
        for role in touched {
            self.step_down(&role, StepDownReason::LockLost);
            if let Some(e) = self.roles.get_mut(&role) {
                e.lock = LockHold::NotHeld;
                e.term = None;
                e.deadline = None;
            }
            self.bump_epoch(&role);
            self.finish(&role);
        }
    }
}

/// What identifies the lease row a preemption was for.
fn preempt_key(lease: &LeaseRecord) -> (String, Term, Option<i64>) {
    (lease.holder.clone(), lease.term, lease.session)
}
