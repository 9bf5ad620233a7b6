//! Follower → Candidate → Elect → Leader.

use super::*;
use crate::machine::{ObservedLeader, RoleState};

#[test]
fn add_role_sends_try_lock_at_once() {
    let mut m = machine();
    m.add_role(ms(0), r("a"));
    assert_eq!(
        drain(&mut m),
        vec![Command::TryLock {
            id: id(1),
            roles: vec![r("a")]
        }]
    );
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(m.state(&r("a")), Some(RoleState::Candidate));
    assert!(!m.is_leader(&r("a"), ms(0)));
    // Woken when the attempt times out.
    assert_eq!(m.poll_timeout(), Some(ms(1500)));
}

#[test]
fn granted_lock_sends_claim() {
    let mut m = machine();
    m.add_role(ms(0), r("a"));
    drain(&mut m);
    m.handle_result(ms(10), id(1), granted(db(10), &[&r("a")]));
    assert_eq!(
        drain(&mut m),
        vec![Command::Claim {
            id: id(2),
            role: r("a")
        }]
    );
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(m.state(&r("a")), Some(RoleState::Candidate));
    assert!(!m.is_leader(&r("a"), ms(10)));
}

#[test]
fn claim_without_predecessor_leads_at_once() {
    let mut m = machine();
    lead(&mut m, &r("a"));
    assert_eq!(m.state(&r("a")), Some(RoleState::Leader { since: ms(20) }));
    assert!(m.is_leader(&r("a"), ms(9800) - Duration::from_nanos(1)));
    assert!(!m.is_leader(&r("a"), ms(9800)));
    assert_eq!(m.observed_leader(&r("a")), None);
}

#[test]
fn claim_with_expired_predecessor_leads_at_once() {
    let mut m = machine();
    m.add_role(ms(0), r("a"));
    drain(&mut m);
    m.handle_result(ms(10), id(1), granted(db(10), &[&r("a")]));
    drain(&mut m);
    let prev = lease(&r("a"), "node-b", 4, db(20));
    m.handle_result(ms(20), id(2), claimed(5, Some(prev), db(20)));
    assert_eq!(
        events(&mut m),
        vec![Event::StartedLeading {
            role: r("a"),
            term: Term(5),
            deadline: ms(9800)
        }]
    );
}

#[test]
fn wait_for_lease_waits_out_an_unexpired_predecessor() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), granted(db(10), &[&a]));
    drain(&mut m);
    // The predecessor's lease runs 5 s past the claim in database time.
    let prev = lease(&a, "node-b", 4, db(20 + 5000));
    m.handle_result(ms(20), id(2), claimed(5, Some(prev), db(20)));
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(drain(&mut m), vec![]);
    let Some(RoleState::Elect { lead_at }) = m.state(&a) else {
        panic!("expected elect, got {:?}", m.state(&a));
    };
    // lead_at ≥ now + remaining/(1-ρ) + margin = 20 ms + 5.005005 s + 0.2 s.
    let min_wait_ns = (5e9 / (1.0 - 1e-3) + 2e8) as u64;
    assert!(lead_at.saturating_since(ms(20)).as_nanos() as u64 >= min_wait_ns);
    assert!(lead_at.saturating_since(ms(20)) < Duration::from_millis(5206));
    assert_eq!(m.term(&a), Some(Term(5)));
    assert!(!m.is_leader(&a, ms(20)));
    // Elect renews its lease and validates its lock like a leader.
    m.handle_timeout(ms(1010));
    assert_eq!(drain(&mut m), vec![validate_cmd(3, &[&a])]);
    m.handle_result(ms(1020), id(3), validated(&[&a]));
    m.handle_timeout(ms(2010));
    assert_eq!(
        drain(&mut m),
        vec![Command::Renew {
            id: id(4),
            leases: vec![held(&a, 5)]
        }]
    );
    m.handle_result(ms(2020), id(4), renewed(db(2020), &[&a]));
    // Not leading yet, so no DeadlineExtended.
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(m.deadline(&a), Some(deadline_after(ms(2010))));
    m.handle_timeout(ms(2030));
    assert_eq!(drain(&mut m), vec![validate_cmd(5, &[&a])]);
    m.handle_result(ms(2040), id(5), validated(&[&a]));
    m.handle_timeout(ms(3040));
    assert_eq!(drain(&mut m), vec![validate_cmd(6, &[&a])]);
    m.handle_result(ms(3050), id(6), validated(&[&a]));
    m.handle_timeout(ms(4050));
    assert_eq!(
        drain(&mut m),
        vec![
            Command::Renew {
                id: id(7),
                leases: vec![held(&a, 5)]
            },
            validate_cmd(8, &[&a])
        ]
    );
    m.handle_result(ms(4060), id(7), renewed(db(4060), &[&a]));
    m.handle_result(ms(4060), id(8), validated(&[&a]));
    m.handle_timeout(ms(5060));
    assert_eq!(drain(&mut m), vec![validate_cmd(9, &[&a])]);
    m.handle_result(ms(5070), id(9), validated(&[&a]));
    assert_eq!(events(&mut m), vec![]);
    // One nanosecond early: still elect.
    m.handle_timeout(lead_at - Duration::from_nanos(1));
    assert!(matches!(m.state(&a), Some(RoleState::Elect { .. })));
    assert!(!m.is_leader(&a, lead_at - Duration::from_nanos(1)));
    assert_eq!(events(&mut m), vec![]);
    m.handle_timeout(lead_at);
    assert_eq!(
        events(&mut m),
        vec![Event::StartedLeading {
            role: a.clone(),
            term: Term(5),
            deadline: deadline_after(ms(4050)),
        }]
    );
    assert!(m.is_leader(&a, lead_at));
    assert_eq!(m.state(&a), Some(RoleState::Leader { since: lead_at }));
}

