//! What a handle reports: role status, fences, drain overruns.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tokio::time::Instant;

use super::*;
use crate::driver::{DrainOverrun, RoleStatus, Unhealthy};
use crate::machine::ObservedLeader;
use crate::types::{Fence, LeaseRecord, Namespace, NodeId, Term};

/// The sequence of distinct statuses a `watch_status` receiver saw, as
/// short labels.
fn label(s: &RoleStatus) -> String {
    match s {
        RoleStatus::Leading { term, .. } => format!("leading {term}"),
        RoleStatus::AtRisk { term, .. } => format!("at risk {term}"),
        RoleStatus::Following { leader } => format!(
            "following {}",
            leader.as_ref().map_or("-", |l| l.holder.as_str())
        ),
        RoleStatus::Unhealthy { reason } => match reason {
            Unhealthy::SessionDown { .. } => "unhealthy session".to_owned(),
            Unhealthy::Misconfigured { command, .. } => format!("unhealthy {command}"),
        },
        RoleStatus::Stopped => "stopped".to_owned(),
    }
}

fn record(
    h: &crate::driver::LeaderHandle,
) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut rx = h.watch_status();
    let s = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            s.lock().unwrap().push(label(&rx.borrow_and_update()));
            if rx.changed().await.is_err() {
                break;
            }
        }
    });
    (seen, task)
}

#[tokio::test(start_paused = true)]
async fn status_goes_leading_at_risk_following_on_failing_renewals() {
    let l = Log::default();
    let e = elector(harness(holding_db(&l, false))).await;
    let h = e.spawn(role()).await.unwrap();
    let (seen, _task) = record(&h);
    let start = Instant::now();
    h.wait_until_leader().await.unwrap();
    let RoleStatus::Leading {
        term,
        since_instant,
        ..
    } = h.status()
    else {
        panic!("{:?}", h.status());
    };
    assert_eq!((term, since_instant), (Term(7), start));
    let mut rx = h.watch_status();
    within(rx.wait_for(|s| matches!(s, RoleStatus::AtRisk { .. })))
        .await
        .unwrap();
    let RoleStatus::AtRisk { deadline, .. } = h.status() else {
        panic!("{:?}", h.status());
    };
    assert_eq!(deadline - start, Duration::from_millis(9790));
    assert!(h.is_leader());
    // Past the deadline the getter says following, even before the driver
    // has run, exactly as `is_leader` does.
    tokio::time::advance(deadline - Instant::now()).await;
    assert!(!h.is_leader());
    assert_eq!(label(&h.status()), "following -");
    within(rx.wait_for(|s| matches!(s, RoleStatus::Following { .. })))
        .await
        .unwrap();
    settle().await;
    let mut seen = seen.lock().unwrap().clone();
    seen.dedup();
    // `spawn` returned after the mock had already granted the lock.
    assert_eq!(seen[..3], ["leading 7", "at risk 7", "following -"]);
    e.shutdown().await;
}

/// Every call fails with a lost session while `down` is set (reset, which
/// closes the session, always works); otherwise locks are granted, term 7
/// claimed and renewed.
fn flaky_session_db(l: &Log, down: Arc<AtomicBool>) -> MockDb {
    let lost = |down: &Arc<AtomicBool>| {
        down.load(Ordering::SeqCst)
            .then(|| BackendError::SessionLost {
                reason: "server closed the connection".into(),
            })
    };
    let mut db = MockDb::new();
    db.expect_connect().returning(|| Ok(()));
    db.expect_subscribe()
        .returning(|_| Ok(Box::new(Silent) as Box<dyn Subscription>));
    let d = down.clone();
    db.expect_try_lock()
        .returning(move |_, roles| match lost(&d) {
            Some(e) => Err(e),
            None => Ok(lock_outcome(roles, true)),
        });
    let d = down.clone();
    db.expect_held().returning(move |_, roles| match lost(&d) {
        Some(e) => Err(e),
        None => Ok(roles.to_vec()),
    });
    let d = down.clone();
    db.expect_ping()
        .returning(move || lost(&d).map_or(Ok(()), Err));
    let d = down.clone();
    db.expect_claim()
        .returning(move |_, _, _, _| match lost(&d) {
            Some(e) => Err(e),
            None => Ok(ClaimOutcome {
                term: Term(7),
                previous: None,
                db_now: DbTimestamp::from_micros(0),
            }),
        });
    let d = down;
    db.expect_renew()
        .returning(move |_, _, held, _| match lost(&d) {
            Some(e) => Err(e),
            None => Ok(RenewOutcome {
                db_now: DbTimestamp::from_micros(0),
                renewed: held.iter().map(|h| h.role.clone()).collect(),
            }),
        });
    db.expect_expire().returning(|_, _, _, _| Ok(()));
    db.expect_unlock().returning(|_, _| Ok(()));
    db.expect_publish_release().returning(|_, _| Ok(()));
    let ll = l.clone();
    db.expect_reset().returning(move || log(&ll, "reset"));
    db
}

