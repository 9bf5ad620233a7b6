//! The election state machine: pure, deterministic, one per node.
//!
//! [`Machine`] holds every role a node campaigns for. It performs no IO and
//! reads no clock: each input carries the current [`LocalInstant`], and the
//! outputs say what to do next.
//!
//! Methods fall into four groups:
//! - **inputs** `handle_*`: time passing, command results, notifications,
//!   application requests;
//! - **outputs** `poll_*`: [`Command`]s to run, [`Event`]s to publish, and
//!   the instant at which to call [`Machine::handle_timeout`];
//! - **application commands**: [`Machine::add_role`], [`Machine::handle_resign`],
//!   [`Machine::handle_stop`], [`Machine::handle_shutdown`];
//! - **getters**: [`Machine::is_leader`], [`Machine::state`], ...
//!
//! After every input, drain [`Machine::poll_command`] and
//! [`Machine::poll_event`], then sleep until [`Machine::poll_timeout`].

mod command;
mod results;
mod role;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use rand_core::Rng;

use crate::backend::{BackendError, HeldLease};
use crate::config::Config;
use crate::types::{LocalInstant, Namespace, NodeId, Role, Term};

pub use command::{
    Command, CommandId, CommandOutput, CommandResult, Event, ObservedLeader, StepDownReason,
};
pub use role::{ReleasePhase, RoleState};

use role::{Intent, LockHold, RoleEntry};

/// A command the machine is waiting on.
#[derive(Debug, Clone)]
enum Pending {
    TryLock(Vec<(Role, u64)>),
    Claim(Role, u64),
    Renew(Vec<HeldLease>),
    Validate(Vec<(Role, u64)>),
    Ping,
    /// The role and the zombie holder's node id.
    Preempt(Role, String),
    Release(Role, u64),
    Notify,
    Reset,
}

#[derive(Debug, Clone)]
struct InFlight {
    pending: Pending,
    sent_at: LocalInstant,
    expires_at: LocalInstant,
}

/// The election state machine of one node. See the [module docs](self).
///
/// ```
/// use regent_core::{Command, Config, Machine, LocalInstant, Namespace, NodeId, Role};
/// use rand_chacha::ChaCha8Rng;
/// use rand_core::SeedableRng;
///
/// let mut m = Machine::new(
///     NodeId::new("node-a").unwrap(),
///     Namespace::default(),
///     Config::default(),
///     ChaCha8Rng::seed_from_u64(7),
/// );
/// let now = LocalInstant::ZERO;
/// m.add_role(now, Role::new("scheduler").unwrap());
/// // A new role is tried at once.
/// assert!(matches!(m.poll_command(), Some(Command::TryLock { .. })));
/// assert!(!m.is_leader(&Role::new("scheduler").unwrap(), now));
/// ```
pub struct Machine {
    config: Config,
    node: NodeId,
    namespace: Namespace,
    rng: Box<dyn Rng + Send>,
    roles: BTreeMap<Role, RoleEntry>,
    now: LocalInstant,
    next_id: u64,
    in_flight: BTreeMap<CommandId, InFlight>,
    commands: VecDeque<Command>,
    events: VecDeque<Event>,
    next_renew: LocalInstant,
    next_validate: LocalInstant,
    last_sent: LocalInstant,
    reset_wanted: bool,
    preempt_refused: bool,
    lock_epoch: u64,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("node", &self.node)
            .field("namespace", &self.namespace)
            .field("now", &self.now)
            .field("roles", &self.roles)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// A machine for `node` in `namespace`. `rng` supplies retry jitter and
    /// nothing else; pass a seeded RNG for reproducible runs.
    pub fn new(
        node: NodeId,
        namespace: Namespace,
        config: Config,
        rng: impl Rng + Send + 'static,
    ) -> Self {
        Self {
            config,
            node,
            namespace,
            rng: Box::new(rng),
            roles: BTreeMap::new(),
            now: LocalInstant::ZERO,
            next_id: 0,
            in_flight: BTreeMap::new(),
            commands: VecDeque::new(),
            events: VecDeque::new(),
            next_renew: LocalInstant::ZERO,
            next_validate: LocalInstant::ZERO,
            last_sent: LocalInstant::ZERO,
            reset_wanted: false,
            preempt_refused: false,
            lock_epoch: 0,
        }
    }

