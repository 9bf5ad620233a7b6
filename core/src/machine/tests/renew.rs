//! Leader ⇄ Suspect, renewals, and stepping down at the deadline.

use super::*;
use crate::machine::{RoleState, StepDownReason};

/// Answers the first validation (#3 at 1010 ms) of [`lead`].
fn validate_once(m: &mut Machine, a: &Role) {
    m.handle_timeout(ms(1010));
    assert_eq!(drain(m), vec![validate_cmd(3, &[a])]);
    m.handle_result(ms(1020), id(3), validated(&[a]));
    assert_eq!(drain(m), vec![]);
    assert_eq!(events(m), vec![]);
}

#[test]
fn renew_ok_extends_the_deadline_from_the_send_instant() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    validate_once(&mut m, &a);
    assert_eq!(m.poll_timeout(), Some(ms(2010)));
    m.handle_timeout(ms(2010));
    assert_eq!(
        drain(&mut m),
        vec![Command::Renew {
            id: id(4),
            leases: vec![held(&a, 1)]
        }]
    );
    // The deadline counts from the send, not from the answer.
    m.handle_result(ms(2015), id(4), renewed(db(2012), &[&a]));
    assert_eq!(
        events(&mut m),
        vec![Event::DeadlineExtended {
            role: a.clone(),
            deadline: ms(11800)
        }]
    );
    assert_eq!(m.deadline(&a), Some(deadline_after(ms(2010))));
    assert!(m.is_leader(&a, ms(11800) - Duration::from_nanos(1)));
    assert!(!m.is_leader(&a, ms(11800)));
    // The next renew is due a renew interval after the last was sent.
    assert_eq!(m.poll_timeout(), Some(ms(2020)));
    m.handle_timeout(ms(2020));
    assert_eq!(drain(&mut m), vec![validate_cmd(5, &[&a])]);
    m.handle_result(ms(2030), id(5), validated(&[&a]));
    assert_eq!(m.poll_timeout(), Some(ms(3030)));
    m.handle_timeout(ms(4010));
    assert_eq!(
        drain(&mut m),
        vec![
            Command::Renew {
                id: id(6),
                leases: vec![held(&a, 1)]
            },
            validate_cmd(7, &[&a])
        ]
    );
}

#[test]
fn many_roles_are_renewed_in_one_command() {
    let mut m = machine();
    let (a, b) = (r("a"), r("b"));
    lead(&mut m, &a);
    m.add_role(ms(30), b.clone());
    assert_eq!(drain(&mut m), vec![try_lock_cmd(3, &[&b])]);
    m.handle_result(ms(40), id(3), granted(db(40), &[&b]));
    assert_eq!(drain(&mut m), vec![claim_cmd(4, &b)]);
    m.handle_result(ms(50), id(4), claimed(7, None, db(50)));
    assert_eq!(
        events(&mut m),
        vec![Event::StartedLeading {
            role: b.clone(),
            term: Term(7),
            deadline: ms(9830)
        }]
    );
    m.handle_timeout(ms(1010));
    assert_eq!(drain(&mut m), vec![validate_cmd(5, &[&a, &b])]);
    m.handle_result(ms(1020), id(5), validated(&[&a, &b]));
    m.handle_timeout(ms(2010));
    assert_eq!(
        drain(&mut m),
        vec![Command::Renew {
            id: id(6),
            leases: vec![held(&a, 1), held(&b, 7)]
        }]
    );
    m.handle_result(ms(2020), id(6), renewed(db(2020), &[&a, &b]));
    assert_eq!(
        events(&mut m),
        vec![
            Event::DeadlineExtended {
                role: a.clone(),
                deadline: ms(11800)
            },
            Event::DeadlineExtended {
                role: b.clone(),
                deadline: ms(11800)
            }
        ]
    );
}