#[test]
fn elect_wakes_at_lead_at() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), granted(db(10), &[&a]));
    drain(&mut m);
    // Only 300 ms left of the predecessor's lease.
    let prev = lease(&a, "node-b", 1, db(320));
    m.handle_result(ms(20), id(2), claimed(2, Some(prev), db(20)));
    let Some(RoleState::Elect { lead_at }) = m.state(&a) else {
        panic!("expected elect");
    };
    assert_eq!(
        lead_at,
        ms(20) + config().local_wait_for_db(Duration::from_millis(300))
    );
    assert_eq!(m.poll_timeout(), Some(lead_at));
}

#[test]
fn elect_whose_wait_outlasts_the_deadline_never_leads_unrenewed() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), granted(db(10), &[&a]));
    drain(&mut m);
    // The predecessor's lease outlasts this claim's window (9.8 s).
    let prev = lease(&a, "node-b", 1, db(20 + 9900));
    m.handle_result(ms(20), id(2), claimed(2, Some(prev), db(20)));
    assert!(matches!(m.state(&a), Some(RoleState::Elect { .. })));
    // Nothing is answered: at the deadline the elect lets go, never leading.
    let mut now = ms(20);
    while now < ms(9800) {
        now = m.poll_timeout().unwrap();
        m.handle_timeout(now);
        drain(&mut m);
    }
    assert_eq!(now, ms(9800));
    assert!(matches!(
        m.state(&a),
        Some(RoleState::Releasing { .. }) | Some(RoleState::Follower)
    ));
    assert!(
        !events(&mut m)
            .iter()
            .any(|e| matches!(e, Event::StartedLeading { .. }))
    );
}

#[test]
fn immediate_policy_leads_despite_an_unexpired_predecessor() {
    let cfg = Config::builder()
        .retry_jitter(Duration::ZERO)
        .takeover_policy(TakeoverPolicy::Immediate)
        .build()
        .unwrap();
    let mut m = machine_with(cfg);
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), granted(db(10), &[&a]));
    drain(&mut m);
    let prev = lease(&a, "node-b", 4, db(20 + 5000));
    m.handle_result(ms(20), id(2), claimed(5, Some(prev), db(20)));
    assert_eq!(
        events(&mut m),
        vec![Event::StartedLeading {
            role: a.clone(),
            term: Term(5),
            deadline: ms(9800)
        }]
    );
    assert!(m.is_leader(&a, ms(20)));
}

#[test]
fn denied_follower_observes_the_leader_and_retries() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    let row = lease(&a, "node-b", 3, db(5000));
    m.handle_result(ms(10), id(1), denied(db(10), &a, Some(row)));
    assert_eq!(drain(&mut m), vec![]);
    let leader = ObservedLeader {
        holder: "node-b".to_owned(),
        term: Term(3),
    };
    assert_eq!(
        events(&mut m),
        vec![Event::LeaderObserved {
            role: a.clone(),
            leader: Some(leader.clone())
        }]
    );
    assert_eq!(m.state(&a), Some(RoleState::Follower));
    assert_eq!(m.observed_leader(&a), Some(&leader));
    // Retry after the retry interval (no jitter).
    assert_eq!(m.poll_timeout(), Some(ms(1010)));
    m.handle_timeout(ms(1009));
    assert_eq!(drain(&mut m), vec![]);
    m.handle_timeout(ms(1010));
    assert_eq!(drain(&mut m), vec![try_lock_cmd(2, &[&a])]);
    // Same leader again: no new event. Its lease then runs out: nobody.
    m.handle_result(
        ms(1020),
        id(2),
        denied(db(1020), &a, Some(lease(&a, "node-b", 3, db(5000)))),
    );
    assert_eq!(events(&mut m), vec![]);
    m.handle_timeout(ms(2020));
    drain(&mut m);
    m.handle_result(
        ms(2030),
        id(3),
        denied(db(6000), &a, Some(lease(&a, "node-b", 3, db(5000)))),
    );
    assert_eq!(
        events(&mut m),
        vec![Event::LeaderObserved {
            role: a.clone(),
            leader: None
        }]
    );
}

