//! Deliberately broken variants of the machine, as wrappers around the real
//! [`Machine`]: the simulator must catch every one of them, which is how we
//! know it has teeth. The wrappers change only what crosses the machine's
//! boundary (results in, commands out, `is_leader`), never its code.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use regent_core::{
    Command, CommandId, CommandOutput, CommandResult, DbTimestamp, Event, HeldLease, LocalInstant,
    Machine, RenewOutcome, Role, RoleState, Term,
};

use crate::config::ParseError;

/// A deliberately broken machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mutant {
    /// Turns every failed (or timed-out) renewal into a success: the node
    /// stays leader whatever the database says.
    StaysLeaderOnDbError,
    /// Publishes the release notification when `Release` is issued, before
    /// the lock is actually free.
    NotifiesBeforeUnlock,
    /// Uses the node's wall clock instead of the database clock for lease
    /// expiry (replaces `db_now` in every result).
    TrustsWallClock,
    /// Forgets the previous holder's lease on claim, so it never waits it
    /// out.
    SkipsLeaseWait,
    /// `is_leader` ignores the local deadline.
    IgnoresDeadline,
    /// A model variant, not a wrapper: fenced transactions read the lease
    /// row `FOR SHARE` (the first design) instead of `FOR KEY SHARE`, so a
    /// leader's long fenced work blocks its own renewal (`FOR NO KEY
    /// UPDATE`) and release on its session. Injected in
    /// `world/fenced_tx.rs`.
    FencesWithForShare,
    /// A model variant: a claim locks the row `FOR UPDATE` without
    /// `NOWAIT`, so it waits (up to the statement timeout) behind another
    /// node's fenced work, and the node's session — and every other call of
    /// that node, its renewals included — waits with it. Injected in
    /// `world/session.rs` and `world/server.rs`.
    ClaimWaitsOnRowLock,
    /// A model variant: the machine's clock follows the database clock's
    /// forward steps while one of its roles waits out a lease in `Elect`,
    /// as a `WaitForLease` wait measured by polling `now()` until the
    /// predecessor's `lease_until` would. (A real monotonic clock never
    /// steps; the machine converts the wait to it once.) Injected in
    /// `world/dbfaults.rs` through [`crate::time::NodeClock::skip_ahead`];
    /// caught with forward steps beyond the margin (`db-clock-big`).
    WaitsInDbTime,
}

impl Mutant {
    /// Every mutant.
    pub const ALL: [Mutant; 8] = [
        Mutant::StaysLeaderOnDbError,
        Mutant::NotifiesBeforeUnlock,
        Mutant::TrustsWallClock,
        Mutant::SkipsLeaseWait,
        Mutant::IgnoresDeadline,
        Mutant::FencesWithForShare,
        Mutant::ClaimWaitsOnRowLock,
        Mutant::WaitsInDbTime,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mutant::StaysLeaderOnDbError => "stays-leader-on-db-error",
            Mutant::NotifiesBeforeUnlock => "notifies-before-unlock",
            Mutant::TrustsWallClock => "trusts-wall-clock",
            Mutant::SkipsLeaseWait => "skips-lease-wait",
            Mutant::IgnoresDeadline => "ignores-deadline",
            Mutant::FencesWithForShare => "fences-with-for-share",
            Mutant::ClaimWaitsOnRowLock => "claim-waits-on-row-lock",
            Mutant::WaitsInDbTime => "waits-in-db-time",
        }
    }
}

impl fmt::Display for Mutant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mutant {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mutant::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| ParseError {
                what: "mutant",
                got: s.to_owned(),
                expected: Mutant::ALL.map(Mutant::name).join(", "),
            })
    }
}

/// What a node's clocks read when an input is handed to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ctx {
    /// The node's monotonic clock.
    pub(crate) now: LocalInstant,
    /// The node's wall clock (only mutants read it; the world fills it in
    /// only when running one).
    pub(crate) wall: DbTimestamp,
}

/// Fake command ids of the notify mutant start here, far above the
/// machine's own.
const FAKE_ID_BASE: u64 = 1 << 62;

