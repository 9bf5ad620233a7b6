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
// How each command's result moves the roles on.
mod results;
mod role;
// Time passing, due session work, and the next wake-up.
mod schedule;
// Per-role transitions: leading, stepping down, releasing, settling.
mod transitions;

use std::collections::{BTreeMap, VecDeque};

use rand_core::Rng;

use crate::backend::HeldLease;
use crate::config::Config;
use crate::types::{LeaseRecord, LocalInstant, Namespace, NodeId, Role, Term};

pub use command::{
    Command, CommandId, CommandOutput, CommandResult, Event, ObservedLeader, StepDownReason,
};
pub use role::{ReleasePhase, RoleState};

use role::{Echo, Intent, RoleEntry};

/// A command the machine is waiting on.
#[derive(Debug, Clone)]
enum Pending {
    TryLock(Vec<(Role, u64)>),
    Claim(Role, u64),
    Renew(Vec<HeldLease>),
    Validate(Vec<(Role, u64)>),
    Ping,
    /// The role and the zombie holder's node id.
    Preempt(Role, LeaseRecord),
    /// The role, its lock epoch, and whether this node had claimed a term
    /// (only then is the release announced).
    Release(Role, u64, bool),
    /// Ending this node's own lease of a term it lost (the lock is not
    /// held); see `RoleEntry::own_expiry`.
    ExpireOwn(Role),
    Notify,
    Reset,
}

#[derive(Debug, Clone)]
struct InFlight {
    pending: Pending,
    /// [`Command::name`] of the command, for reports.
    name: &'static str,
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
    /// The shared instant of the next follower round (see `next_round`).
    follower_round: Option<LocalInstant>,
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
            follower_round: None,
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
    #[inline]
    pub fn is_leader(&self, role: &Role, now: LocalInstant) -> bool {
        self.roles
            .get(role)
            .is_some_and(|e| e.leading() && e.deadline.is_some_and(|d| now < d))
    }

    /// The state of `role`, if it was added.
    #[inline]
    pub fn state(&self, role: &Role) -> Option<RoleState> {
        self.roles.get(role).map(|e| e.state)
    }

    /// Whether leader-only work of `role` is still being waited for at
    /// `now`: a resign or stop draining it, or a lost lease this node will
    /// end itself once the work has drained (until the drain bound).
    pub fn is_draining(&self, role: &Role, now: LocalInstant) -> bool {
        self.roles.get(role).is_some_and(|e| {
            matches!(
                e.state,
                RoleState::Releasing {
                    phase: ReleasePhase::Draining { .. }
                }
            ) || e.own_expiry.is_some_and(|x| !x.ready(now))
        })
    }

    /// The term this node holds for `role` (leading or elect).
    #[inline]
    pub fn term(&self, role: &Role) -> Option<Term> {
        self.roles.get(role).and_then(|e| e.term)
    }

    /// The local deadline of `role`'s current lease, while held.
    #[inline]
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
    #[inline]
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// The next event for the application, if any.
    #[inline]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Machine::handle_timeout`] next; `None` if nothing is
    /// scheduled (every role stopped and nothing in flight).
    pub fn poll_timeout(&self) -> Option<LocalInstant> {
        self.next_wake()
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
        if let Some(x) = self.roles.get_mut(role).and_then(|e| e.own_expiry.as_mut()) {
            x.drained = true;
        }
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

    /// Another node released `role`: try for it now. A node holding off
    /// after its own resign ignores the echo of its own release, but not a
    /// later release by the node that took over.
    pub fn handle_release_notified(&mut self, now: LocalInstant, role: &Role) {
        self.advance(now);
        if let Some(e) = self.roles.get_mut(role)
            && e.state == RoleState::Follower
            && e.next_try > now
        {
            match (e.held_off(now), e.echo) {
                (false, _) => e.next_try = now,
                // The echo of this node's own release after a resign.
                (true, Echo::Expected) => e.echo = Echo::Seen,
                // The node that took over from us released too: the
                // hold-off has done its job.
                (true, Echo::Seen) => {
                    e.hold_off_until = now;
                    e.next_try = now;
                }
                // A follower that resigned keeps out of the way.
                (true, Echo::None) => {}
            }
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
}

impl RoleEntry {
    /// Whether a resign's hold-off still keeps `self` from trying at `now`.
    fn held_off(&self, now: LocalInstant) -> bool {
        now < self.hold_off_until
    }
}

#[cfg(test)]
mod tests;
