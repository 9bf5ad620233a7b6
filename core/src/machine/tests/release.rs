//! Resign, stop, shutdown: Releasing → Follower / Stopped.

use super::*;
use crate::machine::{ReleasePhase, RoleState, StepDownReason};

#[test]
fn resign_drains_then_releases_then_notifies_then_holds_off() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    m.handle_resign(ms(100), &a);
    assert_eq!(
        events(&mut m),
        vec![
            Event::StoppedLeading {
                role: a.clone(),
                term: Term(1),
                reason: StepDownReason::Resigned
            },
            Event::DrainRequested { role: a.clone() }
        ]
    );
    assert_eq!(drain(&mut m), vec![]);
    assert!(!m.is_leader(&a, ms(100)));
    assert_eq!(
        m.state(&a),
        Some(RoleState::Releasing {
            phase: ReleasePhase::Draining { until: ms(5100) }
        })
    );
    m.handle_drained(ms(200), &a);
    assert_eq!(drain(&mut m), vec![release_cmd(3, &a, Some(1))]);
    assert_eq!(events(&mut m), vec![]);
    // A second "drained" changes nothing.
    m.handle_drained(ms(205), &a);
    assert_eq!(drain(&mut m), vec![]);
    // Notify only once the release is done.
    m.handle_result(ms(210), id(3), Ok(CommandOutput::Released));
    assert_eq!(drain(&mut m), vec![notify_cmd(4, &a)]);
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(m.state(&a), Some(RoleState::Follower));
    m.handle_result(ms(220), id(4), Ok(CommandOutput::Notified));
    // Held off for two retry intervals from the resign: a notification
    // (its own, or another node's) does not wake it.
    m.handle_release_notified(ms(500), &a);
    assert_eq!(drain(&mut m), vec![]);
    m.handle_notify_gap(ms(600));
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(m.poll_timeout(), Some(ms(2100)));
    m.handle_timeout(ms(2100));
    assert_eq!(drain(&mut m), vec![try_lock_cmd(5, &[&a])]);
}

#[test]
fn an_engine_that_notified_with_the_release_gets_no_notify_command() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    m.handle_resign(ms(100), &a);
    events(&mut m);
    m.handle_drained(ms(200), &a);
    assert_eq!(drain(&mut m), vec![release_cmd(3, &a, Some(1))]);
    m.handle_result(ms(210), id(3), Ok(CommandOutput::ReleasedAndNotified));
    // The release went out with the unlock: nothing more to send.
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(m.state(&a), Some(RoleState::Follower));
    assert_eq!(m.poll_timeout(), Some(ms(2100)));
    m.handle_timeout(ms(2100));
    // Ids go on from 4: no Notify took one.
    assert_eq!(drain(&mut m), vec![try_lock_cmd(4, &[&a])]);
}

#[test]
fn resign_releases_after_the_drain_timeout() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    m.handle_resign(ms(100), &a);
    events(&mut m);
    // The lease is kept renewed while draining.
    let run = run_until(&mut m, ms(100), ms(5100), |now, c| match c {
        Command::Renew { leases, .. } => Some(Ok(CommandOutput::Renew(RenewOutcome {
            db_now: db(now.as_nanos() as i64 / 1_000_000),
            renewed: leases.iter().map(|l| l.role.clone()).collect(),
        }))),
        Command::Validate { roles, .. } => Some(Ok(CommandOutput::Validate(roles.clone()))),
        _ => None,
    });
    assert_eq!(run.now, ms(5100));
    assert!(
        run.commands
            .iter()
            .any(|(t, c)| *t == ms(2010) && matches!(c, Command::Renew { .. }))
    );
    // No leadership events while draining, and none at the timeout.
    assert_eq!(run.events, vec![]);
    let releases: Vec<_> = run
        .commands
        .iter()
        .filter(|(_, c)| matches!(c, Command::Release { .. }))
        .collect();
    assert!(
        matches!(
            releases.as_slice(),
            [(t, Command::Release { term: Some(Term(1)), .. })] if *t == ms(5100)
        ),
        "{releases:?}"
    );
    assert!(
        !run.commands
            .iter()
            .any(|(_, c)| matches!(c, Command::Notify { .. }))
    );
}

#[test]
fn resign_as_follower_only_holds_off() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), denied(db(10), &a, None));
    m.handle_resign(ms(20), &a);
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(m.state(&a), Some(RoleState::Follower));
    assert_eq!(m.poll_timeout(), Some(ms(2020)));
    m.handle_release_notified(ms(30), &a);
    assert_eq!(drain(&mut m), vec![]);
}

