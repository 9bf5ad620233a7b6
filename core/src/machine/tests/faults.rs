//! Command errors and timeouts, unknown locks, session resets, zombies.

use super::*;
use crate::backend::PreemptOutcome;
use crate::machine::{ReleasePhase, RoleState, StepDownReason};

fn attempt_timeout() -> BackendError {
    BackendError::Timeout(Duration::from_millis(1500))
}

#[test]
fn unanswered_try_lock_times_out_and_the_lock_is_validated() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    assert_eq!(m.poll_timeout(), Some(ms(1500)));
    m.handle_timeout(ms(1499));
    assert_eq!(events(&mut m), vec![]);
    m.handle_timeout(ms(1500));
    assert_eq!(events(&mut m), vec![failed("try_lock", &attempt_timeout())]);
    // It may have been granted: find out before anything else.
    assert_eq!(drain(&mut m), vec![validate_cmd(2, &[&a])]);
    assert_eq!(
        m.state(&a),
        Some(RoleState::Releasing {
            phase: ReleasePhase::Unlocking
        })
    );
    // The late result is ignored.
    m.handle_result(ms(1600), id(1), granted(db(1600), &[&a]));
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(events(&mut m), vec![]);
    m.handle_result(ms(1610), id(2), validated(&[]));
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(m.state(&a), Some(RoleState::Follower));
    assert_eq!(m.poll_timeout(), Some(ms(2610)));
}

#[test]
fn try_lock_error_validates_and_unlocks_a_lock_that_was_granted() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    let err = transient();
    m.handle_result(ms(10), id(1), Err(err.clone()));
    assert_eq!(events(&mut m), vec![failed("try_lock", &err)]);
    assert_eq!(drain(&mut m), vec![validate_cmd(2, &[&a])]);
    m.handle_result(ms(20), id(2), validated(&[&a]));
    assert_eq!(drain(&mut m), vec![release_cmd(3, &a, None)]);
    m.handle_result(ms(30), id(3), Ok(CommandOutput::Released));
    // Never claimed: freed without an announcement.
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(m.state(&a), Some(RoleState::Follower));
    assert_eq!(m.poll_timeout(), Some(ms(1030)));
}

#[test]
fn failed_validation_of_an_unknown_lock_resets_the_session() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), Err(transient()));
    drain(&mut m);
    events(&mut m);
    let err = transient();
    m.handle_result(ms(20), id(2), Err(err.clone()));
    assert_eq!(events(&mut m), vec![failed("validate", &err)]);
    assert_eq!(drain(&mut m), vec![Command::ResetSession { id: id(3) }]);
    // Nothing else goes out while the session is being reset.
    m.handle_timeout(ms(1000));
    assert_eq!(drain(&mut m), vec![]);
    m.handle_result(ms(1010), id(3), Ok(CommandOutput::Reset));
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(m.state(&a), Some(RoleState::Follower));
    assert_eq!(m.poll_timeout(), Some(ms(2010)));
    m.handle_timeout(ms(2010));
    assert_eq!(drain(&mut m), vec![try_lock_cmd(4, &[&a])]);
}

#[test]
fn session_reset_steps_every_leader_down() {
    let mut m = machine();
    let (a, b) = (r("a"), r("b"));
    lead(&mut m, &a);
    m.add_role(ms(30), b.clone());
    assert_eq!(drain(&mut m), vec![try_lock_cmd(3, &[&b])]);
    m.handle_result(ms(40), id(3), Err(transient()));
    assert_eq!(drain(&mut m), vec![validate_cmd(4, &[&a, &b])]);
    m.handle_result(ms(50), id(4), Err(transient()));
    // Leaders step down when the reset is decided, not when it completes.
    assert!(!m.is_leader(&a, ms(50)));
    assert_eq!(drain(&mut m), vec![Command::ResetSession { id: id(5) }]);
    m.handle_result(ms(60), id(5), Ok(CommandOutput::Reset));
    assert_eq!(
        events(&mut m),
        vec![
            failed("try_lock", &transient()),
            failed("validate", &transient()),
            Event::StoppedLeading {
                role: a.clone(),
                term: Term(1),
                reason: StepDownReason::LockLost
            }
        ]
    );
    assert!(!m.is_leader(&a, ms(60)));
    assert_eq!(m.state(&a), Some(RoleState::Follower));
    assert_eq!(m.state(&b), Some(RoleState::Follower));
}

