//! The first driver tests: deadlines, lock loss, resign, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::backend::BackendError;
use crate::driver::{ElectorError, Leadership};
use crate::types::{Role, Term};

#[tokio::test(start_paused = true)]
async fn failing_renewals_step_down_exactly_at_the_deadline_and_cancel_work() {
    let l = Log::default();
    let db = holding_db(&l, false);
    let e = elector(harness(db)).await;
    let h = e.spawn(role()).await.unwrap();
    let start = Instant::now();
    let token = h.wait_until_leader().await.unwrap();
    assert_eq!(token, Term(7));
    assert_eq!(start.elapsed(), Duration::ZERO);
    let cancelled_at = h
        .run_while_leader(|cancel, _| async move {
            cancel.cancelled().await;
            Instant::now()
        })
        .await
        .unwrap();
    // lease 10 s · (1 - 1e-3) - 200 ms, counted from sending the claim.
    assert_eq!(cancelled_at - start, Duration::from_millis(9790));
    assert!(!h.is_leader());
    assert!(entries(&l).iter().filter(|s| *s == "renew").count() >= 4);
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn is_leader_checks_the_deadline_even_if_the_driver_is_late() {
    let l = Log::default();
    let db = holding_db(&l, false);
    let e = elector(harness(db)).await;
    let h = e.spawn(role()).await.unwrap();
    h.wait_until_leader().await.unwrap();
    // Jump the clock without letting any task run.
    tokio::time::advance(Duration::from_millis(9790)).await;
    assert!(!h.is_leader());
    assert!(h.token().is_none());
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_hung_renew_does_not_hold_leadership_past_the_deadline() {
    let l = Log::default();
    let db = holding_db(&l, true);
    let h = harness(db);
    let e = elector(h.clone()).await;
    let lh = e.spawn(role()).await.unwrap();
    let start = Instant::now();
    lh.wait_until_leader().await.unwrap();
    // Renewals succeed for a while, then hang forever.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(lh.is_leader());
    h.hang_renew.store(true, Ordering::SeqCst);
    let mut w = lh.watch();
    w.wait_for(|l| matches!(l, Leadership::Follower { .. }))
        .await
        .unwrap();
    // The last successful renewal was sent at 4 s: deadline 4 s + 9.79 s.
    assert_eq!(start.elapsed(), Duration::from_millis(4000 + 9790));
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn lost_lock_steps_down_at_the_next_validation() {
    let l = Log::default();
    let ok = Arc::new(AtomicBool::new(true));
    let mut db = granting_db(&l, ok);
    let lost = Arc::new(AtomicBool::new(false));
    let lost2 = lost.clone();
    db.expect_held().returning(move |_, roles| {
        if lost2.load(Ordering::SeqCst) {
            Ok(vec![])
        } else {
            Ok(roles.to_vec())
        }
    });
    let e = elector(harness(db)).await;
    let h = e.spawn(role()).await.unwrap();
    h.wait_until_leader().await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let t = Instant::now();
    lost.store(true, Ordering::SeqCst);
    let cancelled = h.run_while_leader(|c, _| async move {
        c.cancelled().await;
        Instant::now()
    });
    let at = cancelled.await.unwrap();
    // Validations run every second (at 1 s, 2 s, 3 s, 4 s, ...).
    assert_eq!(at - t, Duration::from_millis(500));
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn session_closed_steps_down_immediately() {
    let l = Log::default();
    let ok = Arc::new(AtomicBool::new(true));
    let mut db = granting_db(&l, ok);
    db.expect_held().returning(|_, _| Ok(vec![]));
    let h = harness(db);
    let e = elector(h.clone()).await;
    let lh = e.spawn(role()).await.unwrap();
    lh.wait_until_leader().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let work = lh.run_while_leader(|c, _| async move {
        c.cancelled().await;
        Instant::now()
    });
    let closer = async {
        tokio::task::yield_now().await;
        h.closed.notify_one();
    };
    let (at, ()) = tokio::join!(work, closer);
    assert_eq!(at.unwrap() - t, Duration::ZERO);
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn resign_drains_work_then_releases_then_notifies() {
    let l = Log::default();
    let db = holding_db(&l, true);
    let e = elector(harness(db)).await;
    let h = e.spawn(role()).await.unwrap();
    h.wait_until_leader().await.unwrap();
    let ll = l.clone();
    let worker = {
        let h = h.clone();
        tokio::spawn(async move {
            h.run_while_leader(|cancel, _| async move {
                cancel.cancelled().await;
                // Cleanup takes a while; the lease must not be released yet.
                tokio::time::sleep(Duration::from_millis(700)).await;
                log(&ll, "work done");
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    h.resign().await;
    assert_eq!(t.elapsed(), Duration::from_millis(700));
    worker.await.unwrap().unwrap();
    let seq: Vec<String> = entries(&l).into_iter().filter(|s| s != "renew").collect();
    assert_eq!(
        seq,
        vec![
            "work done",
            "expire scheduler 7",
            "unlock scheduler",
            "notify scheduler"
        ]
    );
    assert!(!h.is_leader());
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_twice_is_fine_and_releases() {
    let l = Log::default();
    let db = holding_db(&l, true);
    let e = elector(harness(db)).await;
    let h = e.spawn(role()).await.unwrap();
    h.wait_until_leader().await.unwrap();
    e.shutdown().await;
    e.shutdown().await;
    h.shutdown().await;
    assert!(e.is_stopped());
    assert_eq!(h.leadership(), Leadership::Stopped);
    assert!(matches!(
        h.wait_until_leader().await,
        Err(ElectorError::Stopped)
    ));
    assert!(matches!(e.spawn(role()).await, Err(ElectorError::Stopped)));
    let seq = entries(&l);
    assert!(seq.contains(&"expire scheduler 7".to_owned()), "{seq:?}");
    assert!(seq.contains(&"notify scheduler".to_owned()), "{seq:?}");
}

#[tokio::test(start_paused = true)]
async fn bad_config_and_dead_database_fail_at_build() {
    let mut db = MockDb::new();
    db.expect_connect()
        .returning(|| Err(BackendError::Transient("connection refused".into())));
    let err = Elector::builder_shared(harness(db))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, ElectorError::Backend(_)), "{err}");
    assert!(err.to_string().contains("connection refused"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn one_node_many_roles_renews_in_one_call() {
    let l = Log::default();
    let db = holding_db(&l, true);
    let e = elector(harness(db)).await;
    let mut handles = Vec::new();
    for i in 0..20 {
        handles.push(
            e.spawn(Role::new(format!("shard-{i}")).unwrap())
                .await
                .unwrap(),
        );
    }
    for h in &handles {
        h.wait_until_leader().await.unwrap();
    }
    let before = entries(&l).iter().filter(|s| *s == "renew").count();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let renews = entries(&l).iter().filter(|s| *s == "renew").count() - before;
    // One renew call every 2 s for all 20 roles, not 20 calls.
    assert!((4..=6).contains(&renews), "{renews} renew calls");
    assert!(handles.iter().all(|h| h.is_leader()));
    assert!(matches!(
        e.spawn(Role::new("shard-0").unwrap()).await,
        Err(ElectorError::AlreadyCampaigning(_))
    ));
    e.shutdown().await;
}