#[test]
fn renew_error_makes_the_leader_suspect_until_a_renew_succeeds() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    validate_once(&mut m, &a);
    m.handle_timeout(ms(2010));
    assert_eq!(
        drain(&mut m),
        vec![Command::Renew {
            id: id(4),
            leases: vec![held(&a, 1)]
        }]
    );
    let err = transient();
    m.handle_result(ms(2100), id(4), Err(err.clone()));
    assert_eq!(
        events(&mut m),
        vec![
            failed("renew", &err),
            Event::LeadershipAtRisk {
                role: a.clone(),
                deadline: ms(9800)
            }
        ]
    );
    // The validation due at 2020 goes out with it.
    assert_eq!(drain(&mut m), vec![validate_cmd(5, &[&a])]);
    assert_eq!(m.state(&a), Some(RoleState::Suspect { since: ms(20) }));
    // Still the leader until the deadline.
    assert!(m.is_leader(&a, ms(2100)));
    m.handle_result(ms(2110), id(5), validated(&[&a]));
    // Retried after a quarter of the renew interval.
    assert_eq!(m.poll_timeout(), Some(ms(2600)));
    m.handle_timeout(ms(2600));
    assert_eq!(
        drain(&mut m),
        vec![Command::Renew {
            id: id(6),
            leases: vec![held(&a, 1)]
        }]
    );
    m.handle_result(ms(2650), id(6), renewed(db(2650), &[&a]));
    assert_eq!(
        events(&mut m),
        vec![
            Event::LeadershipRecovered { role: a.clone() },
            Event::DeadlineExtended {
                role: a.clone(),
                deadline: ms(12390)
            }
        ]
    );
    assert_eq!(m.state(&a), Some(RoleState::Leader { since: ms(20) }));
}

#[test]
fn renew_timeout_makes_the_leader_suspect() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    validate_once(&mut m, &a);
    m.handle_timeout(ms(2010));
    m.handle_timeout(ms(2020));
    assert_eq!(
        drain(&mut m),
        vec![
            Command::Renew {
                id: id(4),
                leases: vec![held(&a, 1)]
            },
            validate_cmd(5, &[&a])
        ]
    );
    m.handle_result(ms(2030), id(5), validated(&[&a]));
    // The renew is abandoned after the attempt timeout.
    assert_eq!(m.poll_timeout(), Some(ms(3030)));
    m.handle_timeout(ms(3510));
    let err = BackendError::Timeout(Duration::from_millis(1500));
    assert_eq!(
        events(&mut m),
        vec![
            failed("renew", &err),
            Event::LeadershipAtRisk {
                role: a.clone(),
                deadline: ms(9800)
            }
        ]
    );
    // A late success of the abandoned renew is ignored.
    m.handle_result(ms(3600), id(4), renewed(db(3000), &[&a]));
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(m.deadline(&a), Some(ms(9800)));
    assert!(matches!(m.state(&a), Some(RoleState::Suspect { .. })));
}

#[test]
fn silence_steps_down_exactly_at_the_deadline_then_releases_then_notifies() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    // Nothing is ever answered.
    let run = run_until(&mut m, ms(20), ms(9800), |_, _| None);
    assert_eq!(run.now, ms(9800));
    let stopped: Vec<_> = run
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::StoppedLeading { .. }))
        .collect();
    assert_eq!(
        stopped,
        vec![&(
            ms(9800),
            Event::StoppedLeading {
                role: a.clone(),
                term: Term(1),
                reason: StepDownReason::DeadlineExpired
            }
        )]
    );
    // At risk after the first renew timed out (sent 2010, abandoned 3510).
    assert_eq!(
        run.events
            .iter()
            .find(|(_, e)| matches!(e, Event::LeadershipAtRisk { .. })),
        Some(&(
            ms(3510),
            Event::LeadershipAtRisk {
                role: a.clone(),
                deadline: ms(9800)
            }
        ))
    );
    let release: Vec<_> = run
        .commands_at(ms(9800))
        .into_iter()
        .filter(|c| matches!(c, Command::Release { .. }))
        .collect();
    let [
        Command::Release {
            id: release_id,
            role,
            term,
        },
    ] = release.as_slice()
    else {
        panic!("expected one release at the deadline: {run:?}");
    };
    assert_eq!((role, *term), (&a, Some(Term(1))));
    assert!(
        !run.commands
            .iter()
            .any(|(_, c)| matches!(c, Command::Notify { .. })),
        "notified before the release was done"
    );
    assert!(!m.is_leader(&a, ms(9800)));
    assert_eq!(
        m.state(&a),
        Some(RoleState::Releasing {
            phase: crate::machine::ReleasePhase::Unlocking
        })
    );
    m.handle_result(ms(9810), *release_id, Ok(CommandOutput::Released));
    let after = drain(&mut m);
    assert_eq!(
        after,
        vec![Command::Notify {
            id: CommandId(release_id.0 + 1),
            role: a.clone()
        }]
    );
    assert_eq!(m.state(&a), Some(RoleState::Follower));
    assert_eq!(m.term(&a), None);
    assert_eq!(m.deadline(&a), None);
}

