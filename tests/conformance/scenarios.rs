//! Election scenarios: one leader, handover, crashes, lock loss.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use regent::{Leadership, Namespace, Role, TakeoverPolicy, Term};
use tokio::time::Instant;

use super::crash::Crashable;
use super::{Factory, admin, campaign, eventually, fast_config, leaders, unique};

const LONG: Duration = Duration::from_secs(20);

/// 1. N candidates, one role: exactly one leader; the others observe it.
pub async fn one_leader_others_observe<F: Factory>(f: &F) {
    let ns = Namespace::new(unique("one")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let app = unique("app");
    let mut electors = Vec::new();
    let mut handles = Vec::new();
    for i in 0..3 {
        let node = f.node(&app, None).await;
        if i == 0 {
            f.migrate(&node).await.unwrap();
        }
        let cfg = fast_config(TakeoverPolicy::WaitForLease);
        let (e, h) = campaign(&node, &ns, &format!("node-{i}"), &role, cfg).await;
        electors.push(e);
        handles.push(h);
    }
    eventually("one leader", LONG, || leaders(&handles).len() == 1).await;
    let leader = leaders(&handles)[0];
    let leader_id = format!("node-{leader}");
    eventually("followers observe the leader", LONG, || {
        handles.iter().enumerate().all(|(i, h)| {
            i == leader
                || h.leadership()
                    == Leadership::Follower {
                        leader: Some(leader_id.clone()),
                    }
        })
    })
    .await;
    // Stays exactly one for a few lease renewals.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(leaders(&handles), vec![leader], "leadership moved or split");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An observer (non-candidate) sees the same leader.
    let observer = electors[0].observe(role.clone());
    eventually("observer sees the leader", LONG, || {
        observer.leader().is_some_and(|l| l.holder == leader_id)
    })
    .await;
    for e in &electors {
        e.shutdown().await;
    }
}

/// 2. Graceful resign: another candidate leads, woken by the notification
///    rather than its retry tick (the retry interval is 10 s here).
pub async fn resign_hands_over_by_notification<F: Factory>(f: &F) {
    let ns = Namespace::new(unique("resign")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let app = unique("app");
    let slow_retry = regent::Config::builder()
        .lease_duration(Duration::from_secs(4))
        .renew_interval(Duration::from_millis(500))
        .attempt_timeout(Duration::from_millis(900))
        .validate_interval(Duration::from_millis(500))
        .retry_interval(Duration::from_secs(10))
        .retry_jitter(Duration::ZERO)
        .drain_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let a = f.node(&app, None).await;
    f.migrate(&a).await.unwrap();
    let (ea, ha) = campaign(&a, &ns, "node-a", &role, slow_retry.clone()).await;
    ha.wait_until_leader().await.unwrap();
    let b = f.node(&app, None).await;
    let (eb, hb) = campaign(&b, &ns, "node-b", &role, slow_retry).await;
    // b has tried once and lost; its next try is 10 s away.
    eventually("b observes a", LONG, || {
        matches!(hb.leadership(), Leadership::Follower { leader: Some(_) })
    })
    .await;
    let t = Instant::now();
    ha.resign().await;
    hb.wait_until_leader().await.unwrap();
    let gap = t.elapsed();
    assert!(
        gap < Duration::from_secs(5),
        "standby took {gap:?}: it waited for its retry tick, not the notification"
    );
    assert!(!ha.is_leader());
    ea.shutdown().await;
    eb.shutdown().await;
}

/// 3. The leader crashes (session closed, nothing released). Under
///    WaitForLease the standby leads only after the old lease has passed in
///    database time; under Immediate right after the lock frees. Tokens
///    strictly increase.
pub async fn crash<F: Factory>(f: &F, policy: TakeoverPolicy) {
    let ns = Namespace::new(unique("crash")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let app = unique("app");
    let db = admin(f.url()).await;
    let a = Crashable::new(f.node(&app, None).await);
    f.migrate(a.inner()).await.unwrap();
    let (_ea, ha) = campaign(&a, &ns, "node-a", &role, fast_config(policy)).await;
    let t1 = ha.wait_until_leader().await.unwrap();
    let b = f.node(&app, None).await;
    let (eb, hb) = campaign(&b, &ns, "node-b", &role, fast_config(policy)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!hb.is_leader());

    let crashed_at = Instant::now();
    a.crash().await;
    let (lease_until,): (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("SELECT lease_until FROM regent_leases WHERE namespace = $1 AND role = $2")
            .bind(ns.as_str())
            .bind(role.as_str())
            .fetch_one(&db)
            .await
            .unwrap();
    let t2 = hb.wait_until_leader().await.unwrap();
    let took = crashed_at.elapsed();
    let (db_now,): (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("SELECT now()").fetch_one(&db).await.unwrap();
    assert!(t2 > t1, "fencing token did not increase: {t1} then {t2}");
    match policy {
        TakeoverPolicy::WaitForLease => {
            assert!(
                db_now >= lease_until,
                "standby led at db time {db_now} before the old lease ended at {lease_until}"
            );
        }
        TakeoverPolicy::Immediate => {
            // Lock free at once; the standby's next try (≤ 350 ms) wins.
            assert!(
                took < Duration::from_millis(1800),
                "Immediate takeover took {took:?}, longer than a lease"
            );
        }
    }
    eb.shutdown().await;
}

/// 4. An operator terminates the leader's session: it steps down within
///    the validate interval (plus slack), its work is cancelled, and some
///    node leads again.
pub async fn terminated_session_steps_down<F: Factory>(f: &F) {
    let ns = Namespace::new(unique("term")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let app = unique("app");
    let db = admin(f.url()).await;
    let a = f.node(&app, None).await;
    f.migrate(&a).await.unwrap();
    let cfg = fast_config(TakeoverPolicy::WaitForLease);
    let (ea, ha) = campaign(&a, &ns, "node-a", &role, cfg.clone()).await;
    let b = f.node(&app, None).await;
    let (eb, hb) = campaign(&b, &ns, "node-b", &role, cfg.clone()).await;
    let handles = [ha.clone(), hb.clone()];
    eventually("a leader", LONG, || leaders(&handles).len() == 1).await;
    let leader = handles[leaders(&handles)[0]].clone();
    let cancelled = Arc::new(AtomicBool::new(false));
    let c2 = cancelled.clone();
    let work = {
        let leader = leader.clone();
        tokio::spawn(async move {
            leader
                .run_while_leader(|cancel, _| async move {
                    cancel.cancelled().await;
                    c2.store(true, Ordering::SeqCst);
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rows = ea.backend().list(Some(&ns)).await.unwrap();
    let pid = rows[0].session.expect("lease row carries the backend pid");
    let t = Instant::now();
    let (done,): (bool,) = sqlx::query_as("SELECT pg_terminate_backend($1::int)")
        .bind(pid as i32)
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(done, "could not terminate the leader's session");
    eventually("old leader steps down", LONG, || !leader.is_leader()).await;
    let took = t.elapsed();
    // Validate interval 250 ms; allow generous slack for a busy machine.
    assert!(
        took < cfg.validate_interval() + Duration::from_millis(1500),
        "step-down took {took:?}"
    );
    work.await.unwrap().unwrap();
    assert!(
        cancelled.load(Ordering::SeqCst),
        "leader work was not cancelled"
    );
    eventually("someone leads again", LONG, || leaders(&handles).len() == 1).await;
    ea.shutdown().await;
    eb.shutdown().await;
}

/// Terms read from the lease table must only grow.
pub fn assert_increasing(terms: &[Term]) {
    for w in terms.windows(2) {
        assert!(w[0] < w[1], "terms not strictly increasing: {terms:?}");
    }
}
