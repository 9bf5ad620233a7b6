//! Lock validation and session loss.

use super::*;
use crate::machine::{ReleasePhase, RoleState, StepDownReason};

#[test]
fn validation_keeps_a_held_lock_on_its_cadence() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    assert_eq!(m.poll_timeout(), Some(ms(1010)));
    m.handle_timeout(ms(1010));
    assert_eq!(drain(&mut m), vec![validate_cmd(3, &[&a])]);
    m.handle_result(ms(1020), id(3), validated(&[&a]));
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(m.poll_timeout(), Some(ms(2010)));
    assert!(m.is_leader(&a, ms(1020)));
}

#[test]
fn validation_missing_a_role_is_lock_lost() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    m.handle_timeout(ms(1010));
    drain(&mut m);
    m.handle_result(ms(1020), id(3), validated(&[]));
    assert_eq!(
        events(&mut m),
        vec![Event::StoppedLeading {
            role: a.clone(),
            term: Term(1),
            reason: StepDownReason::LockLost
        }]
    );
    // Nothing to unlock and nothing to announce: the lock is gone.
    assert_eq!(drain(&mut m), vec![]);
    assert!(!m.is_leader(&a, ms(1020)));
    assert_eq!(m.state(&a), Some(RoleState::Follower));
    assert_eq!(m.term(&a), None);
    assert_eq!(m.poll_timeout(), Some(ms(2020)));
}

#[test]
fn validation_error_keeps_a_known_lock() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    m.handle_timeout(ms(1010));
    drain(&mut m);
    let err = transient();
    m.handle_result(ms(1020), id(3), Err(err.clone()));
    assert_eq!(events(&mut m), vec![failed("validate", &err)]);
    assert_eq!(drain(&mut m), vec![]);
    assert!(m.is_leader(&a, ms(1020)));
    assert_eq!(m.poll_timeout(), Some(ms(2010)));
}

#[test]
fn session_lost_steps_down_validates_and_unlocks_if_still_held() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    m.handle_session_lost(ms(100), "connection closed");
    assert_eq!(
        events(&mut m),
        vec![
            Event::SessionLost {
                reason: "connection closed".to_owned()
            },
            Event::StoppedLeading {
                role: a.clone(),
                term: Term(1),
                reason: StepDownReason::LockLost
            },
            Event::DrainRequested { role: a.clone() }
        ]
    );
    assert!(!m.is_leader(&a, ms(100)));
    assert_eq!(m.deadline(&a), None);
    assert_eq!(
        m.state(&a),
        Some(RoleState::Releasing {
            phase: ReleasePhase::Unlocking
        })
    );
    assert_eq!(drain(&mut m), vec![validate_cmd(3, &[&a])]);
    m.handle_result(ms(110), id(3), validated(&[&a]));
    assert_eq!(drain(&mut m), vec![release_cmd(4, &a, Some(1))]);
    m.handle_result(ms(120), id(4), Ok(CommandOutput::Released));
    assert_eq!(drain(&mut m), vec![notify_cmd(5, &a)]);
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(m.state(&a), Some(RoleState::Follower));
}

#[test]
fn session_lost_and_gone_returns_to_follower() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    m.handle_session_lost(ms(100), "connection closed");
    events(&mut m);
    drain(&mut m);
    m.handle_result(ms(110), id(3), validated(&[]));
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(m.state(&a), Some(RoleState::Follower));
    assert_eq!(m.poll_timeout(), Some(ms(1110)));
}

#[test]
fn session_lost_as_follower_only_reports() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), denied(db(10), &a, None));
    m.handle_session_lost(ms(20), "gone");
    assert_eq!(
        events(&mut m),
        vec![Event::SessionLost {
            reason: "gone".to_owned()
        }]
    );
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(m.state(&a), Some(RoleState::Follower));
}

#[test]
fn session_lost_while_draining_skips_the_drain() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    m.handle_resign(ms(100), &a);
    events(&mut m);
    m.handle_session_lost(ms(110), "gone");
    // It already said it stopped; it does not say so twice.
    assert_eq!(
        events(&mut m),
        vec![Event::SessionLost {
            reason: "gone".to_owned()
        }]
    );
    assert_eq!(drain(&mut m), vec![validate_cmd(3, &[&a])]);
    m.handle_result(ms(120), id(3), validated(&[]));
    assert_eq!(m.state(&a), Some(RoleState::Follower));
    // Held off since the resign.
    assert_eq!(m.poll_timeout(), Some(ms(2100)));
}

#[test]
fn release_waits_for_a_claim_still_in_flight() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), granted(db(10), &[&a]));
    assert_eq!(drain(&mut m), vec![claim_cmd(2, &a)]);
    // The session is reported lost while the claim is still out.
    m.handle_session_lost(ms(20), "connection closed");
    events(&mut m);
    let cmds = drain(&mut m);
    assert_eq!(cmds, vec![validate_cmd(3, &[&a])]);
    // Still held after all: give it back, but not while the claim runs.
    m.handle_result(ms(30), id(3), validated(&[&a]));
    assert_eq!(drain(&mut m), vec![]);
    // The (now stale) claim answers; only then does the release go out.
    m.handle_result(ms(40), id(2), claimed(1, None, db(40)));
    assert_eq!(drain(&mut m), vec![release_cmd(4, &a, None)]);
    assert!(!m.is_leader(&a, ms(40)));
}
