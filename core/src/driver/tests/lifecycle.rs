//! The life of a handle: dropping it, cancelling `spawn`, leader-only work
//! across terms, and the drain bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::driver::{ElectorError, Leadership};
use crate::types::{LeaseRecord, Namespace, Role, Term};

/// While `lost` is set, the lock is someone else's: validation finds it
/// gone and tries are denied. Otherwise every try is granted. Claims hand
/// out terms 7, 8, 9, ...
fn failover_db(l: &Log, lost: Arc<AtomicBool>) -> MockDb {
    let mut db = base_db(l, Arc::new(AtomicBool::new(true)));
    let taken = lost.clone();
    db.expect_try_lock()
        .returning(move |_, roles| Ok(lock_outcome(roles, !taken.load(Ordering::SeqCst))));
    let next = Arc::new(AtomicU64::new(7));
    db.expect_claim().returning(move |_, _, _, _| {
        Ok(ClaimOutcome {
            term: Term(next.fetch_add(1, Ordering::SeqCst)),
            previous: None,
            db_now: DbTimestamp::from_micros(0),
        })
    });
    db.expect_held().returning(move |_, roles| {
        if lost.load(Ordering::SeqCst) {
            Ok(vec![])
        } else {
            Ok(roles.to_vec())
        }
    });
    db
}

fn lease_of(role: &Role, holder: &str, term: u64) -> LeaseRecord {
    LeaseRecord {
        namespace: Namespace::default(),
        role: role.clone(),
        holder: holder.to_owned(),
        term: Term(term),
        session: None,
        acquired_at: DbTimestamp::from_micros(0),
        renewed_at: DbTimestamp::from_micros(0),
        lease_until: DbTimestamp::from_micros(10_000_000),
    }
}