#[test]
fn resign_while_elect_releases_without_leading() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), granted(db(10), &[&a]));
    drain(&mut m);
    let prev = lease(&a, "node-b", 4, db(5000));
    m.handle_result(ms(20), id(2), claimed(5, Some(prev), db(20)));
    assert!(matches!(m.state(&a), Some(RoleState::Elect { .. })));
    m.handle_resign(ms(30), &a);
    // It never said it led, so it does not say it stopped.
    assert_eq!(events(&mut m), vec![]);
    // The predecessor's lease still runs: the row this node claimed must
    // keep the next holder waiting for it, so it is not expired.
    assert_eq!(drain(&mut m), vec![release_cmd(3, &a, None)]);
    m.handle_result(ms(40), id(3), Ok(CommandOutput::Released));
    assert_eq!(drain(&mut m), vec![notify_cmd(4, &a)]);
    assert_eq!(m.state(&a), Some(RoleState::Follower));
    assert_eq!(m.poll_timeout(), Some(ms(1540)));
}

#[test]
fn resign_while_the_claim_is_in_flight_does_not_lead() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), granted(db(10), &[&a]));
    assert_eq!(drain(&mut m), vec![claim_cmd(2, &a)]);
    m.handle_resign(ms(15), &a);
    m.handle_result(ms(20), id(2), claimed(1, None, db(20)));
    assert_eq!(events(&mut m), vec![]);
    assert!(!m.is_leader(&a, ms(20)));
    // The claimed lease is expired and the lock given back.
    assert_eq!(drain(&mut m), vec![release_cmd(3, &a, Some(1))]);
}

#[test]
fn resign_while_trying_gives_a_granted_lock_back() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_resign(ms(5), &a);
    m.handle_result(ms(10), id(1), granted(db(10), &[&a]));
    assert_eq!(drain(&mut m), vec![release_cmd(2, &a, None)]);
    assert_eq!(events(&mut m), vec![]);
}

#[test]
fn stop_of_a_follower_stops_at_once() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), denied(db(10), &a, None));
    m.handle_stop(ms(20), &a);
    assert_eq!(events(&mut m), vec![Event::RoleStopped { role: a.clone() }]);
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(m.state(&a), Some(RoleState::Stopped));
    assert!(m.is_stopped());
    assert_eq!(m.poll_timeout(), None);
    // Added again, it campaigns again.
    m.add_role(ms(30), a.clone());
    assert_eq!(drain(&mut m), vec![try_lock_cmd(2, &[&a])]);
    assert!(!m.is_stopped());
}

#[test]
fn stop_while_trying_settles_on_the_result() {
    let mut m = machine();
    let (a, b) = (r("a"), r("b"));
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_stop(ms(5), &a);
    assert_eq!(events(&mut m), vec![]);
    assert!(!m.is_stopped());
    m.handle_result(ms(10), id(1), denied(db(10), &a, None));
    assert_eq!(events(&mut m), vec![Event::RoleStopped { role: a.clone() }]);
    assert!(m.is_stopped());
    // Granted after the stop: given back, then stopped.
    m.add_role(ms(20), b.clone());
    drain(&mut m);
    m.handle_stop(ms(25), &b);
    m.handle_result(ms(30), id(2), granted(db(30), &[&b]));
    assert_eq!(drain(&mut m), vec![release_cmd(3, &b, None)]);
    m.handle_result(ms(40), id(3), Ok(CommandOutput::Released));
    // Never claimed: freed without an announcement.
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(events(&mut m), vec![Event::RoleStopped { role: b.clone() }]);
    assert!(m.is_stopped());
}

#[test]
fn shutdown_twice_is_fine_and_ends_stopped() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    m.handle_shutdown(ms(100));
    assert_eq!(
        events(&mut m),
        vec![
            Event::StoppedLeading {
                role: a.clone(),
                term: Term(1),
                reason: StepDownReason::Shutdown
            },
            Event::DrainRequested { role: a.clone() }
        ]
    );
    assert_eq!(drain(&mut m), vec![]);
    m.handle_shutdown(ms(150));
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(drain(&mut m), vec![]);
    m.handle_drained(ms(200), &a);
    assert_eq!(drain(&mut m), vec![release_cmd(3, &a, Some(1))]);
    m.handle_shutdown(ms(205));
    assert_eq!(drain(&mut m), vec![]);
    m.handle_result(ms(210), id(3), Ok(CommandOutput::Released));
    assert_eq!(drain(&mut m), vec![notify_cmd(4, &a)]);
    assert_eq!(events(&mut m), vec![Event::RoleStopped { role: a.clone() }]);
    assert!(!m.is_stopped());
    m.handle_result(ms(220), id(4), Ok(CommandOutput::Notified));
    assert!(m.is_stopped());
    assert_eq!(m.poll_timeout(), None);
    m.handle_shutdown(ms(300));
    assert!(m.is_stopped());
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(drain(&mut m), vec![]);
}