/// Lets every ready task run (the status forwarder, then the recorder).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Fails the test instead of letting virtual time run on forever.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("did not happen within 120 s of virtual time")
}

#[tokio::test(start_paused = true)]
async fn a_lost_session_is_unhealthy_until_a_call_succeeds_again() {
    let l = Log::default();
    let down = Arc::new(AtomicBool::new(false));
    let h = harness(flaky_session_db(&l, down.clone()));
    let e = elector(h.clone()).await;
    let lh = e.spawn(role()).await.unwrap();
    let (seen, _task) = record(&lh);
    within(lh.wait_until_leader()).await.unwrap();
    down.store(true, Ordering::SeqCst);
    h.closed.notify_one();
    let mut rx = lh.watch_status();
    within(rx.wait_for(|s| matches!(s, RoleStatus::Unhealthy { .. })))
        .await
        .unwrap();
    let RoleStatus::Unhealthy {
        reason: Unhealthy::SessionDown { detail },
    } = lh.status()
    else {
        panic!("{:?}", lh.status());
    };
    assert!(detail.contains("closed"), "{detail}");
    // Still down a while later: retries (and session resets) do not hide it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(label(&lh.status()), "unhealthy session");
    // The database answers again: the node recovers and leads.
    down.store(false, Ordering::SeqCst);
    within(lh.wait_until_leader()).await.unwrap();
    settle().await;
    let mut seen = seen.lock().unwrap().clone();
    // The detail changes as calls fail; the label does not.
    seen.dedup();
    assert_eq!(
        seen,
        ["leading 7", "unhealthy session", "following -", "leading 7"]
    );
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_missing_table_is_unhealthy_and_says_what_to_fix() {
    let l = Log::default();
    let mut db = base_db(&l, Arc::new(AtomicBool::new(true)));
    db.expect_try_lock()
        .returning(|_, roles| Ok(lock_outcome(roles, true)));
    db.expect_held().returning(|_, roles| Ok(roles.to_vec()));
    db.expect_claim().returning(|_, _, _, _| {
        Err(BackendError::Misconfigured(
            "relation \"regent_leases\" does not exist; run the migrations".into(),
        ))
    });
    let e = elector(harness(db)).await;
    let h = e.spawn(role()).await.unwrap();
    let mut rx = h.watch_status();
    within(rx.wait_for(|s| matches!(s, RoleStatus::Unhealthy { .. })))
        .await
        .unwrap();
    let RoleStatus::Unhealthy {
        reason: Unhealthy::Misconfigured { command, detail },
    } = h.status()
    else {
        panic!("{:?}", h.status());
    };
    assert_eq!(command, "claim");
    assert!(detail.contains("run the migrations"), "{detail}");
    // Successful lock tries do not hide it: only a claim that works would.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(label(&h.status()), "unhealthy claim");
    assert!(!h.is_leader());
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_standby_names_the_leader_and_its_term() {
    let l = Log::default();
    let mut db = base_db(&l, Arc::new(AtomicBool::new(true)));
    db.expect_try_lock().returning(|_, roles| {
        let mut out = lock_outcome(roles, false);
        for a in &mut out.attempts {
            a.lease = Some(LeaseRecord {
                namespace: Namespace::default(),
                role: a.role.clone(),
                holder: "node-b".into(),
                term: Term(5),
                session: None,
                acquired_at: DbTimestamp::from_micros(0),
                renewed_at: DbTimestamp::from_micros(0),
                lease_until: DbTimestamp::from_micros(10_000_000),
            });
        }
        Ok(out)
    });
    let e = elector(harness(db)).await;
    let h = e.spawn(role()).await.unwrap();
    let mut rx = h.watch_status();
    within(rx.wait_for(|s| matches!(s, RoleStatus::Following { leader: Some(_) })))
        .await
        .unwrap();
    let expected = ObservedLeader {
        holder: "node-b".into(),
        term: Term(5),
    };
    assert_eq!(
        h.status(),
        RoleStatus::Following {
            leader: Some(expected)
        }
    );
    assert_eq!(h.status().term(), None);
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_handle_yields_the_fence_of_its_term() {
    let l = Log::default();
    let e = elector(harness(holding_db(&l, true))).await;
    let h = e.spawn(role()).await.unwrap();
    h.wait_until_leader().await.unwrap();
    let expected = Fence::new(
        Namespace::default(),
        role(),
        NodeId::new("node-a").unwrap(),
        Term(7),
    );
    assert_eq!(h.fence(), Some(expected));
    h.resign().await;
    assert_eq!(h.fence(), None);
    e.shutdown().await;
}

/// Counts `regent_drain_timeouts_total`; every other metric is dropped.
#[derive(Default)]
struct DrainCounter(Arc<AtomicU64>);

impl Recorder for DrainCounter {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        if key.name() == "regent_drain_timeouts_total" {
            Counter::from_arc(self.0.clone())
        } else {
            Counter::noop()
        }
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test(start_paused = true)]
async fn work_outliving_the_drain_bound_is_reported_and_the_lease_released() {
    // A current-thread runtime: every task runs on this thread, so a
    // thread-local recorder sees the node task's metrics.
    let recorder = DrainCounter::default();
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let l = Log::default();
    let e = elector(harness(holding_db(&l, true))).await;
    let h = e.spawn(role()).await.unwrap();
    h.wait_until_leader().await.unwrap();
    let ll = l.clone();
    let worker = {
        let h = h.clone();
        tokio::spawn(async move {
            h.run_while_leader(|_cancel, _| async move {
                // Ignores cancellation for a minute.
                tokio::time::sleep(Duration::from_secs(60)).await;
                log(&ll, "work done");
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.last_drain_overrun(), None);
    let t = Instant::now();
    h.shutdown().await;
    // Released at the drain bound (5 s by default), not when work ended.
    assert_eq!(t.elapsed(), Duration::from_secs(5));
    let seq: Vec<String> = entries(&l).into_iter().filter(|s| s != "renew").collect();
    assert_eq!(
        seq,
        ["expire scheduler 7", "unlock scheduler", "notify scheduler"]
    );
    let overrun = h.last_drain_overrun().unwrap();
    assert_eq!(
        overrun,
        DrainOverrun {
            role: role(),
            waited: Duration::from_secs(5),
            still_running: 1,
        }
    );
    assert_eq!(recorder.0.load(Ordering::SeqCst), 1);
    worker.await.unwrap().unwrap();
    assert_eq!(entries(&l).last().map(String::as_str), Some("work done"));
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn work_that_stops_in_time_is_no_overrun() {
    let recorder = DrainCounter::default();
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let l = Log::default();
    let e = elector(harness(holding_db(&l, true))).await;
    let h = e.spawn(role()).await.unwrap();
    h.wait_until_leader().await.unwrap();
    let worker = {
        let h = h.clone();
        tokio::spawn(async move {
            h.run_while_leader(|cancel, _| async move {
                cancel.cancelled().await;
                tokio::time::sleep(Duration::from_millis(4999)).await;
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    h.shutdown().await;
    assert_eq!(t.elapsed(), Duration::from_millis(4999));
    assert_eq!(h.last_drain_overrun(), None);
    assert_eq!(recorder.0.load(Ordering::SeqCst), 0);
    worker.await.unwrap().unwrap();
    e.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn dropping_the_elector_and_every_handle_stops_the_node() {
    let l = Log::default();
    let e = elector(harness(holding_db(&l, true))).await;
    let h = e.spawn(role()).await.unwrap();
    h.wait_until_leader().await.unwrap();
    let mut rx = h.watch_status();
    assert_eq!(e.shutdown_bound(), Duration::from_millis(12_500));
    drop(e);
    drop(h);
    within(rx.wait_for(|s| *s == RoleStatus::Stopped))
        .await
        .unwrap();
    let seq = entries(&l);
    assert!(seq.contains(&"unlock scheduler".to_owned()), "{seq:?}");
    assert_eq!(seq.last().map(String::as_str), Some("reset"));
}

/// The `spawn` shortcut leaves no `Elector` to shut down: the handle's
/// `shutdown` shuts the node down, releasing and closing the session.
#[tokio::test(start_paused = true)]
async fn shutdown_of_a_shortcut_handle_closes_the_session() {
    let l = Log::default();
    let h = Elector::builder_shared(harness(holding_db(&l, true)))
        .node_id(crate::NodeId::new("node-a").unwrap())
        .spawn(role())
        .await
        .unwrap();
    h.wait_until_leader().await.unwrap();
    within(h.shutdown()).await;
    let seq = entries(&l);
    assert!(seq.contains(&"unlock scheduler".to_owned()), "{seq:?}");
    assert_eq!(seq.last().map(String::as_str), Some("reset"), "{seq:?}");
    assert_eq!(h.status(), RoleStatus::Stopped);
}
