//! Election scenarios: one leader, hand-over, crashes, lost sessions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use regent_core::{Config, Elector, Leadership, Lease, TakeoverPolicy};

use crate::support::{
    HANG_GUARD, campaign, eventually, fast_builder, fast_config, lead, leaders, namespace, role,
    throughout, within,
};
use crate::{Crashable, Engine, Outcome};

/// N candidates, one role: exactly one leader, the others observe it, it
/// stays the one leader with one term over several renewals, and an
/// observer (a non-candidate) sees it too.
pub async fn one_leader_others_observe<E: Engine>(e: &E) -> Outcome {
    let ns = namespace("one");
    let role = role("scheduler");
    let mut electors = Vec::new();
    let mut handles = Vec::new();
    for i in 0..3 {
        let node = e.node(&format!("node-{i}")).await;
        if i == 0 {
            e.prepare(&node).await.expect("prepare");
        }
        let cfg = fast_config(TakeoverPolicy::WaitForLease);
        let (el, h) = campaign(&node, &ns, &format!("node-{i}"), &role, cfg).await;
        electors.push(el);
        handles.push(h);
    }
    eventually("one leader", || leaders(&handles).len() == 1).await;
    let leader = leaders(&handles)[0];
    let leader_id = format!("node-{leader}");
    let term = handles[leader].token();
    eventually("followers observe the leader", || {
        handles.iter().enumerate().all(|(i, h)| {
            i == leader
                || h.leadership()
                    == Leadership::Follower {
                        leader: Some(leader_id.clone()),
                    }
        })
    })
    .await;
    // Several renewals (400 ms apart) go by: same leader, same term.
    throughout(Duration::from_secs(3), || {
        assert_eq!(leaders(&handles), vec![leader], "leadership moved or split");
        assert_eq!(handles[leader].token(), term, "the term changed");
    })
    .await;
    let observer = electors[0].observe(role.clone());
    eventually("observer sees the leader", || {
        observer.leader().is_some_and(|l| l.holder == leader_id)
    })
    .await;
    for el in &electors {
        el.shutdown().await;
    }
    Outcome::Passed
}

/// Graceful resign: the standby leads, woken by the release notification.
/// Its retry interval and the lease are an hour, so nothing but the
/// notification can wake it within the hang guard.
pub async fn resign_hands_over_by_notification<E: Engine>(e: &E) -> Outcome {
    if !e.notifies_releases() {
        return Outcome::Skipped("the engine does not deliver release notifications".into());
    }
    let ns = namespace("resign");
    let role = role("scheduler");
    let hour = Duration::from_secs(3600);
    let slow_retry = Config::builder()
        .lease_duration(hour)
        .renew_interval(Duration::from_millis(500))
        .attempt_timeout(Duration::from_millis(900))
        .validate_interval(Duration::from_millis(500))
        .retry_interval(hour)
        .retry_jitter(Duration::ZERO)
        .drain_timeout(Duration::from_secs(1))
        .build()
        .expect("valid config");
    assert!(hour > HANG_GUARD * 10);
    let a = e.node("node-a").await;
    e.prepare(&a).await.expect("prepare");
    let (ea, ha) = campaign(&a, &ns, "node-a", &role, slow_retry.clone()).await;
    let t1 = lead("a leads", &ha).await;
    let b = e.node("node-b").await;
    let (eb, hb) = campaign(&b, &ns, "node-b", &role, slow_retry).await;
    // b has tried once and lost; its next try is an hour away.
    eventually("b observes a", || {
        hb.leadership()
            == Leadership::Follower {
                leader: Some("node-a".into()),
            }
    })
    .await;
    ha.resign().await;
    assert!(!ha.is_leader());
    let t2 = lead("b leads after a's release notification", &hb).await;
    assert!(t2 > t1, "term did not increase: {t1} then {t2}");
    ea.shutdown().await;
    eb.shutdown().await;
    Outcome::Passed
}

