//! regent-core: the leader-election state machine of regent, its backend
//! traits, and a tokio driver.
//!
//! The [`Machine`] performs no IO, reads no clock and draws no randomness of
//! its own: time arrives as a [`LocalInstant`] argument, randomness as an RNG
//! the caller passes in, and everything it wants done leaves as a
//! [`Command`] whose result comes back as an input. Backends ([`Lock`],
//! [`Lease`], [`Notify`]) carry out commands; the driver (feature `driver`,
//! on by default) runs the loop on tokio and gives applications an
//! `Elector` and `LeaderHandle`s (module `driver`). The simulator in `regent-sim` runs the
//! very same machine on virtual time.
//!
//! # The drive loop
//!
//! After every input, drain [`Machine::poll_command`] and
//! [`Machine::poll_event`], then wait until [`Machine::poll_timeout`] (or the
//! next result, whichever is first) and call [`Machine::handle_timeout`].
//! Here a toy database that grants every lock drives one node to leadership:
//!
//! ```
//! use std::time::Duration;
//! use rand_chacha::ChaCha8Rng;
//! use rand_core::SeedableRng;
//! use regent_core::{
//!     ClaimOutcome, Command, CommandOutput, Config, DbTimestamp, Event, LocalInstant,
//!     LockAttempt, Machine, Namespace, NodeId, RenewOutcome, Role, Term, TryLockOutcome,
//! };
//!
//! let config = Config::default();
//! let mut machine = Machine::new(
//!     NodeId::new("node-a").unwrap(),
//!     Namespace::default(),
//!     config.clone(),
//!     ChaCha8Rng::seed_from_u64(1),
//! );
//! let role = Role::new("scheduler").unwrap();
//! let mut now = LocalInstant::ZERO;
//! machine.add_role(now, role.clone());
//!
//! let mut led_at = None;
//! for _ in 0..20 {
//!     // 1. Run every command (here: answer it at once).
//!     while let Some(command) = machine.poll_command() {
//!         let db_now = DbTimestamp::from_micros(now.as_nanos() as i64 / 1000);
//!         let output = match &command {
//!             Command::TryLock { roles, .. } => CommandOutput::TryLock(TryLockOutcome {
//!                 db_now,
//!                 attempts: roles
//!                     .iter()
//!                     .map(|r| LockAttempt { role: r.clone(), granted: true, lease: None })
//!                     .collect(),
//!             }),
//!             Command::Claim { .. } => CommandOutput::Claim(ClaimOutcome {
//!                 term: Term(1),
//!                 previous: None,
//!                 db_now,
//!             }),
//!             Command::Renew { leases, .. } => CommandOutput::Renew(RenewOutcome {
//!                 db_now,
//!                 renewed: leases.iter().map(|l| l.role.clone()).collect(),
//!             }),
//!             Command::Validate { roles, .. } => CommandOutput::Validate(roles.clone()),
//!             Command::Ping { .. } => CommandOutput::Ping,
//!             other => panic!("not expected here: {other:?}"),
//!         };
//!         machine.handle_result(now, command.id(), Ok(output));
//!     }
//!     // 2. Publish events.
//!     while let Some(event) = machine.poll_event() {
//!         if let Event::StartedLeading { term, .. } = event {
//!             led_at.get_or_insert((now, term));
//!         }
//!     }
//!     // 3. Sleep until the machine wants to be woken.
//!     let Some(wake) = machine.poll_timeout() else { break };
//!     now = wake.max(now);
//!     machine.handle_timeout(now);
//! }
//! assert_eq!(led_at, Some((LocalInstant::ZERO, Term(1))));
//! // Renewals kept it leader well past the first deadline.
//! assert!(machine.is_leader(&role, now));
//! assert!(now > LocalInstant::ZERO + Duration::from_secs(10));
//! ```
//!
//! # Safety in one paragraph
//!
//! Under [`TakeoverPolicy::WaitForLease`] at most one node believes it leads
//! a role at any instant, provided clocks drift by less than
//! [`Config::max_drift`]: a leader acts only until `t_sent + L·(1-ρ) - m`
//! after its last successful renewal was sent, which is before its lease ends
//! in database time, and a new holder waits until the old lease has passed
//! in database time. Under [`TakeoverPolicy::Immediate`] a deposed leader
//! may still believe it leads for up to one lease; use the fencing token.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod backend;
pub mod config;
#[cfg(any(feature = "sqlx", feature = "postgres-types"))]
mod encode;
pub mod machine;
pub mod types;

#[cfg(feature = "driver")]
pub mod driver;

pub use backend::{
    Backend, BackendError, ClaimOutcome, Depose, HeldLease, Lease, Lock, LockAttempt, Notify,
    NotifyEvent, PreemptOutcome, Released, RenewOutcome, Subscription, TryLockOutcome,
};
pub use config::{Config, ConfigBuilder, ConfigError, TakeoverPolicy, UnknownPolicy};
pub use machine::{
    Command, CommandId, CommandOutput, CommandResult, Event, Machine, ObservedLeader, ReleasePhase,
    RoleState, StepDownReason,
};
pub use types::{
    DbTimestamp, Fence, LeaseRecord, LocalInstant, MAX_NAME_BYTES, NameError, Namespace, NodeId,
    Role, Term, TermError,
};

#[cfg(feature = "driver")]
pub use driver::{
    CancellationToken, DrainOverrun, Elector, ElectorBuilder, ElectorError, LeaderHandle,
    Leadership, ObservedLease, Observer, RoleStatus, Unhealthy,
};