#[test]
fn claim_error_gives_the_lock_back() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), granted(db(10), &[&a]));
    drain(&mut m);
    let err = transient();
    m.handle_result(ms(20), id(2), Err(err.clone()));
    assert_eq!(events(&mut m), vec![failed("claim", &err)]);
    assert_eq!(drain(&mut m), vec![release_cmd(3, &a, None)]);
    m.handle_result(ms(30), id(3), Ok(CommandOutput::Released));
    // No claim, nothing taken over: the release is not announced.
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(m.state(&a), Some(RoleState::Follower));
}

/// Issue 10 item 11, the rare resign that left the role leaderless: a
/// standby's try-lock lands between the resigning leader's unlock and its
/// commit, so its claim finds the row still locked (`Busy`) and it lets the
/// lock go again. It used to announce that release; the resigned leader,
/// whose hold-off had already seen the echo of its own release, took the
/// second one for "the node that took over released", tried at once, won,
/// and led again — while the standbys waited for the next retry round and
/// found it leading. A lock held without a claim is no longer announced.
#[test]
fn a_busy_claim_releases_without_announcing() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), granted(db(10), &[&a]));
    drain(&mut m);
    let busy = BackendError::Busy("the lease row is locked".to_owned());
    m.handle_result(ms(20), id(2), Err(busy.clone()));
    assert_eq!(events(&mut m), vec![failed("claim", &busy)]);
    assert_eq!(drain(&mut m), vec![release_cmd(3, &a, None)]);
    m.handle_result(ms(30), id(3), Ok(CommandOutput::Released));
    assert_eq!(
        drain(&mut m),
        vec![],
        "a lock held without a claim was announced"
    );
    // The resigned node's side: its own echo, then a release by a node that
    // really took over, ends its hold-off; nothing else does.
    let mut old = machine();
    lead(&mut old, &a);
    old.handle_resign(ms(100), &a);
    old.handle_drained(ms(100), &a);
    drain(&mut old);
    old.handle_result(ms(110), id(3), Ok(CommandOutput::Released));
    drain(&mut old);
    old.handle_release_notified(ms(120), &a); // its own echo
    assert_eq!(drain(&mut old), vec![]);
}

#[test]
fn release_error_leaves_the_lock_unknown_until_validated() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    m.handle_resign(ms(100), &a);
    m.handle_drained(ms(100), &a);
    events(&mut m);
    assert_eq!(drain(&mut m), vec![release_cmd(3, &a, Some(1))]);
    let err = transient();
    m.handle_result(ms(110), id(3), Err(err.clone()));
    assert_eq!(events(&mut m), vec![failed("release", &err)]);
    assert_eq!(drain(&mut m), vec![validate_cmd(4, &[&a])]);
    m.handle_result(ms(120), id(4), validated(&[&a]));
    assert_eq!(drain(&mut m), vec![release_cmd(5, &a, Some(1))]);
    m.handle_result(ms(130), id(5), Ok(CommandOutput::Released));
    assert_eq!(drain(&mut m), vec![notify_cmd(6, &a)]);
    assert_eq!(events(&mut m), vec![]);
}

#[test]
fn misconfigured_error_is_reported_not_retryable() {
    let mut m = machine();
    m.add_role(ms(0), r("a"));
    drain(&mut m);
    let err = BackendError::Misconfigured("transaction pooler".to_owned());
    m.handle_result(ms(10), id(1), Err(err.clone()));
    assert_eq!(
        events(&mut m),
        vec![Event::CommandFailed {
            command: "try_lock",
            error: "transaction pooler".to_owned(),
            retryable: false
        }]
    );
}