    // ----- getters -----------------------------------------------------

    /// The node this machine runs for.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The namespace of every role.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether this node may act as leader of `role` at `now`: it leads and
    /// `now` is before its local deadline. Checked on every call, so a node
    /// that stops hearing from the database stops leading on time even if
    /// [`Machine::handle_timeout`] is late.
    pub fn is_leader(&self, role: &Role, now: LocalInstant) -> bool {
        self.roles
            .get(role)
            .is_some_and(|e| e.leading() && e.deadline.is_some_and(|d| now < d))
    }

    /// The state of `role`, if it was added.
    pub fn state(&self, role: &Role) -> Option<RoleState> {
        self.roles.get(role).map(|e| e.state)
    }

    /// The term this node holds for `role` (leading or elect).
    pub fn term(&self, role: &Role) -> Option<Term> {
        self.roles.get(role).and_then(|e| e.term)
    }

    /// The local deadline of `role`'s current lease, while held.
    pub fn deadline(&self, role: &Role) -> Option<LocalInstant> {
        self.roles.get(role).and_then(|e| e.deadline)
    }

    /// The leader a follower last observed for `role`.
    pub fn observed_leader(&self, role: &Role) -> Option<&ObservedLeader> {
        self.roles.get(role).and_then(|e| e.observed.as_ref())
    }