/// The machine under test: the real [`Machine`], optionally wrapped by a
/// [`Mutant`].
pub(crate) struct Subject {
    inner: Machine,
    mutant: Option<Mutant>,
    attempt_timeout: Duration,
    /// Renewals in flight and when the machine would time them out.
    renews: BTreeMap<CommandId, (Vec<HeldLease>, LocalInstant)>,
    queued: VecDeque<Command>,
    fake: BTreeSet<CommandId>,
    next_fake: u64,
    last_now: LocalInstant,
}

impl Subject {
    pub(crate) fn new(inner: Machine, mutant: Option<Mutant>) -> Self {
        let attempt_timeout = inner.config().attempt_timeout();
        Self {
            inner,
            mutant,
            attempt_timeout,
            renews: BTreeMap::new(),
            queued: VecDeque::new(),
            fake: BTreeSet::new(),
            next_fake: FAKE_ID_BASE,
            last_now: LocalInstant::ZERO,
        }
    }

    /// Mutant (a): a renewal about to time out "succeeds" just before.
    fn fake_renewals(&mut self, ctx: Ctx) {
        if self.mutant != Some(Mutant::StaysLeaderOnDbError) {
            return;
        }
        let margin = Duration::from_millis(1);
        let due: Vec<CommandId> = self
            .renews
            .iter()
            .filter(|(_, (_, expires))| *expires - margin <= ctx.now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some((leases, expires)) = self.renews.remove(&id) {
                let at = ctx.now.min(expires - margin);
                let out = fake_renew(&leases, ctx.wall);
                self.inner.handle_result(at, id, Ok(out));
            }
        }
    }

    fn before(&mut self, ctx: Ctx) {
        self.fake_renewals(ctx);
        self.last_now = ctx.now;
    }

    pub(crate) fn add_role(&mut self, ctx: Ctx, role: Role) {
        self.before(ctx);
        self.inner.add_role(ctx.now, role);
    }

    pub(crate) fn handle_timeout(&mut self, ctx: Ctx) {
        self.before(ctx);
        self.inner.handle_timeout(ctx.now);
    }

    pub(crate) fn handle_release_notified(&mut self, ctx: Ctx, role: &Role) {
        self.before(ctx);
        self.inner.handle_release_notified(ctx.now, role);
    }

    pub(crate) fn handle_notify_gap(&mut self, ctx: Ctx) {
        self.before(ctx);
        self.inner.handle_notify_gap(ctx.now);
    }

    pub(crate) fn handle_session_lost(&mut self, ctx: Ctx, reason: &str) {
        self.before(ctx);
        self.inner.handle_session_lost(ctx.now, reason);
    }

    pub(crate) fn handle_resign(&mut self, ctx: Ctx, role: &Role) {
        self.before(ctx);
        self.inner.handle_resign(ctx.now, role);
    }

    pub(crate) fn handle_stop(&mut self, ctx: Ctx, role: &Role) {
        self.before(ctx);
        self.inner.handle_stop(ctx.now, role);
    }

    pub(crate) fn handle_shutdown(&mut self, ctx: Ctx) {
        self.before(ctx);
        self.inner.handle_shutdown(ctx.now);
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.inner.is_stopped()
    }

    pub(crate) fn handle_drained(&mut self, ctx: Ctx, role: &Role) {
        self.before(ctx);
        self.inner.handle_drained(ctx.now, role);
    }

    pub(crate) fn handle_result(&mut self, ctx: Ctx, id: CommandId, result: CommandResult) {
        if self.mutant.is_none() {
            // The real machine: nothing is faked (no fake ids, no renewals
            // tracked), so the result goes straight in, without being moved
            // through the match below.
            self.last_now = ctx.now;
            self.inner.handle_result(ctx.now, id, result);
            return;
        }
        self.before(ctx);
        if self.fake.remove(&id) {
            return;
        }
        let renew = self.renews.remove(&id);
        let result = match (self.mutant, result) {
            (Some(Mutant::StaysLeaderOnDbError), Err(e)) => match renew {
                Some((leases, _)) => Ok(fake_renew(&leases, ctx.wall)),
                None => Err(e),
            },
            (Some(Mutant::TrustsWallClock), Ok(out)) => Ok(with_wall_clock(out, ctx.wall)),
            (Some(Mutant::SkipsLeaseWait), Ok(CommandOutput::Claim(mut out))) => {
                out.previous = None;
                Ok(CommandOutput::Claim(out))
            }
            (_, result) => result,
        };
        self.inner.handle_result(ctx.now, id, result);
    }