#[test]
fn due_followers_are_tried_in_one_batch() {
    let mut m = machine();
    m.add_role(ms(0), r("a"));
    // A try is in flight: b and c wait for it.
    m.add_role(ms(0), r("b"));
    m.add_role(ms(0), r("c"));
    assert_eq!(
        drain(&mut m),
        vec![Command::TryLock {
            id: id(1),
            roles: vec![r("a")]
        }]
    );
    m.handle_result(ms(10), id(1), denied(db(10), &r("a"), None));
    assert_eq!(
        drain(&mut m),
        vec![Command::TryLock {
            id: id(2),
            roles: vec![r("b"), r("c")]
        }]
    );
    let both = Ok(CommandOutput::TryLock(TryLockOutcome {
        db_now: db(20),
        attempts: vec![
            LockAttempt {
                role: r("c"),
                granted: true,
                lease: None,
            },
            LockAttempt {
                role: r("b"),
                granted: false,
                lease: None,
            },
        ],
    }));
    m.handle_result(ms(20), id(2), both);
    assert_eq!(
        drain(&mut m),
        vec![Command::Claim {
            id: id(3),
            role: r("c")
        }]
    );
    assert_eq!(m.state(&r("b")), Some(RoleState::Follower));
    // a is due at 1010, b at 1020 (and c's first validation too): one
    // batch of both once both are due.
    m.handle_timeout(ms(1020));
    assert_eq!(
        drain(&mut m),
        vec![
            Command::Validate {
                id: id(4),
                roles: vec![r("c")]
            },
            Command::TryLock {
                id: id(5),
                roles: vec![r("a"), r("b")]
            }
        ]
    );
}

#[test]
fn release_notification_wakes_a_follower_at_once() {
    let mut m = machine();
    let a = r("a");
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), denied(db(10), &a, None));
    assert_eq!(drain(&mut m), vec![]);
    m.handle_release_notified(ms(100), &a);
    assert_eq!(drain(&mut m), vec![try_lock_cmd(2, &[&a])]);
    // A notification for a role being tried changes nothing.
    m.handle_release_notified(ms(101), &a);
    assert_eq!(drain(&mut m), vec![]);
}

#[test]
fn notify_gap_polls_every_follower() {
    let mut m = machine();
    m.add_role(ms(0), r("a"));
    m.add_role(ms(0), r("b"));
    drain(&mut m);
    m.handle_result(ms(10), id(1), denied(db(10), &r("a"), None));
    drain(&mut m);
    m.handle_result(ms(20), id(2), denied(db(20), &r("b"), None));
    assert_eq!(drain(&mut m), vec![]);
    m.handle_notify_gap(ms(30));
    assert_eq!(
        drain(&mut m),
        vec![Command::TryLock {
            id: id(3),
            roles: vec![r("a"), r("b")]
        }]
    );
}

#[test]
fn idle_session_is_pinged() {
    let cfg = Config::builder()
        .retry_jitter(Duration::ZERO)
        .retry_interval(Duration::from_secs(9))
        .keepalive_interval(Duration::from_secs(3))
        .build()
        .unwrap();
    let mut m = machine_with(cfg);
    m.add_role(ms(0), r("a"));
    drain(&mut m);
    m.handle_result(ms(10), id(1), denied(db(10), &r("a"), None));
    assert_eq!(m.poll_timeout(), Some(ms(3000)));
    m.handle_timeout(ms(3000));
    assert_eq!(drain(&mut m), vec![Command::Ping { id: id(2) }]);
    m.handle_result(ms(3010), id(2), Ok(CommandOutput::Ping));
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(m.poll_timeout(), Some(ms(6000)));
}

#[test]
fn followers_that_start_apart_share_one_retry_round() {
    let mut m = machine();
    let (a, b) = (r("a"), r("b"));
    m.add_role(ms(0), a.clone());
    drain(&mut m);
    m.handle_result(ms(10), id(1), denied(db(10), &a, None));
    m.add_role(ms(300), b.clone());
    assert_eq!(drain(&mut m), vec![try_lock_cmd(2, &[&b])]);
    // b is denied 300 ms later than a, yet joins a's round at 1010 ms.
    m.handle_result(ms(310), id(2), denied(db(310), &b, None));
    assert_eq!(m.poll_timeout(), Some(ms(1010)));
    m.handle_timeout(ms(1010));
    assert_eq!(drain(&mut m), vec![try_lock_cmd(3, &[&a, &b])]);
}