    /// Every role, in name order.
    pub fn roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.keys()
    }

    /// Whether every role is stopped and no command is in flight.
    pub fn is_stopped(&self) -> bool {
        self.in_flight.is_empty()
            && self.commands.is_empty()
            && self.roles.values().all(|e| e.state == RoleState::Stopped)
    }

    // ----- outputs -----------------------------------------------------

    /// The next command to run, if any.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// The next event for the application, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Machine::handle_timeout`] next; `None` if nothing is
    /// scheduled (every role stopped and nothing in flight).
    pub fn poll_timeout(&self) -> Option<LocalInstant> {
        let mut wake: Option<LocalInstant> = None;
        let mut at = |t: LocalInstant| {
            wake = Some(wake.map_or(t, |w| w.min(t)));
        };
        for f in self.in_flight.values() {
            at(f.expires_at);
        }
        // While the session is being reset, `drive` sends nothing: waking
        // for renewals, validations, tries or pings then would only spin.
        let resetting = self.reset_wanted || self.kind_in_flight(|p| matches!(p, Pending::Reset));
        let try_in_flight = self.kind_in_flight(|p| matches!(p, Pending::TryLock(_)));
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
        }
        if resetting {
            return wake;
        }
        if any_renewable && !self.kind_in_flight(|p| matches!(p, Pending::Renew(_))) {
            at(self.next_renew);
        }
        if any_lock && !self.kind_in_flight(|p| matches!(p, Pending::Validate(_))) {
            at(self.next_validate);
        }
        if any_active && !self.kind_in_flight(|p| matches!(p, Pending::Ping)) {
            at(self.last_sent + self.config.keepalive_interval());
        }
        wake
    }

    // ----- inputs ------------------------------------------------------

    /// Time has passed; run whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: LocalInstant) {
        self.advance(now);
        self.drive();
    }

    /// Starts campaigning for `role` (or again, after it was stopped).
    pub fn add_role(&mut self, now: LocalInstant, role: Role) {
        self.advance(now);
        let entry = self
            .roles
            .entry(role.clone())
            .or_insert_with(|| RoleEntry::new(role, now));
        entry.intent = Intent::Campaign;
        entry.release_then_stop = false;
        if entry.state == RoleState::Stopped {
            entry.state = RoleState::Follower;
            entry.next_try = now;
        }
        self.drive();
    }

    /// Steps down from `role` (draining leader-only work first) and lets
    /// another node take it; this node keeps campaigning after a hold-off of
    /// two retry intervals, so the standbys woken by the release win.
    pub fn handle_resign(&mut self, now: LocalInstant, role: &Role) {
        self.advance(now);
        self.give_up(role, StepDownReason::Resigned);
        self.drive();
    }

    /// Stops campaigning for `role`: steps down like resign, then stays
    /// [`RoleState::Stopped`].
    pub fn handle_stop(&mut self, now: LocalInstant, role: &Role) {
        self.advance(now);
        if let Some(e) = self.roles.get_mut(role) {
            e.intent = Intent::Stop;
            e.release_then_stop = true;
        }
        self.give_up(role, StepDownReason::Shutdown);
        self.drive();
    }

    /// Stops every role. Idempotent. [`Machine::is_stopped`] turns true once
    /// every lease is released.
    pub fn handle_shutdown(&mut self, now: LocalInstant) {
        let roles: Vec<Role> = self.roles.keys().cloned().collect();
        for role in roles {
            self.handle_stop(now, &role);
        }
        self.advance(now);
        self.drive();
    }

    /// Leader-only work of `role` has finished after
    /// [`Event::DrainRequested`]; the lease can be released.
    pub fn handle_drained(&mut self, now: LocalInstant, role: &Role) {
        self.advance(now);
        if let Some(e) = self.roles.get_mut(role)
            && let RoleState::Releasing {
                phase: ReleasePhase::Draining { .. },
            } = e.state
        {
            e.state = RoleState::Releasing {
                phase: ReleasePhase::Unlocking,
            };
            self.issue_release(role);
        }
        self.drive();
    }

    /// Another node released `role`: try for it now.
    pub fn handle_release_notified(&mut self, now: LocalInstant, role: &Role) {
        self.advance(now);
        if let Some(e) = self.roles.get_mut(role)
            && e.state == RoleState::Follower
            && e.next_try > now
            && !e.held_off(now)
        {
            e.next_try = now;
        }
        self.drive();
    }

    /// Release notifications may have been missed (the subscription
    /// reconnected): poll every role now.
    pub fn handle_notify_gap(&mut self, now: LocalInstant) {
        self.advance(now);
        for e in self.roles.values_mut() {
            if e.state == RoleState::Follower && e.next_try > now && !e.held_off(now) {
                e.next_try = now;
            }
        }
        self.drive();
    }

    /// The backend saw the session close: every lock on it is gone. Roles
    /// held step down at once.
    pub fn handle_session_lost(&mut self, now: LocalInstant, reason: &str) {
        self.advance(now);
        self.session_lost(reason);
        self.drive();
    }

    /// The result of command `id`. Results of unknown or timed-out commands
    /// are ignored.
    pub fn handle_result(&mut self, now: LocalInstant, id: CommandId, result: CommandResult) {
        self.advance(now);
        if let Some(flight) = self.in_flight.remove(&id) {
            self.on_result(flight, result);
        }
        self.drive();
    }

    // ----- internals ---------------------------------------------------

    fn advance(&mut self, now: LocalInstant) {
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
        let roles: Vec<Role> = self.roles.keys().cloned().collect();
        for role in roles {
            self.advance_role(&role, now);
        }
    }

    fn advance_role(&mut self, role: &Role, now: LocalInstant) {
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

    /// Issues whatever session work is due.
    fn drive(&mut self) {
        let now = self.now;
        if self.reset_wanted {
            let lock_busy = self.kind_in_flight(|p| {
                matches!(
                    p,
                    Pending::TryLock(_)
                        | Pending::Claim(..)
                        | Pending::Release(..)
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
        if self.kind_in_flight(|p| matches!(p, Pending::Reset)) {
            return;
        }
        // Renew every held lease in one statement.
        let leases: Vec<HeldLease> = self
            .roles
            .values()
            .filter(|e| e.renewable())
            .filter_map(|e| {
                e.term.map(|term| HeldLease {
                    role: e.role.clone(),
                    term,
                })
            })
            .collect();
        if !leases.is_empty()
            && now >= self.next_renew
            && !self.kind_in_flight(|p| matches!(p, Pending::Renew(_)))
        {
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
        let to_validate: Vec<(Role, u64)> = self
            .roles
            .values()
            .filter(|e| e.lock != LockHold::NotHeld)
            .map(|e| (e.role.clone(), e.lock_epoch))
            .collect();
        if !to_validate.is_empty()
            && now >= self.next_validate
            && !self.kind_in_flight(|p| matches!(p, Pending::Validate(_)))
        {
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
        // Try every follower that is due, in one batch. Never while an
        // earlier command about the same lock may still run: a late release
        // would unlock the new hold.
        if !self.kind_in_flight(|p| matches!(p, Pending::TryLock(_))) {
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
        if active
            && now >= self.last_sent + self.config.keepalive_interval()
            && !self.kind_in_flight(|p| matches!(p, Pending::Ping))
        {
            let id = self.next_id();
            self.send(Command::Ping { id }, Pending::Ping);
        }
    }

    fn kind_in_flight(&self, f: impl Fn(&Pending) -> bool) -> bool {
        self.in_flight.values().any(|x| f(&x.pending))
    }

    /// Whether a claim or release of `role` is in flight, current or not.
    fn lock_command_in_flight(&self, role: &Role) -> bool {
        self.kind_in_flight(
            |p| matches!(p, Pending::Claim(r, _) | Pending::Release(r, _) if r == role),
        )
    }

    fn next_id(&mut self) -> CommandId {
        self.next_id += 1;
        CommandId(self.next_id)
    }

    fn send(&mut self, command: Command, pending: Pending) {
        let now = self.now;
        if !matches!(pending, Pending::Notify) {
            self.last_sent = now;
        }
        self.in_flight.insert(
            command.id(),
            InFlight {
                pending,
                sent_at: now,
                expires_at: now + self.config.attempt_timeout(),
            },
        );
        self.commands.push_back(command);
    }

    fn jittered_retry(&mut self) -> Duration {
        let jitter = self.config.retry_jitter().as_nanos() as u64;
        let extra = if jitter == 0 {
            0
        } else {
            self.rng.next_u64() % (jitter + 1)
        };
        self.config.retry_interval() + Duration::from_nanos(extra)
    }

    fn emit(&mut self, event: Event) {
        self.events.push_back(event);
    }

    fn bump_epoch(&mut self, role: &Role) {
        self.lock_epoch += 1;
        let epoch = self.lock_epoch;
        if let Some(e) = self.roles.get_mut(role) {
            e.lock_epoch = epoch;
        }
    }

    fn become_leader(&mut self, role: &Role) {
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
    fn step_down(&mut self, role: &Role, reason: StepDownReason) {
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
    fn give_up(&mut self, role: &Role, reason: StepDownReason) {
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
    fn begin_release(&mut self, role: &Role, drain: bool) {
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
    fn issue_release(&mut self, role: &Role) {
        let Some(e) = self.roles.get(role) else {
            return;
        };
        let in_flight = self.kind_in_flight(|p| matches!(p, Pending::Release(r, _) if r == role));
        match e.lock {
            LockHold::Held if !in_flight => {
                // Expire the lease only once the predecessor's lease has
                // passed: before that, an expired row would let the next
                // holder lead at once, while the predecessor may still lead.
                let term = e.term.filter(|_| e.lead_at.is_some_and(|t| self.now >= t));
                let epoch = e.lock_epoch;
                let id = self.next_id();
                self.send(
                    Command::Release {
                        id,
                        role: role.clone(),
                        term,
                    },
                    Pending::Release(role.clone(), epoch),
                );
            }
            LockHold::NotHeld => self.finish(role),
            _ => {}
        }
    }

    /// The lock of `role` is free: settle into `Follower` or `Stopped`.
    fn finish(&mut self, role: &Role) {
        let now = self.now;
        let retry = self.jittered_retry();
        let Some(e) = self.roles.get_mut(role) else {
            return;
        };
        e.term = None;
        e.deadline = None;
        e.lead_at = None;
        e.led = None;
        if e.intent == Intent::Stop || e.release_then_stop {
            e.intent = Intent::Stop;
            if e.state != RoleState::Stopped {
                e.state = RoleState::Stopped;
                self.emit(Event::RoleStopped { role: role.clone() });
            }
        } else {
            e.state = RoleState::Follower;
            e.next_try = (now + retry).max(e.hold_off_until);
        }
    }

    /// Every lock on the session may be gone.
    fn session_lost(&mut self, reason: &str) {
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
    fn mark_unknown(&mut self, role: &Role, reason: StepDownReason) {
        self.step_down(role, reason);
        let now = self.now;
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

impl RoleEntry {
    fn held_off(&self, now: LocalInstant) -> bool {
        now < self.hold_off_until
    }
}

#[cfg(test)]
mod tests;