    pub(crate) fn poll_command(&mut self) -> Option<Command> {
        if self.mutant.is_none() {
            // Only a mutant queues or inspects commands.
            return self.inner.poll_command();
        }
        if let Some(c) = self.queued.pop_front() {
            return Some(c);
        }
        let command = self.inner.poll_command()?;
        match (&command, self.mutant) {
            (Command::Renew { id, leases }, Some(Mutant::StaysLeaderOnDbError)) => {
                let expires = self.last_now + self.attempt_timeout;
                self.renews.insert(*id, (leases.clone(), expires));
                Some(command)
            }
            (Command::Release { role, .. }, Some(Mutant::NotifiesBeforeUnlock)) => {
                self.next_fake += 1;
                let id = CommandId(self.next_fake);
                self.fake.insert(id);
                let notify = Command::Notify {
                    id,
                    role: role.clone(),
                };
                self.queued.push_back(command);
                Some(notify)
            }
            _ => Some(command),
        }
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.inner.poll_event()
    }

    pub(crate) fn poll_timeout(&self) -> Option<LocalInstant> {
        let inner = self.inner.poll_timeout();
        if self.renews.is_empty() {
            return inner;
        }
        let margin = Duration::from_millis(1);
        self.renews
            .values()
            .map(|(_, e)| *e - margin)
            .chain(inner)
            .min()
    }

    pub(crate) fn is_leader(&self, role: &Role, now: LocalInstant) -> bool {
        if self.mutant == Some(Mutant::IgnoresDeadline) {
            return matches!(
                self.inner.state(role),
                Some(RoleState::Leader { .. } | RoleState::Suspect { .. })
            );
        }
        self.inner.is_leader(role, now)
    }

    /// `role`'s state, and — if [`Subject::is_leader`] holds at `now` — the
    /// term and until when (exclusive) `is_leader(role, ·)` stays true if no
    /// input arrives: the machine's local deadline, or forever for the
    /// mutant that ignores it. The same answers as those calls, with one
    /// lookup of the role for a node that does not lead it (the world reads
    /// this after every input to every node, to cache beliefs; `is_leader`
    /// stays the authority).
    pub(crate) fn view(
        &self,
        role: &Role,
        now: LocalInstant,
    ) -> (Option<RoleState>, Option<(Option<Term>, LocalInstant)>) {
        let state = self.inner.state(role);
        // `Machine::is_leader`: leading (leader or suspect) and `now` before
        // the deadline.
        let leading = matches!(
            state,
            Some(RoleState::Leader { .. } | RoleState::Suspect { .. })
        );
        if !leading {
            return (state, None);
        }
        if self.mutant == Some(Mutant::IgnoresDeadline) {
            let forever = LocalInstant::from_nanos(u64::MAX);
            return (state, Some((self.inner.term(role), forever)));
        }
        match self.inner.deadline(role) {
            Some(deadline) if now < deadline => (state, Some((self.inner.term(role), deadline))),
            _ => (state, None),
        }
    }

    pub(crate) fn term(&self, role: &Role) -> Option<Term> {
        self.inner.term(role)
    }
}

fn fake_renew(leases: &[HeldLease], wall: DbTimestamp) -> CommandOutput {
    CommandOutput::Renew(RenewOutcome {
        db_now: wall,
        renewed: leases.iter().map(|l| l.role.clone()).collect(),
    })
}

fn with_wall_clock(out: CommandOutput, wall: DbTimestamp) -> CommandOutput {
    match out {
        CommandOutput::TryLock(mut o) => {
            o.db_now = wall;
            CommandOutput::TryLock(o)
        }
        CommandOutput::Claim(mut o) => {
            o.db_now = wall;
            CommandOutput::Claim(o)
        }
        CommandOutput::Renew(mut o) => {
            o.db_now = wall;
            CommandOutput::Renew(o)
        }
        other => other,
    }
}