#[test]
fn wrong_output_kind_is_reported() {
    let mut m = machine();
    m.add_role(ms(0), r("a"));
    drain(&mut m);
    m.handle_result(ms(10), id(1), Ok(CommandOutput::Ping));
    let evs = events(&mut m);
    assert!(
        matches!(
            evs.as_slice(),
            [Event::CommandFailed {
                command: "driver",
                retryable: false,
                ..
            }]
        ),
        "{evs:?}"
    );
}

#[test]
fn results_of_unknown_commands_are_ignored() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    m.handle_result(ms(30), id(99), renewed(db(30), &[&a]));
    m.handle_result(ms(30), id(2), claimed(9, None, db(30)));
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(m.term(&a), Some(Term(1)));
}

fn zombie_config(preempt: bool) -> Config {
    Config::builder()
        .retry_jitter(Duration::ZERO)
        .preempt_zombies(preempt)
        .zombie_grace(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A try-lock denied by a holder whose lease ended at db(5000).
fn denied_by_zombie(db_now: DbTimestamp) -> CommandResult {
    denied(db_now, &r("a"), Some(lease(&r("a"), "node-z", 3, db(5000))))
}

#[test]
fn zombie_is_preempted_only_past_the_grace() {
    let mut m = machine_with(zombie_config(true));
    m.add_role(ms(0), r("a"));
    drain(&mut m);
    // Expired by exactly the grace: not yet.
    m.handle_result(ms(10), id(1), denied_by_zombie(db(10_000)));
    assert_eq!(drain(&mut m), vec![]);
    m.handle_timeout(ms(1010));
    assert_eq!(
        drain(&mut m),
        vec![Command::TryLock {
            id: id(2),
            roles: vec![r("a")]
        }]
    );
    m.handle_result(ms(1020), id(2), denied_by_zombie(db(10_001)));
    assert_eq!(
        drain(&mut m),
        vec![Command::Preempt {
            id: id(3),
            lease: lease(&r("a"), "node-z", 3, db(5000)),
            grace: Duration::from_secs(5)
        }]
    );
    m.handle_result(
        ms(1030),
        id(3),
        Ok(CommandOutput::Preempt(PreemptOutcome::Terminated)),
    );
    assert_eq!(
        events(&mut m),
        vec![Event::ZombiePreempted {
            role: r("a"),
            holder: "node-z".to_owned()
        }]
    );
    // Tried again soon (a tenth of the retry interval).
    assert_eq!(m.poll_timeout(), Some(ms(1130)));
    m.handle_timeout(ms(1130));
    assert_eq!(
        drain(&mut m),
        vec![Command::TryLock {
            id: id(4),
            roles: vec![r("a")]
        }]
    );
}

#[test]
fn zombie_is_left_alone_when_preemption_is_off() {
    let mut m = machine_with(zombie_config(false));
    m.add_role(ms(0), r("a"));
    drain(&mut m);
    m.handle_result(ms(10), id(1), denied_by_zombie(db(100_000)));
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(events(&mut m), vec![]);
}

#[test]
fn preemption_not_permitted_is_reported_once() {
    let mut m = machine_with(zombie_config(true));
    m.add_role(ms(0), r("a"));
    drain(&mut m);
    m.handle_result(ms(10), id(1), denied_by_zombie(db(20_000)));
    assert!(matches!(
        drain(&mut m).as_slice(),
        [Command::Preempt { .. }]
    ));
    m.handle_result(
        ms(20),
        id(2),
        Ok(CommandOutput::Preempt(PreemptOutcome::NotPermitted)),
    );
    assert_eq!(
        events(&mut m),
        vec![Event::PreemptNotPermitted { role: r("a") }]
    );
    // It keeps waiting for the lock, without trying to preempt again.
    m.handle_timeout(ms(1010));
    assert_eq!(
        drain(&mut m),
        vec![Command::TryLock {
            id: id(3),
            roles: vec![r("a")]
        }]
    );
    m.handle_result(ms(1020), id(3), denied_by_zombie(db(21_000)));
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(events(&mut m), vec![]);
}

#[test]
fn preempt_not_zombie_is_not_repeated_for_the_same_row() {
    let mut m = machine_with(zombie_config(true));
    m.add_role(ms(0), r("a"));
    drain(&mut m);
    m.handle_result(ms(10), id(1), denied_by_zombie(db(20_000)));
    drain(&mut m);
    m.handle_result(
        ms(20),
        id(2),
        Ok(CommandOutput::Preempt(PreemptOutcome::NotZombie)),
    );
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(m.poll_timeout(), Some(ms(1010)));
    // The same row again: no zombie behind it, so no second preemption.
    m.handle_timeout(ms(1010));
    drain(&mut m);
    m.handle_result(ms(1020), id(3), denied_by_zombie(db(21_000)));
    assert_eq!(drain(&mut m), vec![]);
    // Another row (a new term): worth a try, and a failed try changes
    // nothing and may be repeated.
    m.handle_timeout(ms(2020));
    drain(&mut m);
    let newer = lease(&r("a"), "node-z", 4, db(5000));
    m.handle_result(ms(2030), id(4), denied(db(22_000), &r("a"), Some(newer)));
    assert!(matches!(
        drain(&mut m).as_slice(),
        [Command::Preempt {
            id: CommandId(5),
            ..
        }]
    ));
    m.handle_result(ms(2040), id(5), Err(transient()));
    assert_eq!(events(&mut m), vec![failed("preempt", &transient())]);
    assert_eq!(drain(&mut m), vec![]);
}

/// Seed 1415 of the simulator: one role's lock is held by a session its
/// lease row does not name, so preempting it never helps; with one
/// preemption in flight at a time and roles visited in the same order, the
/// other role's real zombie was never preempted.
#[test]
fn a_futile_preemption_does_not_starve_another_role() {
    let mut m = machine_with(zombie_config(true));
    m.add_role(ms(0), r("a"));
    m.add_role(ms(0), r("b"));
    let zombie = |role: &str| Some(lease(&r(role), "node-z", 3, db(5000)));
    let both = |now| {
        Ok(CommandOutput::TryLock(TryLockOutcome {
            db_now: now,
            attempts: vec![
                LockAttempt {
                    role: r("a"),
                    granted: false,
                    lease: zombie("a"),
                },
                LockAttempt {
                    role: r("b"),
                    granted: false,
                    lease: zombie("b"),
                },
            ],
        }))
    };
    // Answer every try-lock of a round with both zombies; return the
    // preemptions sent.
    let round = |m: &mut Machine, at: u64, db_now| {
        let mut preempts = Vec::new();
        let mut pending = drain(m);
        while let Some(c) = pending.pop() {
            match c {
                Command::TryLock { id, .. } => {
                    m.handle_result(ms(at), id, both(db_now));
                    pending.extend(drain(m));
                }
                Command::Preempt { id, lease, .. } => preempts.push((id, lease.role)),
                other => panic!("unexpected {other:?}"),
            }
        }
        preempts
    };
    let first = round(&mut m, 10, db(20_000));
    assert_eq!(first.len(), 1, "{first:?}");
    let (pid, futile_role) = first[0].clone();
    m.handle_result(
        ms(20),
        pid,
        Ok(CommandOutput::Preempt(PreemptOutcome::NotZombie)),
    );
    // The next round(s), until the node tries again with a preemption.
    let mut second = Vec::new();
    for _ in 0..4 {
        let Some(t) = m.poll_timeout() else { break };
        m.handle_timeout(t);
        second = round(&mut m, t.as_nanos() / 1_000_000 + 1, db(21_000));
        if !second.is_empty() {
            break;
        }
    }
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second[0].1, futile_role, "the futile role was tried again");
}

#[test]
fn no_busy_loop_while_the_session_resets() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), Err(transient()));
    drain(&mut m);
    m.handle_result(ms(20), id(2), Err(transient()));
    assert_eq!(drain(&mut m), vec![Command::ResetSession { id: id(3) }]);
    // The unknown lock would want validating "now", but nothing can go out
    // until the reset is done: wake up for the reset's timeout, not before.
    assert_eq!(m.poll_timeout(), Some(ms(1520)));
}