/// The leader crashes (session closed, nothing released). Under
/// `WaitForLease` the standby leads only once the old lease has passed in
/// the engine's time; under `Immediate` it leads before the old lease ends
/// (the lease is 10 s there, far longer than the standby's next try) —
/// unless the engine's holds outlive a crash until the lease ends
/// ([`Engine::crash_frees_lock`] is `false`), where `Immediate` must wait
/// the lease out too. Terms strictly increase.
pub async fn crash<E: Engine>(e: &E, policy: TakeoverPolicy) -> Outcome {
    let ns = namespace("crash");
    let role = role("scheduler");
    let config = match policy {
        TakeoverPolicy::Immediate => fast_builder(policy)
            .lease_duration(Duration::from_secs(10))
            .renew_interval(Duration::from_millis(500))
            .build()
            .expect("valid config"),
        _ => fast_config(policy),
    };
    let a = Crashable::new(e.node("node-a").await);
    e.prepare(a.inner()).await.expect("prepare");
    let (_ea, ha) = campaign(&a, &ns, "node-a", &role, config.clone()).await;
    let t1 = lead("a leads", &ha).await;
    let b = e.node("node-b").await;
    let (eb, hb) = campaign(&b, &ns, "node-b", &role, config).await;
    eventually("b observes a", || {
        hb.leadership()
            == Leadership::Follower {
                leader: Some("node-a".into()),
            }
    })
    .await;
    a.crash(e).await;
    let (_, rows) = b
        .read(&ns, std::slice::from_ref(&role))
        .await
        .expect("read the lease");
    let lease_until = rows.first().expect("a's lease row").lease_until;
    let t2 = lead("b takes over", &hb).await;
    let (db_now, _) = b
        .read(&ns, std::slice::from_ref(&role))
        .await
        .expect("read the clock");
    assert!(t2 > t1, "fencing token did not increase: {t1} then {t2}");
    match policy {
        TakeoverPolicy::Immediate if e.crash_frees_lock() => assert!(
            db_now < lease_until,
            "Immediate takeover waited out the old lease (ended {lease_until:?}, now {db_now:?})"
        ),
        _ => assert!(
            db_now >= lease_until,
            "standby led at {db_now:?}, before the old lease ended at {lease_until:?}"
        ),
    }
    eb.shutdown().await;
    Outcome::Passed
}

/// An operator ends the leader's session: it steps down, its leader-only
/// work is cancelled, and a node leads again with a higher term.
pub async fn terminated_session_steps_down<E: Engine>(e: &E) -> Outcome {
    let Some(terminate) = e.terminate() else {
        return Outcome::Skipped("the engine cannot end a session from outside".into());
    };
    let ns = namespace("term");
    let role = role("scheduler");
    let a = e.node("node-a").await;
    e.prepare(&a).await.expect("prepare");
    let cfg = fast_config(TakeoverPolicy::WaitForLease);
    let (ea, ha) = campaign(&a, &ns, "node-a", &role, cfg.clone()).await;
    let t1 = lead("a leads", &ha).await;
    let b = e.node("node-b").await;
    let (eb, hb) = campaign(&b, &ns, "node-b", &role, cfg).await;
    let cancelled = Arc::new(AtomicBool::new(false));
    let c2 = cancelled.clone();
    let work = {
        let ha = ha.clone();
        tokio::spawn(async move {
            ha.run_while_leader(|cancel, _| async move {
                cancel.cancelled().await;
                c2.store(true, Ordering::SeqCst);
            })
            .await
        })
    };
    assert!(
        terminate.terminate_session(&a).await,
        "could not end the leader's session"
    );
    eventually("the old leader steps down", || !ha.is_leader()).await;
    within("leader-only work ends", work)
        .await
        .expect("work task")
        .expect("run_while_leader");
    assert!(cancelled.load(Ordering::SeqCst), "work was not cancelled");
    let handles = [ha.clone(), hb.clone()];
    eventually("someone leads again", || leaders(&handles).len() == 1).await;
    let t2 = handles[leaders(&handles)[0]].token().expect("a term");
    assert!(t2 > t1, "term did not increase: {t1} then {t2}");
    ea.shutdown().await;
    eb.shutdown().await;
    Outcome::Passed
}

/// A store that cannot be reached is a clear error at start, not a hang.
pub async fn unreachable_store_fails_at_start<E: Engine>(e: &E) -> Outcome {
    let result = within("starting against an unreachable store", async {
        match e.unreachable_node().await {
            None => None,
            Some(Err(err)) => Some(Err(err)),
            Some(Ok(node)) => Some(
                Elector::builder(node)
                    .build()
                    .await
                    .map(|_| ())
                    .map_err(|err| err.to_string()),
            ),
        }
    })
    .await;
    let Some(result) = result else {
        return Outcome::Skipped("the engine cannot make an unreachable node".into());
    };
    let err = result.expect_err("starting against an unreachable store must fail");
    assert!(!err.is_empty(), "the error says nothing");
    Outcome::Passed
}
