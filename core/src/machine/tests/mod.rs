//! Tests of the pure state machine: one module per group of transitions,
//! plus a property test over random event sequences (`props`).
//!
//! Unless a test says otherwise the config is the default with no retry
//! jitter (so retry instants are exact): lease 10 s, renew every 2 s,
//! validate every 1 s, retry every 1 s, attempt timeout 1.5 s, drift 1e-3,
//! margin 200 ms, so the leader window is 9.79 s.

use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::backend::{
    BackendError, ClaimOutcome, HeldLease, LockAttempt, RenewOutcome, TryLockOutcome,
};
use crate::config::{Config, TakeoverPolicy};
use crate::machine::{Command, CommandId, CommandOutput, CommandResult, Event, Machine};
use crate::types::{DbTimestamp, LeaseRecord, LocalInstant, Namespace, NodeId, Role, Term};

mod acquire;
mod faults;
mod props;
mod release;
mod renew;
mod validate;

/// A role by name.
fn r(name: &str) -> Role {
    Role::new(name).unwrap()
}

/// `n` milliseconds after the origin of the local clock.
fn ms(n: u64) -> LocalInstant {
    LocalInstant::from_nanos(n * 1_000_000)
}

/// A database timestamp `n` ms after an arbitrary epoch.
fn db(n: i64) -> DbTimestamp {
    DbTimestamp::from_micros(1_700_000_000_000_000 + n * 1000)
}

fn id(n: u64) -> CommandId {
    CommandId(n)
}

/// The default config without retry jitter.
fn config() -> Config {
    Config::builder()
        .retry_jitter(Duration::ZERO)
        .build()
        .unwrap()
}

fn machine_with(config: Config) -> Machine {
    Machine::new(
        NodeId::new("node-a").unwrap(),
        Namespace::default(),
        config,
        ChaCha8Rng::seed_from_u64(7),
    )
}

fn machine() -> Machine {
    machine_with(config())
}

/// Every command the machine has queued.
fn drain(m: &mut Machine) -> Vec<Command> {
    std::iter::from_fn(|| m.poll_command()).collect()
}

/// Every event the machine has queued.
fn events(m: &mut Machine) -> Vec<Event> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

/// `Command::TryLock` with id `n` for `roles`.
fn try_lock_cmd(n: u64, roles: &[&Role]) -> Command {
    Command::TryLock {
        id: id(n),
        roles: roles.iter().map(|r| (*r).clone()).collect(),
    }
}

/// `Command::Validate` with id `n` for `roles`.
fn validate_cmd(n: u64, roles: &[&Role]) -> Command {
    Command::Validate {
        id: id(n),
        roles: roles.iter().map(|r| (*r).clone()).collect(),
    }
}

/// `Command::Claim` with id `n`.
fn claim_cmd(n: u64, role: &Role) -> Command {
    Command::Claim {
        id: id(n),
        role: role.clone(),
    }
}

/// `Command::Release` with id `n`, expiring `term` if given.
fn release_cmd(n: u64, role: &Role, term: Option<u64>) -> Command {
    Command::Release {
        id: id(n),
        role: role.clone(),
        term: term.map(Term),
    }
}

/// `Command::Notify` with id `n`.
fn notify_cmd(n: u64, role: &Role) -> Command {
    Command::Notify {
        id: id(n),
        role: role.clone(),
    }
}

/// A lease row of `role` held by `holder`.
fn lease(role: &Role, holder: &str, term: u64, until: DbTimestamp) -> LeaseRecord {
    LeaseRecord {
        namespace: Namespace::default(),
        role: role.clone(),
        holder: holder.to_owned(),
        term: Term(term),
        session: Some(4242),
        acquired_at: until - Duration::from_secs(10),
        renewed_at: until - Duration::from_secs(10),
        lease_until: until,
    }
}

/// A try-lock result granting `roles` (no lease rows).
fn granted(db_now: DbTimestamp, roles: &[&Role]) -> CommandResult {
    Ok(CommandOutput::TryLock(TryLockOutcome {
        db_now,
        attempts: roles
            .iter()
            .map(|r| LockAttempt {
                role: (*r).clone(),
                granted: true,
                lease: None,
            })
            .collect(),
    }))
}

/// A try-lock result denying `role`, with its lease row.
fn denied(db_now: DbTimestamp, role: &Role, lease: Option<LeaseRecord>) -> CommandResult {
    Ok(CommandOutput::TryLock(TryLockOutcome {
        db_now,
        attempts: vec![LockAttempt {
            role: role.clone(),
            granted: false,
            lease,
        }],
    }))
}

fn claimed(term: u64, previous: Option<LeaseRecord>, db_now: DbTimestamp) -> CommandResult {
    Ok(CommandOutput::Claim(ClaimOutcome {
        term: Term(term),
        previous,
        db_now,
    }))
}

