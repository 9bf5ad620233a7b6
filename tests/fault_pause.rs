//! Fault: SIGSTOP the leader past its lease, with zombie preemption on.
//!
//! The paused process keeps its TCP connections (the kernel answers
//! keepalives), so its session and advisory lock stay alive on the server
//! like a zombie. A standby must preempt it after lease + grace and lead
//! under a higher term. After SIGCONT the old leader must find itself
//! deposed: it reports follower and never completes a fenced write with
//! its old token (the fence refuses it).
//!
//! The nodes' pool connections set `idle_in_transaction_session_timeout`:
//! a process frozen in the middle of a fenced transaction would otherwise
//! hold the lease row `FOR SHARE` for as long as it is frozen, and every
//! takeover waits for in-flight fenced work (DESIGN §4) — so a fenced
//! transaction that can freeze needs that server-side bound.

#![cfg(all(feature = "sqlx", feature = "cli"))]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::fault::{Sampler, wait_for};
use support::node::{Node, Reported, assert_fence_held, fast_flags, fenced_ok};

const ROLE: &str = "scheduler";

fn with_idle_tx_timeout(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20idle_in_transaction_session_timeout%3D1000")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_leader_is_preempted_and_deposed() {
    let url = support::pg::database_url().await;
    let ns = support::pg::unique("pause");
    let counter = support::pg::unique("fault_counter");
    support::node::prepare(&url, &counter).await;
    let node_url = with_idle_tx_timeout(&url);
    let mut flags = fast_flags();
    flags.extend(
        [
            "--preempt-zombies",
            "--zombie-grace",
            "1s",
            "--fenced-counter",
            &counter,
        ]
        .map(str::to_owned),
    );

    let a = Arc::new(Node::spawn(&node_url, &ns, ROLE, "node-a", &flags));
    let a_term = wait_for("node-a leads", Duration::from_secs(30), || a.leading()).await;
    wait_for("node-a writes", Duration::from_secs(10), || {
        a.lines()
            .iter()
            .any(|l| fenced_ok(&l.text) == Some(a_term))
            .then_some(())
    })
    .await;
    let b = Arc::new(Node::spawn(&node_url, &ns, ROLE, "node-b", &flags));
    // No overlap among the reports of running nodes. A frozen process
    // prints nothing, so node-a's last report is stale from SIGSTOP until
    // it reports again after SIGCONT; its actions (fenced writes) are
    // checked below instead.
    let a_frozen = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (a, b, frozen) = (a.clone(), b.clone(), a_frozen.clone());
        Sampler::start(move || {
            let mut now = Vec::new();
            if !frozen.load(Ordering::SeqCst) && a.leading().is_some() {
                now.push("node-a".to_owned());
            }
            if b.leading().is_some() {
                now.push("node-b".to_owned());
            }
            now
        })
    };
    wait_for("node-b follows", Duration::from_secs(30), || {
        (b.reported() == Reported::Follower).then_some(())
    })
    .await;
    assert_eq!(a.leading(), Some(a_term));

    a_frozen.store(true, Ordering::SeqCst);
    a.pause();
    let paused_at = Instant::now();
    // While A is frozen, its last report is stale; B alone speaks.
    let b_term = wait_for(
        "node-b preempts the paused leader and leads",
        Duration::from_secs(30),
        || b.leading(),
    )
    .await;
    let takeover = paused_at.elapsed();
    assert!(b_term > a_term, "term {b_term} must exceed {a_term}");
    wait_for(
        "node-b writes under its token",
        Duration::from_secs(10),
        || {
            b.lines()
                .iter()
                .any(|l| fenced_ok(&l.text) == Some(b_term))
                .then_some(())
        },
    )
    .await;
    // Stay frozen a little longer while B works.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let from = a.line_count();
    a.resume();
    wait_for(
        "node-a reports it is deposed",
        Duration::from_secs(15),
        || (a.reported() == Reported::Follower).then_some(()),
    )
    .await;
    a_frozen.store(false, Ordering::SeqCst);
    // Give a deposed leader every chance to misbehave.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let after = a.lines_since(from);
    // SIGSTOP may land while a fenced write is in flight: its COMMIT may
    // have reached the server before the freeze (the takeover's claim waits
    // for it), and only its report is printed after SIGCONT. That can be
    // the first fenced-write line after SIGCONT, never a later one: any
    // write *started* after SIGCONT with the old token must be refused. A
    // write whose commit landed after node-b's writes would also show up as
    // `stale-at-counter` (checked below).
    let writes: Vec<&str> = after
        .iter()
        .map(|l| l.text.as_str())
        .filter(|t| t.contains("fenced-write"))
        .collect();
    let stale_ok: Vec<&str> = writes
        .iter()
        .skip(1)
        .copied()
        .filter(|t| fenced_ok(t).is_some_and(|t| t <= a_term))
        .collect();
    assert!(
        stale_ok.is_empty(),
        "the deposed leader completed fenced writes with its old token: {stale_ok:?}\n{}{}",
        a.dump(),
        b.dump()
    );
    assert!(
        !after.iter().any(|l| l.text.contains("LEADER")),
        "node-a led again while node-b was alive\n{}{}",
        a.dump(),
        b.dump()
    );
    assert_eq!(
        b.leading(),
        Some(b_term),
        "node-b lost leadership\n{}",
        b.dump()
    );
    sampler.assert_no_overlap();
    assert_fence_held(&[&a, &b]);
    let (_, last) = support::node::counter(&url, &counter, ROLE).await;
    assert_eq!(last, i64::try_from(b_term).unwrap());
    let refused = after
        .iter()
        .filter(|l| support::node::fenced_term(&l.text, "refused").is_some())
        .count();
    let in_flight = writes.first().is_some_and(|t| fenced_ok(t).is_some());
    eprintln!(
        "paused node-a (term {a_term}); node-b led (term {b_term}) {takeover:?} later; \
         after SIGCONT node-a had {refused} fenced write(s) refused, none accepted \
         (write in flight at the freeze reported after it: {in_flight})"
    );
    drop((a, b));
    support::node::cleanup(&url, &ns, &counter).await;
}