fn released(l: &Log) -> bool {
    entries(l).contains(&"unlock scheduler".to_owned())
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_withdraws_and_resigns() {
    let l = Log::default();
    let mut db = holding_db(&l, true);
    // What an observer reads: node-a's lease until it is released.
    let ll = l.clone();
    db.expect_read().returning(move |_, roles| {
        let rows = if released(&ll) {
            vec![]
        } else {
            vec![lease_of(&roles[0], "node-a", 7)]
        };
        Ok((DbTimestamp::from_micros(0), rows))
    });
    let e = elector(harness(db)).await;
    let observer = e.observe(role());
    let h = e.spawn(role()).await.unwrap();
    h.wait_until_leader().await.unwrap();
    let clone = h.clone();
    let status = h.watch();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(observer.leader().map(|o| o.term), Some(Term(7)));

    // A clone keeps the campaign alive; watch receivers do not count.
    drop(h);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(clone.is_leader());
    assert!(!released(&l), "{:?}", entries(&l));

    let dropped_at = Instant::now();
    drop(clone);
    let mut status = status;
    status
        .wait_for(|s| *s == Leadership::Stopped)
        .await
        .unwrap();
    assert_eq!(dropped_at.elapsed(), Duration::ZERO);
    let seq: Vec<String> = entries(&l).into_iter().filter(|s| s != "renew").collect();
    assert_eq!(
        seq,
        vec!["expire scheduler 7", "unlock scheduler", "notify scheduler"]
    );
    // The observer goes on polling and sees nobody lead any more.
    let mut seen = observer.watch();
    seen.wait_for(Option::is_none).await.unwrap();
    // The role is free to campaign for again.
    let again = e.spawn(role()).await.unwrap();
    again.wait_until_leader().await.unwrap();
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_spawn_withdraws_the_role_again() {
    let l = Log::default();
    let db = holding_db(&l, true);
    let e = elector(harness(db)).await;
    // Poll `spawn` once (it sends the role to the node task and waits for
    // the answer), then drop it, as a `select!` or a timeout would.
    let cancelled = tokio::time::timeout(Duration::ZERO, e.spawn(role())).await;
    assert!(cancelled.is_err(), "spawn should not have finished yet");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Nobody campaigns with no handle: the role was released again...
    assert!(released(&l), "{:?}", entries(&l));
    let renews = entries(&l).iter().filter(|s| *s == "renew").count();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        entries(&l).iter().filter(|s| *s == "renew").count(),
        renews,
        "a withdrawn role must not keep renewing"
    );
    // ...and a new spawn is not refused as a duplicate.
    let h = e.spawn(role()).await.unwrap();
    assert_eq!(h.wait_until_leader().await.unwrap(), Term(7));
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn work_never_starts_in_a_term_that_has_ended() {
    let l = Log::default();
    let lost = Arc::new(AtomicBool::new(false));
    let e = elector(harness(failover_db(&l, lost.clone()))).await;
    let h = e.spawn(role()).await.unwrap();
    assert_eq!(h.wait_until_leader().await.unwrap(), Term(7));
    // Leadership ends (the lock is lost) before the work is asked for.
    lost.store(true, Ordering::SeqCst);
    let mut w = h.watch();
    w.wait_for(|s| matches!(s, Leadership::Follower { .. }))
        .await
        .unwrap();
    let lost_at = Instant::now();
    let ll = l.clone();
    let work = h.run_while_leader(move |cancel, term| async move {
        log(&ll, format!("start {}", term.term()));
        cancel.cancelled().await;
        term
    });
    let retake = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!entries(&l).iter().any(|s| s.starts_with("start")));
        lost.store(false, Ordering::SeqCst);
        w.wait_for(|s| matches!(s, Leadership::Leader { .. }))
            .await
            .unwrap();
        let led_at = Instant::now();
        // Give the work its turn, then end the term.
        tokio::task::yield_now().await;
        h.resign().await;
        led_at
    };
    let (term, led_at) = tokio::join!(work, retake);
    // It ran once, in the next term, not in the one that had ended.
    assert_eq!(term.unwrap().term(), Term(8));
    assert!(led_at - lost_at >= Duration::from_secs(3));
    let starts: Vec<String> = entries(&l)
        .into_iter()
        .filter(|s| s.starts_with("start"))
        .collect();
    assert_eq!(starts, vec!["start 8"]);
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn run_each_term_requeues_across_three_failovers() {
    let l = Log::default();
    let lost = Arc::new(AtomicBool::new(false));
    let e = elector(harness(failover_db(&l, lost.clone()))).await;
    let h = e.spawn(role()).await.unwrap();
    let stop = CancellationToken::new();
    let ll = l.clone();
    let job = {
        let (h, stop) = (h.clone(), stop.clone());
        tokio::spawn(async move {
            h.run_each_term(stop, move |cancel, fence| {
                let ll = ll.clone();
                async move {
                    log(&ll, format!("start {}", fence.term()));
                    cancel.cancelled().await;
                    log(&ll, format!("end {}", fence.term()));
                }
            })
            .await;
        })
    };
    let mut w = h.watch();
    for _ in 0..3 {
        w.wait_for(|s| matches!(s, Leadership::Leader { .. }))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        lost.store(true, Ordering::SeqCst);
        w.wait_for(|s| matches!(s, Leadership::Follower { .. }))
            .await
            .unwrap();
        lost.store(false, Ordering::SeqCst);
    }
    assert_eq!(h.wait_until_leader().await.unwrap(), Term(10));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.cancel();
    job.await.unwrap();
    // The job's own token ended the last run; leadership is untouched.
    assert!(h.is_leader());
    let runs: Vec<String> = entries(&l)
        .into_iter()
        .filter(|s| s.starts_with("start") || s.starts_with("end"))
        .collect();
    assert_eq!(
        runs,
        vec![
            "start 7", "end 7", "start 8", "end 8", "start 9", "end 9", "start 10", "end 10"
        ]
    );
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn spawn_during_shutdown_is_refused() {
    let l = Log::default();
    let e = elector(harness(holding_db(&l, true))).await;
    let h = e.spawn(role()).await.unwrap();
    h.wait_until_leader().await.unwrap();
    let worker = {
        let h = h.clone();
        tokio::spawn(async move {
            h.run_while_leader(|cancel, _| async move {
                cancel.cancelled().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Shutdown is draining the work when another role is asked for.
    let (stopped, spawned) = tokio::join!(e.shutdown(), async {
        tokio::task::yield_now().await;
        e.spawn(Role::new("other").unwrap()).await
    });
    let () = stopped;
    assert!(matches!(spawned, Err(ElectorError::Stopped)), "{spawned:?}");
    worker.await.unwrap().unwrap();
}
