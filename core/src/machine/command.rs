//! What the machine asks for ([`Command`]), what comes back
//! ([`CommandOutput`]), and what it tells the application ([`Event`]).

use std::fmt;
use std::time::Duration;

use crate::backend::{
    BackendError, ClaimOutcome, HeldLease, PreemptOutcome, RenewOutcome, TryLockOutcome,
};
use crate::types::{LeaseRecord, LocalInstant, Role, Term};

/// Correlates a [`Command`] with its result. Unique per machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandId(pub u64);

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A backend call the machine wants made. The driver runs it and hands the
/// result back with [`Machine::handle_result`](crate::Machine::handle_result)
/// and the same [`CommandId`]. Commands may run concurrently. The machine
/// has at most one `TryLock`, `Renew`, `Validate`, `Ping`, `Preempt` and
/// `ResetSession` in flight at a time (several `Claim`s, `Release`s and
/// `Notify`s may be, for different roles), and never sends a command about
/// a role's lock while another one about that lock is in flight.
///
/// A result that arrives after the machine gave up on a command (after
/// [`Config::attempt_timeout`](crate::Config::attempt_timeout)) is ignored,
/// so drivers should also time calls out and drop them.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// [`Lock::try_lock`](crate::Lock::try_lock) for follower roles, in one
    /// batch. Expects [`CommandOutput::TryLock`].
    TryLock {
        /// Correlation id.
        id: CommandId,
        /// Roles to try; none is held by this session.
        roles: Vec<Role>,
    },
    /// [`Lease::claim`](crate::Lease::claim) for a role whose lock was just
    /// granted. Expects [`CommandOutput::Claim`].
    Claim {
        /// Correlation id.
        id: CommandId,
        /// The role.
        role: Role,
    },
    /// [`Lease::renew`](crate::Lease::renew) of every lease this node holds,
    /// in one statement. Expects [`CommandOutput::Renew`].
    Renew {
        /// Correlation id.
        id: CommandId,
        /// The roles and terms to renew.
        leases: Vec<HeldLease>,
    },
    /// [`Lock::held`](crate::Lock::held): which of these locks the session
    /// still holds. Expects [`CommandOutput::Validate`].
    Validate {
        /// Correlation id.
        id: CommandId,
        /// Roles whose lock the machine believes held, or does not know.
        roles: Vec<Role>,
    },
    /// [`Lock::ping`](crate::Lock::ping). Expects [`CommandOutput::Ping`].
    Ping {
        /// Correlation id.
        id: CommandId,
    },
    /// [`Depose::depose`](crate::Depose::depose) a zombie holder. Expects
    /// [`CommandOutput::Preempt`].
    Preempt {
        /// Correlation id.
        id: CommandId,
        /// The zombie's lease row as last read.
        lease: LeaseRecord,
        /// How long past its lease the holder must be.
        grace: Duration,
    },
    /// Release a role with [`Backend::release`](crate::Backend::release):
    /// first end the lease (when `term` is given), then unlock. Expects
    /// [`CommandOutput::Released`] once the lock is free, or
    /// [`CommandOutput::ReleasedAndNotified`] when the engine also
    /// published the release in the same step (no `Notify` follows).
    Release {
        /// Correlation id.
        id: CommandId,
        /// The role.
        role: Role,
        /// The term to expire, if this node claimed one.
        term: Option<Term>,
    },
    /// [`Notify::publish_release`](crate::Notify::publish_release), sent
    /// only after the role's `Release` succeeded. Expects
    /// [`CommandOutput::Notified`].
    Notify {
        /// Correlation id.
        id: CommandId,
        /// The released role.
        role: Role,
    },
    /// [`Lock::reset`](crate::Lock::reset): close the session so that no lock
    /// survives whose state the machine lost track of. Expects
    /// [`CommandOutput::Reset`].
    ResetSession {
        /// Correlation id.
        id: CommandId,
    },
}

impl Command {
    /// The command's correlation id.
    pub fn id(&self) -> CommandId {
        match self {
            Command::TryLock { id, .. }
            | Command::Claim { id, .. }
            | Command::Renew { id, .. }
            | Command::Validate { id, .. }
            | Command::Ping { id }
            | Command::Preempt { id, .. }
            | Command::Release { id, .. }
            | Command::Notify { id, .. }
            | Command::ResetSession { id } => *id,
        }
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::TryLock { .. } => "try_lock",
            Command::Claim { .. } => "claim",
            Command::Renew { .. } => "renew",
            Command::Validate { .. } => "validate",
            Command::Ping { .. } => "ping",
            Command::Preempt { .. } => "preempt",
            Command::Release { .. } => "release",
            Command::Notify { .. } => "notify",
            Command::ResetSession { .. } => "reset_session",
        }
    }
}