#[test]
fn shutdown_of_many_roles_releases_each() {
    let mut m = machine();
    let (a, b) = (r("a"), r("b"));
    lead(&mut m, &a);
    m.add_role(ms(30), b.clone());
    drain(&mut m);
    m.handle_result(ms(40), id(3), denied(db(40), &b, None));
    m.handle_shutdown(ms(100));
    assert_eq!(
        events(&mut m),
        vec![
            Event::StoppedLeading {
                role: a.clone(),
                term: Term(1),
                reason: StepDownReason::Shutdown
            },
            Event::DrainRequested { role: a.clone() },
            Event::RoleStopped { role: b.clone() },
        ]
    );
    // Nobody drains: the drain timeout releases.
    m.handle_timeout(ms(5100));
    let commands = drain(&mut m);
    let release = commands
        .iter()
        .find(|c| matches!(c, Command::Release { .. }))
        .unwrap()
        .clone();
    assert_eq!(
        release,
        Command::Release {
            id: release.id(),
            role: a.clone(),
            term: Some(Term(1))
        }
    );
    // Results of the other commands never come; the release does.
    m.handle_result(ms(5110), release.id(), Ok(CommandOutput::Released));
    let notify = drain(&mut m);
    assert!(
        matches!(notify.as_slice(), [Command::Notify { role, .. }] if role == &a),
        "{notify:?}"
    );
    m.handle_result(ms(5120), notify[0].id(), Ok(CommandOutput::Notified));
    let run = run_until(&mut m, ms(5120), ms(20_000), |_, _| None);
    assert!(m.is_stopped(), "{run:?}");
    assert_eq!(m.state(&b), Some(RoleState::Stopped));
}

#[test]
fn elect_that_lets_go_after_the_wait_expires_its_lease() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), granted(db(10), &[&a]));
    drain(&mut m);
    // Only 100 ms of the predecessor's lease are left.
    let prev = lease(&a, "node-b", 4, db(120));
    m.handle_result(ms(20), id(2), claimed(5, Some(prev), db(20)));
    let Some(RoleState::Elect { lead_at }) = m.state(&a) else {
        panic!("expected elect");
    };
    m.handle_timeout(lead_at);
    events(&mut m);
    m.handle_resign(lead_at, &a);
    m.handle_drained(lead_at, &a);
    let commands = drain(&mut m);
    assert!(
        matches!(
            commands.as_slice(),
            [Command::Release {
                term: Some(Term(5)),
                ..
            }]
        ),
        "{commands:?}"
    );
}

#[test]
fn stop_while_claiming_over_a_running_lease_does_not_expire_it() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), granted(db(10), &[&a]));
    drain(&mut m);
    m.handle_stop(ms(15), &a);
    let prev = lease(&a, "node-b", 4, db(5000));
    m.handle_result(ms(20), id(2), claimed(5, Some(prev), db(20)));
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(drain(&mut m), vec![release_cmd(3, &a, None)]);
}

#[test]
fn a_held_off_node_ignores_its_own_echo_but_not_the_next_release() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    m.handle_resign(ms(100), &a);
    let cmds = drain(&mut m);
    assert!(cmds.is_empty(), "{cmds:?}");
    m.handle_drained(ms(110), &a);
    let release = drain(&mut m);
    assert!(
        matches!(release.as_slice(), [Command::Release { .. }]),
        "{release:?}"
    );
    m.handle_result(ms(120), release[0].id(), Ok(CommandOutput::Released));
    let notify = drain(&mut m);
    assert!(
        matches!(notify.as_slice(), [Command::Notify { .. }]),
        "{notify:?}"
    );
    // Held off until 2.1 s: the echo of our own release changes nothing.
    m.handle_release_notified(ms(130), &a);
    assert_eq!(drain(&mut m), vec![]);
    // The node that took over resigns too: try at once.
    m.handle_release_notified(ms(400), &a);
    let cmds = drain(&mut m);
    assert!(
        matches!(cmds.as_slice(), [Command::TryLock { roles, .. }] if roles == &vec![a.clone()]),
        "{cmds:?}"
    );
}

/// A resign that arrives while the role's claim is in flight must not be
/// lost: the claim comes back, and the node must not start leading.
#[test]
fn resign_while_the_claim_is_in_flight_is_not_lost() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), granted(db(10), &[&a]));
    assert_eq!(
        drain(&mut m),
        vec![Command::Claim {
            id: id(2),
            role: a.clone()
        }]
    );
    m.handle_resign(ms(15), &a);
    m.handle_result(ms(20), id(2), claimed(1, None, db(20)));
    let out = drain(&mut m);
    assert!(
        !events(&mut m)
            .iter()
            .any(|e| matches!(e, Event::StartedLeading { .. })),
        "the node led after resigning"
    );
    assert!(!m.is_leader(&a, ms(20)));
    assert!(
        matches!(out.as_slice(), [Command::Release { .. }]),
        "{out:?}"
    );
}

/// The same while the try-lock is in flight.
#[test]
fn resign_while_the_try_lock_is_in_flight_is_not_lost() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_resign(ms(5), &a);
    m.handle_result(ms(10), id(1), granted(db(10), &[&a]));
    let out = drain(&mut m);
    assert!(
        !out.iter().any(|c| matches!(c, Command::Claim { .. })),
        "{out:?}"
    );
    assert!(!m.is_leader(&a, ms(20)));
}