#[test]
fn failed_reset_is_retried_and_nothing_else_goes_out() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), Err(transient()));
    drain(&mut m);
    m.handle_result(ms(20), id(2), Err(transient()));
    assert_eq!(drain(&mut m), vec![Command::ResetSession { id: id(3) }]);
    events(&mut m);
    // The reset times out: the session may still hold the lock.
    m.handle_timeout(ms(1520));
    assert_eq!(
        events(&mut m),
        vec![failed("reset_session", &attempt_timeout())]
    );
    assert_eq!(drain(&mut m), vec![Command::ResetSession { id: id(4) }]);
    assert_eq!(
        m.state(&a),
        Some(RoleState::Releasing {
            phase: ReleasePhase::Unlocking
        })
    );
    m.handle_result(ms(1530), id(4), Ok(CommandOutput::Reset));
    assert_eq!(m.state(&a), Some(RoleState::Follower));
}

#[test]
fn claim_failing_with_session_lost_validates_instead_of_releasing() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), granted(db(10), &[&a]));
    drain(&mut m);
    let err = session_lost();
    m.handle_result(ms(20), id(2), Err(err.clone()));
    assert_eq!(
        events(&mut m),
        vec![
            failed("claim", &err),
            Event::SessionLost {
                reason: err.to_string()
            }
        ]
    );
    assert_eq!(drain(&mut m), vec![validate_cmd(3, &[&a])]);
}