/// The successful result of a [`Command`].
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutput {
    /// Result of [`Command::TryLock`].
    TryLock(TryLockOutcome),
    /// Result of [`Command::Claim`].
    Claim(ClaimOutcome),
    /// Result of [`Command::Renew`].
    Renew(RenewOutcome),
    /// Result of [`Command::Validate`]: the roles still held.
    Validate(Vec<Role>),
    /// Result of [`Command::Ping`].
    Ping,
    /// Result of [`Command::Preempt`].
    Preempt(PreemptOutcome),
    /// Result of [`Command::Release`]: the lock is free.
    Released,
    /// Result of [`Command::Release`]: the lock is free and the release
    /// notification went out with it (after the lock was free), so the
    /// machine sends no `Notify`.
    ReleasedAndNotified,
    /// Result of [`Command::Notify`].
    Notified,
    /// Result of [`Command::ResetSession`]: the session is closed.
    Reset,
}

/// What a driver hands back for a command.
pub type CommandResult = Result<CommandOutput, BackendError>;

/// Why a node stopped leading a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepDownReason {
    /// The application called resign.
    Resigned,
    /// The role or the whole elector is shutting down.
    Shutdown,
    /// Renewals did not succeed before the local deadline.
    DeadlineExpired,
    /// The lock was gone (session died, backend terminated, validation
    /// failed).
    LockLost,
    /// The lease row names another holder or term: someone took over.
    LeaseLost,
}

impl StepDownReason {
    /// A stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StepDownReason::Resigned => "resigned",
            StepDownReason::Shutdown => "shutdown",
            StepDownReason::DeadlineExpired => "deadline_expired",
            StepDownReason::LockLost => "lock_lost",
            StepDownReason::LeaseLost => "lease_lost",
        }
    }

    /// Whether leader-only work should be drained before the lease is
    /// released (a voluntary step-down).
    pub fn drains(self) -> bool {
        matches!(self, StepDownReason::Resigned | StepDownReason::Shutdown)
    }
}

impl fmt::Display for StepDownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a follower believes leads a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLeader {
    /// The holder's node id as stored.
    pub holder: String,
    /// The holder's term.
    pub term: Term,
}

/// What the machine tells the application and the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// This node leads `role` from now until `deadline` unless renewed.
    StartedLeading {
        /// The role.
        role: Role,
        /// The fencing token.
        term: Term,
        /// The local deadline.
        deadline: LocalInstant,
    },
    /// A renewal moved the local deadline of a held role.
    DeadlineExtended {
        /// The role.
        role: Role,
        /// The new local deadline.
        deadline: LocalInstant,
    },
    /// Renewals are failing; still leader until the deadline.
    LeadershipAtRisk {
        /// The role.
        role: Role,
        /// When leadership ends unless a renewal succeeds.
        deadline: LocalInstant,
    },
    /// A renewal succeeded again after [`Event::LeadershipAtRisk`].
    LeadershipRecovered {
        /// The role.
        role: Role,
    },
    /// This node no longer leads `role`. Always preceded by
    /// [`Event::StartedLeading`] for the same term.
    StoppedLeading {
        /// The role.
        role: Role,
        /// The term that ended.
        term: Term,
        /// Why.
        reason: StepDownReason,
    },
    /// The machine waits for leader-only work of `role` to finish before it
    /// releases the lease; answer with
    /// [`Machine::handle_drained`](crate::Machine::handle_drained). It stops
    /// waiting by itself after the drain timeout.
    DrainRequested {
        /// The role.
        role: Role,
    },
    /// A follower saw a (new) leader, or that nobody leads.
    LeaderObserved {
        /// The role.
        role: Role,
        /// The leader, if its lease is running.
        leader: Option<ObservedLeader>,
    },
    /// A zombie holder's session was terminated.
    ZombiePreempted {
        /// The role.
        role: Role,
        /// The zombie's node id.
        holder: String,
    },
    /// Zombie preemption is on but the database refused it. Emitted once;
    /// the node keeps waiting for the lock.
    PreemptNotPermitted {
        /// The role that first hit it.
        role: Role,
    },
    /// The session and every lock on it are gone.
    SessionLost {
        /// What the backend said.
        reason: String,
    },
    /// A backend call failed; the machine has already reacted.
    CommandFailed {
        /// The command's name.
        command: &'static str,
        /// The error.
        error: String,
        /// Whether retrying may help.
        retryable: bool,
    },
    /// A role reached [`RoleState::Stopped`](crate::RoleState::Stopped).
    RoleStopped {
        /// The role.
        role: Role,
    },
}