#[test]
fn leader_is_suspect_from_the_first_failure_until_the_deadline() {
    // Every renew fails at once; validations succeed.
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    let run = run_until(&mut m, ms(20), ms(9800), |_, c| match c {
        Command::Renew { .. } => Some(Err(transient())),
        Command::Validate { roles, .. } => Some(Ok(CommandOutput::Validate(roles.clone()))),
        _ => None,
    });
    assert_eq!(
        run.events_at(ms(2010)),
        vec![
            failed("renew", &transient()),
            Event::LeadershipAtRisk {
                role: a.clone(),
                deadline: ms(9800)
            }
        ]
    );
    // Retried every 500 ms until the deadline.
    let renews: Vec<LocalInstant> = run
        .commands
        .iter()
        .filter(|(_, c)| matches!(c, Command::Renew { .. }))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(renews.first(), Some(&ms(2010)));
    assert!(
        renews
            .windows(2)
            .all(|w| w[1] == w[0] + Duration::from_millis(500))
    );
    assert!(renews.last().unwrap() > &ms(9200));
    assert_eq!(
        run.events_at(ms(9800)),
        vec![Event::StoppedLeading {
            role: a.clone(),
            term: Term(1),
            reason: StepDownReason::DeadlineExpired
        }]
    );
    assert!(run.commands_at(ms(9800)).contains(&Command::Release {
        id: run.commands.last().unwrap().1.id(),
        role: a.clone(),
        term: Some(Term(1))
    }));
}

#[test]
fn renew_ok_arriving_after_the_deadline_does_not_revive() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    // Renews fail until one is sent after 9000 ms; that one hangs.
    let mut hung = None;
    let run = run_until(&mut m, ms(20), ms(9799), |now, c| match c {
        Command::Renew { id, .. } if now >= ms(9000) => {
            hung = Some(*id);
            None
        }
        Command::Renew { .. } => Some(Err(transient())),
        Command::Validate { roles, .. } => Some(Ok(CommandOutput::Validate(roles.clone()))),
        _ => None,
    });
    assert!(run.now < ms(9800));
    let hung = hung.unwrap();
    assert!(m.is_leader(&a, ms(9799)));
    // It succeeds, but is answered after the deadline.
    m.handle_result(ms(9850), hung, renewed(db(9300), &[&a]));
    assert_eq!(
        events(&mut m),
        vec![Event::StoppedLeading {
            role: a.clone(),
            term: Term(1),
            reason: StepDownReason::DeadlineExpired
        }]
    );
    assert!(!m.is_leader(&a, ms(9850)));
    let commands = drain(&mut m);
    assert!(
        matches!(
            commands.as_slice(),
            [Command::Release { role, term: Some(Term(1)), .. }] if role == &a
        ),
        "{commands:?}"
    );
    assert!(matches!(m.state(&a), Some(RoleState::Releasing { .. })));
}

#[test]
fn renew_result_missing_a_role_is_lease_lost() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    validate_once(&mut m, &a);
    m.handle_timeout(ms(2010));
    drain(&mut m);
    m.handle_result(ms(2050), id(4), renewed(db(2050), &[]));
    assert_eq!(
        events(&mut m),
        vec![Event::StoppedLeading {
            role: a.clone(),
            term: Term(1),
            reason: StepDownReason::LeaseLost
        }]
    );
    // The row is someone else's: unlock without expiring it.
    assert_eq!(
        drain(&mut m),
        vec![release_cmd(5, &a, None), validate_cmd(6, &[&a])]
    );
    assert!(!m.is_leader(&a, ms(2050)));
    m.handle_result(ms(2060), id(5), Ok(CommandOutput::Released));
    // The lease is someone else's now: nothing of ours to announce.
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(m.state(&a), Some(RoleState::Follower));
    assert_eq!(m.poll_timeout(), Some(ms(3060)));
}

#[test]
fn renew_batch_with_one_role_missing_keeps_the_other() {
    let mut m = machine();
    let (a, b) = (r("a"), r("b"));
    lead(&mut m, &a);
    m.add_role(ms(30), b.clone());
    drain(&mut m);
    m.handle_result(ms(40), id(3), granted(db(40), &[&b]));
    drain(&mut m);
    m.handle_result(ms(50), id(4), claimed(7, None, db(50)));
    events(&mut m);
    m.handle_timeout(ms(2010));
    assert_eq!(
        drain(&mut m),
        vec![
            Command::Renew {
                id: id(5),
                leases: vec![held(&a, 1), held(&b, 7)]
            },
            validate_cmd(6, &[&a, &b])
        ]
    );
    m.handle_result(ms(2020), id(5), renewed(db(2020), &[&a]));
    assert_eq!(
        events(&mut m),
        vec![
            Event::DeadlineExtended {
                role: a.clone(),
                deadline: ms(11800)
            },
            Event::StoppedLeading {
                role: b.clone(),
                term: Term(7),
                reason: StepDownReason::LeaseLost
            }
        ]
    );
    assert_eq!(drain(&mut m), vec![release_cmd(7, &b, None)]);
    assert!(m.is_leader(&a, ms(2020)));
    assert!(!m.is_leader(&b, ms(2020)));
}

