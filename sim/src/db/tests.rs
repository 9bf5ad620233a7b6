use std::time::Duration;

use regent_core::{DbTimestamp, HeldLease, Namespace, NodeId, PreemptOutcome, Role, Term};

use super::*;

pub(super) fn setup() -> (SimDb, Namespace, Role, NodeId) {
    (
        SimDb::new(
            DbTimestamp::from_micros(1_000_000),
            TerminatePrivilege::Permitted,
        ),
        Namespace::default(),
        Role::new("r").unwrap(),
        NodeId::new("a").unwrap(),
    )
}

#[test]
fn locks_are_session_bound_and_reentrant() {
    let (mut db, ns, role, _) = setup();
    let a = db.connect("a").unwrap();
    let b = db.connect("b").unwrap();
    let roles = [role.clone()];
    assert!(db.try_lock(a, &ns, &roles).unwrap().attempts[0].granted);
    assert!(!db.try_lock(b, &ns, &roles).unwrap().attempts[0].granted);
    assert!(db.try_lock(a, &ns, &roles).unwrap().attempts[0].granted);
    assert!(db.unlock(a, &ns, &role).unwrap());
    // Taken twice: one unlock leaves it held.
    assert_eq!(db.held(a, &ns, &roles).unwrap(), roles.to_vec());
    assert!(db.unlock(a, &ns, &role).unwrap());
    assert!(!db.unlock(a, &ns, &role).unwrap());
    assert!(db.try_lock(b, &ns, &roles).unwrap().attempts[0].granted);
    // Session death drops locks.
    assert!(db.end_session(b, SessionEnd::OperatorTerminated));
    assert!(db.held(b, &ns, &roles).unwrap_err().is_session_lost());
    assert!(db.try_lock(a, &ns, &roles).unwrap().attempts[0].granted);
}

#[test]
fn lease_rows_are_guarded_by_holder_and_term() {
    let (mut db, ns, role, node) = setup();
    let other = NodeId::new("b").unwrap();
    let a = db.connect("a").unwrap();
    let lease = Duration::from_secs(10);
    let c1 = db.claim(a, &ns, &role, &node, lease).unwrap();
    assert_eq!(c1.term, Term(1));
    assert!(c1.previous.is_none());
    let c2 = db.claim(a, &ns, &role, &other, lease).unwrap();
    assert_eq!(c2.term, Term(2));
    assert_eq!(c2.previous.unwrap().term, Term(1));
    let held = [HeldLease {
        role: role.clone(),
        term: Term(1),
    }];
    assert!(
        db.renew(a, &ns, &node, &held, lease)
            .unwrap()
            .renewed
            .is_empty()
    );
    assert!(!db.expire(a, &ns, &role, &node, Term(1)).unwrap());
    assert!(db.expire(a, &ns, &role, &other, Term(2)).unwrap());
    // Restart: sessions and locks gone, rows stay.
    db.stop();
    assert!(db.ping(a).is_err());
    assert!(db.connect("a").is_err());
    db.start();
    assert_eq!(
        db.read(&ns, std::slice::from_ref(&role)).unwrap().1[0].term,
        Term(2)
    );
}

#[test]
fn preempt_only_expired_zombies() {
    let (mut db, ns, role, node) = setup();
    let zombie = db.connect("a").unwrap();
    let me = db.connect("b").unwrap();
    db.try_lock(zombie, &ns, std::slice::from_ref(&role))
        .unwrap();
    db.claim(zombie, &ns, &role, &node, Duration::from_secs(10))
        .unwrap();
    let row = db.row(&(ns.clone(), role.clone())).unwrap().clone();
    let grace = Duration::from_secs(5);
    assert_eq!(
        db.preempt(me, &row, grace).unwrap(),
        PreemptOutcome::NotZombie
    );
    db.set_now(row.lease_until + grace + Duration::from_micros(1));
    db.set_privilege(TerminatePrivilege::Denied);
    assert_eq!(
        db.preempt(me, &row, grace).unwrap(),
        PreemptOutcome::NotPermitted
    );
    db.set_privilege(TerminatePrivilege::Permitted);
    assert_eq!(
        db.preempt(me, &row, grace).unwrap(),
        PreemptOutcome::Terminated
    );
    assert!(!db.is_alive(zombie));
    assert_eq!(
        db.preempt(me, &row, grace).unwrap(),
        PreemptOutcome::NotZombie
    );
}

#[test]
fn fenced_writes_need_the_current_row() {
    let (mut db, ns, role, node) = setup();
    let a = db.connect("a").unwrap();
    db.claim(a, &ns, &role, &node, Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        db.fenced_write(&ns, &role, &node, Term(1)).unwrap(),
        FencedOutcome::Accepted
    );
    let other = NodeId::new("b").unwrap();
    db.claim(a, &ns, &role, &other, Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        db.fenced_write(&ns, &role, &node, Term(1)).unwrap(),
        FencedOutcome::Rejected {
            row_term: Some(Term(2))
        }
    );
}

#[test]
fn a_zombie_that_never_claimed_cannot_be_preempted() {
    let (mut db, ns, role, node) = setup();
    let old = db.connect("a").unwrap();
    db.try_lock(old, &ns, std::slice::from_ref(&role)).unwrap();
    db.claim(old, &ns, &role, &node, Duration::from_secs(10))
        .unwrap();
    db.end_session(old, SessionEnd::ClientClosed);
    // A new session takes the lock and dies (as a zombie) before claiming.
    let zombie = db.connect("b").unwrap();
    db.try_lock(zombie, &ns, std::slice::from_ref(&role))
        .unwrap();
    let me = db.connect("c").unwrap();
    let row = db.row(&(ns.clone(), role.clone())).unwrap().clone();
    db.set_now(row.lease_until + Duration::from_secs(60));
    assert_eq!(
        db.preempt(me, &row, Duration::from_secs(5)).unwrap(),
        PreemptOutcome::NotZombie
    );
    assert!(db.is_alive(zombie));
}
