//! Per-role state.

use crate::machine::command::ObservedLeader;
use crate::types::{LocalInstant, Role, Term};

/// Where one role stands on this node (DESIGN §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleState {
    /// Not holding the lock; tries again at the next retry.
    Follower,
    /// A lock attempt or a claim is in flight.
    Candidate,
    /// Holds the lock and a claimed term, waiting out the predecessor's
    /// lease (policy `WaitForLease`).
    Elect {
        /// When it may start leading, on the local clock.
        lead_at: LocalInstant,
    },
    /// Leads until the local deadline unless renewed.
    Leader {
        /// When it started leading.
        since: LocalInstant,
    },
    /// Still leads, but renewals are failing.
    Suspect {
        /// When it started leading.
        since: LocalInstant,
    },
    /// Stepping down: draining work, then releasing and notifying.
    Releasing {
        /// What the release is waiting for.
        phase: ReleasePhase,
    },
    /// Not campaigning; holds nothing.
    Stopped,
}

impl RoleState {
    /// A stable label for logs and timelines.
    pub fn name(&self) -> &'static str {
        match self {
            RoleState::Follower => "follower",
            RoleState::Candidate => "candidate",
            RoleState::Elect { .. } => "elect",
            RoleState::Leader { .. } => "leader",
            RoleState::Suspect { .. } => "suspect",
            RoleState::Releasing { .. } => "releasing",
            RoleState::Stopped => "stopped",
        }
    }
}

/// The steps of [`RoleState::Releasing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleasePhase {
    /// Waiting for leader-only work to finish, at most until `until`.
    Draining {
        /// The drain timeout.
        until: LocalInstant,
    },
    /// A `Release` command is (or is about to be) in flight.
    Unlocking,
}

/// What this node knows about its session's lock of a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockHold {
    NotHeld,
    Held,
    /// A command that changes the lock failed in a way that leaves its
    /// effect unknown; validation must settle it before anything else.
    Unknown,
}

/// The echo of this node's own release notification during a hold-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Echo {
    /// The hold-off did not start with a release by this node.
    None,
    /// This node released the role; its own notification is still to come.
    Expected,
    /// The own notification came back; a further one is another node's.
    Seen,
}

/// What the application wants for the role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intent {
    Campaign,
    Stop,
}

#[derive(Debug, Clone)]
pub(crate) struct RoleEntry {
    pub(crate) role: Role,
    pub(crate) state: RoleState,
    pub(crate) lock: LockHold,
    /// The term this node claimed, while it holds the lease.
    pub(crate) term: Option<Term>,
    /// The local deadline of the current claim/renewal.
    pub(crate) deadline: Option<LocalInstant>,
    /// When the predecessor's lease (seen by this node's claim) has surely
    /// passed in database time. Until then the lease row this node claimed
    /// is what keeps the next holder waiting for that predecessor, so a
    /// release must not expire it.
    pub(crate) lead_at: Option<LocalInstant>,
    /// The term announced with `StartedLeading`, until `StoppedLeading`.
    pub(crate) led: Option<Term>,
    pub(crate) observed: Option<ObservedLeader>,
    pub(crate) next_try: LocalInstant,
    pub(crate) intent: Intent,
    /// After a resign, no campaigning before this instant.
    pub(crate) hold_off_until: LocalInstant,
    /// Whether this node released the role at the start of its hold-off,
    /// and whether the echo of that release has come back yet.
    pub(crate) echo: Echo,
    /// Changes whenever the lock changes hands on this session, so results of
    /// commands sent before the change are not applied after it.
    pub(crate) lock_epoch: u64,
    /// The lease row (holder, term, holder session) behind which the last
    /// preemption found no zombie to depose. It is not tried again while
    /// the row is unchanged, so one futile preemption cannot starve the
    /// node's other roles (one preemption is in flight at a time).
    pub(crate) futile_preempt: Option<(String, Term, Option<i64>)>,
    /// After this node lost the lock of a term it led (its session went):
    /// that term's lease row, which it will end itself once its
    /// leader-only work has drained (or the drain bound passed) and the
    /// database answers again, so a standby leads in milliseconds instead
    /// of waiting out a lease nobody uses.
    pub(crate) own_expiry: Option<OwnExpiry>,
}

/// See [`RoleEntry::own_expiry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OwnExpiry {
    /// The term this node led and lost.
    pub(crate) term: Term,
    /// The drain bound: past it, the expiry goes out even if work runs on.
    pub(crate) not_before: LocalInstant,
    /// Whether the driver reported the leader-only work drained.
    pub(crate) drained: bool,
}

impl OwnExpiry {
    /// Whether the work has drained (or the bound passed) at `now`.
    pub(crate) fn ready(&self, now: LocalInstant) -> bool {
        self.drained || now >= self.not_before
    }
}

impl RoleEntry {
    pub(crate) fn new(role: Role, now: LocalInstant) -> Self {
        Self {
            role,
            state: RoleState::Follower,
            lock: LockHold::NotHeld,
            term: None,
            deadline: None,
            lead_at: None,
            led: None,
            observed: None,
            next_try: now,
            intent: Intent::Campaign,
            hold_off_until: now,
            echo: Echo::None,
            lock_epoch: 0,
            futile_preempt: None,
            own_expiry: None,
        }
    }

    /// Whether the lease should be renewed.
    ///
    /// Not only while leading: an `Elect` holder renews because its claimed
    /// row is what keeps the *next* claimer waiting for the predecessor's
    /// lease (DESIGN §2 rule 3) — a lapsed row would let a third node lead
    /// while the predecessor may still act. A `Draining` holder renews
    /// because its leader-only work is still running: the lease must cover
    /// that work until it has finished (or the drain bound passes), or a
    /// successor could lead beside it.
    pub(crate) fn renewable(&self) -> bool {
        self.lock == LockHold::Held
            && self.term.is_some()
            && matches!(
                self.state,
                RoleState::Elect { .. }
                    | RoleState::Leader { .. }
                    | RoleState::Suspect { .. }
                    | RoleState::Releasing {
                        phase: ReleasePhase::Draining { .. }
                    }
            )
    }

    pub(crate) fn leading(&self) -> bool {
        matches!(
            self.state,
            RoleState::Leader { .. } | RoleState::Suspect { .. }
        )
    }
}