#[test]
fn renew_session_lost_steps_down_and_validates() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    validate_once(&mut m, &a);
    m.handle_timeout(ms(2010));
    drain(&mut m);
    let err = session_lost();
    m.handle_result(ms(2015), id(4), Err(err.clone()));
    assert_eq!(
        events(&mut m),
        vec![
            failed("renew", &err),
            Event::SessionLost {
                reason: err.to_string()
            },
            Event::StoppedLeading {
                role: a.clone(),
                term: Term(1),
                reason: StepDownReason::LockLost
            },
            Event::DrainRequested { role: a.clone() }
        ]
    );
    assert!(!m.is_leader(&a, ms(2015)));
    assert_eq!(drain(&mut m), vec![validate_cmd(5, &[&a])]);
    // Gone indeed: follower again, nothing to unlock.
    m.handle_result(ms(2020), id(5), validated(&[]));
    assert_eq!(drain(&mut m), vec![]);
    assert_eq!(events(&mut m), vec![]);
    assert_eq!(m.state(&a), Some(RoleState::Follower));
    assert_eq!(m.poll_timeout(), Some(ms(3020)));
    // Once the work has drained, the node ends its own lease of term 1
    // (holder and term must match in the database) and announces it, so
    // a standby need not wait the lease out.
    m.handle_drained(ms(2030), &a);
    assert_eq!(drain(&mut m), vec![release_cmd(6, &a, Some(1))]);
    m.handle_result(ms(2040), id(6), Ok(CommandOutput::Released));
    assert_eq!(drain(&mut m), vec![notify_cmd(7, &a)]);
    assert_eq!(m.state(&a), Some(RoleState::Follower));
    assert!(!m.is_leader(&a, ms(2040)));
}

/// A node whose leader-only work never drains still ends its lost lease
/// once the drain bound has passed.
#[test]
fn a_lost_lease_is_ended_at_the_drain_bound_without_a_drain() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    m.handle_session_lost(ms(100), "connection closed");
    events(&mut m);
    // Answer every command as a database where the lock is free and the
    // lease row still names this node, until the drain bound (5 s after
    // the loss) has passed.
    let mut expiry = None;
    let mut now = ms(100);
    for _ in 0..200 {
        for c in drain(&mut m) {
            let out = match &c {
                Command::TryLock { .. } => denied(db(1_000), &a, None),
                Command::Validate { .. } => validated(&[]),
                Command::Ping { .. } => Ok(CommandOutput::Ping),
                Command::Release { term, .. } => {
                    expiry.get_or_insert((now, *term));
                    Ok(CommandOutput::Released)
                }
                Command::Notify { .. } => Ok(CommandOutput::Notified),
                other => panic!("unexpected {other:?}"),
            };
            m.handle_result(now, c.id(), out);
        }
        if expiry.is_some() {
            break;
        }
        let Some(next) = m.poll_timeout() else { break };
        now = next.max(now);
        m.handle_timeout(now);
    }
    let (at, term) = expiry.expect("the lost lease was never ended");
    assert_eq!(term, Some(Term(1)));
    assert!(at >= ms(5100), "ended before the drain bound: {at:?}");
}

#[test]
fn a_late_wake_past_the_deadline_steps_down_without_at_risk() {
    let mut m = machine();
    let a = r("a");
    lead(&mut m, &a);
    m.handle_timeout(ms(2010));
    assert_eq!(
        drain(&mut m),
        vec![
            Command::Renew {
                id: id(3),
                leases: vec![held(&a, 1)]
            },
            validate_cmd(4, &[&a])
        ]
    );
    // The process was paused: next woken long after the deadline.
    m.handle_timeout(ms(10_000));
    let evs: Vec<Event> = events(&mut m)
        .into_iter()
        .filter(|e| !matches!(e, Event::CommandFailed { .. }))
        .collect();
    assert_eq!(
        evs,
        vec![Event::StoppedLeading {
            role: a.clone(),
            term: Term(1),
            reason: StepDownReason::DeadlineExpired
        }]
    );
    assert!(!m.is_leader(&a, ms(10_000)));
}