/// Leads `a`, loses the lease at the first renew (2020 ms): the lock's
/// `Release` #5 is in flight from 2020 ms until it times out at 3520 ms.
fn lease_lost_with_release_in_flight(m: &mut Machine, a: &Role) {
    lead(m, a);
    m.handle_timeout(ms(1010));
    drain(m);
    m.handle_result(ms(1020), id(3), validated(&[a]));
    m.handle_timeout(ms(2010));
    assert_eq!(
        drain(m),
        vec![Command::Renew {
            id: id(4),
            leases: vec![held(a, 1)]
        }]
    );
    m.handle_result(ms(2015), id(4), renewed(db(2015), &[]));
    assert_eq!(drain(m), vec![release_cmd(5, a, None)]);
    events(m);
}

#[test]
fn try_lock_waits_for_an_earlier_release_of_the_same_lock() {
    let mut m = machine();
    let a = r("a");
    lease_lost_with_release_in_flight(&mut m, &a);
    // The session is reported lost: the lock is in doubt, the release
    // stale. Validation finds the lock gone.
    m.handle_session_lost(ms(2030), "gone");
    assert_eq!(drain(&mut m), vec![validate_cmd(6, &[&a])]);
    m.handle_result(ms(2040), id(6), validated(&[]));
    assert_eq!(m.state(&a), Some(RoleState::Follower));
    // Due at 3040, but the old release may still run and would unlock a
    // new hold: no try until it is settled.
    m.handle_timeout(ms(3040));
    let early = drain(&mut m);
    assert!(
        !early.iter().any(|c| matches!(c, Command::TryLock { .. })),
        "{early:?}"
    );
    m.handle_timeout(ms(3520));
    let later = drain(&mut m);
    assert!(
        later.iter().any(|c| matches!(c, Command::TryLock { .. })),
        "{later:?}"
    );
}

#[test]
fn release_is_sent_again_when_an_earlier_one_went_stale() {
    let mut m = machine();
    let a = r("a");
    lease_lost_with_release_in_flight(&mut m, &a);
    m.handle_session_lost(ms(2030), "spurious");
    drain(&mut m);
    // Still held after all: it must be released, but the stale release
    // is still in flight.
    m.handle_result(ms(2040), id(6), validated(&[&a]));
    assert_eq!(drain(&mut m), vec![]);
    m.handle_timeout(ms(3040));
    assert_eq!(drain(&mut m), vec![validate_cmd(7, &[&a])]);
    m.handle_result(ms(3050), id(7), validated(&[&a]));
    // The stale release times out (its result would be ignored anyway):
    // a new one goes out.
    m.handle_timeout(ms(3520));
    assert_eq!(drain(&mut m), vec![release_cmd(8, &a, None)]);
    m.handle_result(ms(3530), id(8), Ok(CommandOutput::Released));
    // The lease was lost (no term of ours to announce): not announced.
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(m.state(&a), Some(RoleState::Follower));
}
