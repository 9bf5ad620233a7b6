//! The database model on a hand-built world: which statement waits for
//! which, in what order the replies leave.

use std::time::Duration;

use regent_core::{Command, CommandId, HeldLease, Role, Term};

use super::{Conn, Ev, World};
use crate::config::{FaultSelection, SimConfig};
use crate::mutant::Mutant;
use crate::time::{SimTime, db_time};

/// A calm world of two nodes and two roles, nothing started: n1 holds r0
/// and has a fenced transaction open on it for 3 s; n0 holds r1. Returns
/// the world and n0's connection.
fn world(mutant: Option<Mutant>) -> (World, usize) {
    let cfg = SimConfig {
        seed: 1,
        nodes: 2,
        roles: 2,
        faults: FaultSelection::None,
        mutant,
        ..SimConfig::default()
    };
    let mut w = World::new(&cfg).expect("world");
    let lease = w.machine_cfg.lease_duration();
    let (ns, r0, r1) = (w.ns.clone(), w.roles[0].clone(), w.roles[1].clone());
    let p1 = w.db.connect("n1").expect("connect");
    let id1 = w.nodes[1].id.clone();
    w.db.claim(p1, &ns, &r0, &id1, lease).expect("claim r0");
    let p0 = w.db.connect("n0").expect("connect");
    let id0 = w.nodes[0].id.clone();
    w.db.claim(p0, &ns, &r1, &id0, lease).expect("claim r1");
    w.fenced_begin(1, 0, Term(1), Duration::from_secs(3));
    let c = w.conns.len();
    w.conns.push(Conn {
        node: 0,
        inc: 0,
        pid: Some(p0),
        client_gone: false,
        zombie: false,
        req_fifo: w.now,
        reply_fifo: w.now,
        queue: std::collections::VecDeque::new(),
        busy_until: w.now,
        exec_scheduled: false,
        exec_gen: 0,
        front: None,
    });
    w.by_pid.insert(p0, c);
    (w, c)
}

/// Queues `cmds` on connection `c` at once, runs the world for 10 s, and
/// returns each reply as it reaches the node, in that order: the command
/// id, when it arrived, and whether it succeeded.
fn run(w: &mut World, c: usize, cmds: Vec<Command>) -> Vec<(u64, Duration, Result<(), String>)> {
    let now = w.now;
    for cmd in cmds {
        w.conns[c].queue.push_back((cmd, now));
    }
    w.run_session(c);
    let mut out = Vec::new();
    let end = SimTime::from_duration(Duration::from_secs(10));
    while let Some(at) = w.queue.peek().map(|s| s.at) {
        if at > end {
            break;
        }
        w.now = at;
        w.db.set_now(db_time(at));
        match w.pop_event() {
            Some(Ev::ToNode { id, result, .. }) => out.push((
                id.0,
                at.as_duration(),
                result.map(|_| ()).map_err(|e| e.to_string()),
            )),
            Some(ev @ (Ev::DbExec { .. } | Ev::FencedEnd { .. })) => w.handle(ev),
            _ => {}
        }
    }
    out
}

fn claim(id: u64, role: &Role) -> Command {
    Command::Claim {
        id: CommandId(id),
        role: role.clone(),
    }
}

fn renew(id: u64, role: &Role) -> Command {
    Command::Renew {
        id: CommandId(id),
        leases: vec![HeldLease {
            role: role.clone(),
            term: Term(1),
        }],
    }
}

#[test]
fn a_claim_meets_fenced_work_busy_and_the_renewal_behind_it_runs_at_once() {
    let (mut w, c) = world(None);
    let (r0, r1) = (w.roles[0].clone(), w.roles[1].clone());
    let replies = run(&mut w, c, vec![claim(1, &r0), renew(2, &r1)]);
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[0].0, 1);
    assert!(
        replies[0].2.as_ref().is_err_and(|e| e.starts_with("busy")),
        "{replies:?}"
    );
    assert_eq!(replies[1].0, 2);
    assert!(replies[1].2.is_ok());
    assert!(replies[1].1 < Duration::from_millis(50), "{replies:?}");
}

#[test]
fn a_claim_that_waits_holds_up_the_renewal_until_the_fence_ends() {
    let (mut w, c) = world(Some(Mutant::ClaimWaitsOnRowLock));
    let (r0, r1) = (w.roles[0].clone(), w.roles[1].clone());
    let replies = run(&mut w, c, vec![claim(1, &r0), renew(2, &r1)]);
    assert_eq!(replies.len(), 2, "{replies:?}");
    // The fence commits at 3 s; the claim then runs, the renewal after it.
    assert!(replies[0].2.is_ok(), "{replies:?}");
    assert!(replies[0].1 >= Duration::from_secs(3), "{replies:?}");
    assert!(replies[1].1 >= replies[0].1, "{replies:?}");
    assert!(!w.checker.violations.is_empty(), "blast_radius must see it");
}

#[test]
fn a_key_share_fence_lets_its_own_leader_renew_a_share_fence_does_not() {
    for (mutant, waits) in [(None, false), (Some(Mutant::FencesWithForShare), true)] {
        let (mut w, c) = world(mutant);
        // n0 fences its own role r1 for 3 s, then renews it.
        w.fenced_begin(0, 1, Term(1), Duration::from_secs(3));
        let r1 = w.roles[1].clone();
        let replies = run(&mut w, c, vec![renew(2, &r1)]);
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert!(replies[0].2.is_ok(), "{replies:?}");
        assert_eq!(
            replies[0].1 >= Duration::from_secs(3),
            waits,
            "{mutant:?}: {replies:?}"
        );
    }
}

#[test]
fn a_wait_past_the_statement_timeout_is_cancelled_and_the_session_stays() {
    let (mut w, c) = world(Some(Mutant::FencesWithForShare));
    // A fence on n0's own row for 8 s: the renewal waits 5 s, then the
    // statement timeout cancels it; the session survives.
    w.fenced_begin(0, 1, Term(1), Duration::from_secs(8));
    let r1 = w.roles[1].clone();
    let replies = run(&mut w, c, vec![renew(2, &r1)]);
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0]
            .2
            .as_ref()
            .is_err_and(|e| e.contains("statement timeout")),
        "{replies:?}"
    );
    let at = replies[0].1;
    assert!(
        at >= Duration::from_secs(5) && at < Duration::from_millis(5100),
        "{replies:?}"
    );
    let pid = w.conns[c].pid.expect("pid");
    assert!(w.db.is_alive(pid));
}