fn renewed(db_now: DbTimestamp, roles: &[&Role]) -> CommandResult {
    Ok(CommandOutput::Renew(RenewOutcome {
        db_now,
        renewed: roles.iter().map(|r| (*r).clone()).collect(),
    }))
}

fn validated(roles: &[&Role]) -> CommandResult {
    Ok(CommandOutput::Validate(
        roles.iter().map(|r| (*r).clone()).collect(),
    ))
}

fn held(role: &Role, term: u64) -> HeldLease {
    HeldLease {
        role: role.clone(),
        term: Term(term),
    }
}

fn transient() -> BackendError {
    BackendError::Transient("connection reset".to_owned())
}

fn session_lost() -> BackendError {
    BackendError::SessionLost {
        reason: "terminated by operator".to_owned(),
    }
}

/// The `CommandFailed` event the machine emits for `error` on `command`.
fn failed(command: &'static str, error: &BackendError) -> Event {
    Event::CommandFailed {
        command,
        error: error.to_string(),
        retryable: error.is_retryable(),
    }
}

/// The local deadline of a claim or renew sent at `sent` (default config).
fn deadline_after(sent: LocalInstant) -> LocalInstant {
    sent + config().leader_window()
}

/// Brings a fresh machine to lead `role` with term 1: `TryLock` #1 sent at
/// 0 ms and granted at 10 ms, `Claim` #2 sent at 10 ms and answered at
/// 20 ms with no predecessor. The deadline is 10 ms + 9.79 s = 9800 ms; the
/// first renew is due at 2010 ms and the first validation at 1010 ms. The
/// next command id is 3. Queues are drained.
fn lead(m: &mut Machine, role: &Role) {
    m.add_role(ms(0), role.clone());
    assert_eq!(
        drain(m),
        vec![Command::TryLock {
            id: id(1),
            roles: vec![role.clone()]
        }]
    );
    m.handle_result(ms(10), id(1), granted(db(10), &[role]));
    assert_eq!(
        drain(m),
        vec![Command::Claim {
            id: id(2),
            role: role.clone()
        }]
    );
    m.handle_result(ms(20), id(2), claimed(1, None, db(20)));
    assert_eq!(drain(m), vec![]);
    assert_eq!(
        events(m),
        vec![Event::StartedLeading {
            role: role.clone(),
            term: Term(1),
            deadline: ms(9800),
        }]
    );
    assert!(m.is_leader(role, ms(20)));
}

#[test]
fn lead_helper_deadline_matches_the_window() {
    assert_eq!(deadline_after(ms(10)), ms(9800));
    let mut m = machine();
    lead(&mut m, &r("a"));
    assert_eq!(m.deadline(&r("a")), Some(ms(9800)));
    assert_eq!(m.term(&r("a")), Some(Term(1)));
    assert_eq!(m.config().takeover_policy(), TakeoverPolicy::WaitForLease);
}

/// What [`run_until`] saw.
#[derive(Debug, Default)]
struct Run {
    /// The last instant the machine was woken at.
    now: LocalInstant,
    commands: Vec<(LocalInstant, Command)>,
    events: Vec<(LocalInstant, Event)>,
}

impl Run {
    fn commands_at(&self, t: LocalInstant) -> Vec<Command> {
        self.commands
            .iter()
            .filter(|(at, _)| *at == t)
            .map(|(_, c)| c.clone())
            .collect()
    }

    fn events_at(&self, t: LocalInstant) -> Vec<Event> {
        self.events
            .iter()
            .filter(|(at, _)| *at == t)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

/// Runs `m` like a driver from `from` until `until`: answers each command
/// at once with `answer` (`None` leaves it unanswered), and wakes the
/// machine at every [`Machine::poll_timeout`] up to `until`.
fn run_until(
    m: &mut Machine,
    from: LocalInstant,
    until: LocalInstant,
    mut answer: impl FnMut(LocalInstant, &Command) -> Option<CommandResult>,
) -> Run {
    let mut run = Run {
        now: from,
        ..Run::default()
    };
    for _ in 0..100_000 {
        loop {
            let commands = drain(m);
            if commands.is_empty() {
                break;
            }
            let now = run.now;
            for c in commands {
                let reply = answer(now, &c);
                run.commands.push((now, c.clone()));
                if let Some(reply) = reply {
                    m.handle_result(now, c.id(), reply);
                }
            }
        }
        run.events
            .extend(events(m).into_iter().map(|e| (run.now, e)));
        match m.poll_timeout() {
            Some(next) if next <= until => {
                run.now = next.max(run.now);
                m.handle_timeout(run.now);
            }
            _ => return run,
        }
    }
    panic!("the machine never settled: {m:?}");
}
