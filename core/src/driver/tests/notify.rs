//! Release notifications: what the node does around (re)subscribing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::types::Term;

/// DESIGN §3: after *every* subscribe, the first included, the node must
/// assume it missed releases and poll. Here the standby's first try is
/// denied, the holder releases (and notifies) while the standby is not yet
/// listening, and only then does its first subscribe complete. The standby
/// must try again at that very instant, not a retry interval later.
#[tokio::test(start_paused = true)]
async fn first_subscribe_polls_for_a_release_it_could_not_hear() {
    let l = Log::default();
    let mut db = base_db(&l, Arc::new(AtomicBool::new(true)));
    db.expect_held().returning(|_, roles| Ok(roles.to_vec()));
    let tries = Arc::new(AtomicUsize::new(0));
    let released = Arc::new(AtomicBool::new(false));
    {
        let (tries, released, l) = (tries.clone(), released.clone(), l.clone());
        db.expect_try_lock().returning(move |_, roles| {
            tries.fetch_add(1, Ordering::SeqCst);
            let free = released.load(Ordering::SeqCst);
            log(&l, format!("try_lock granted={free}"));
            Ok(lock_outcome(roles, free))
        });
    }
    db.expect_claim().returning(|_, _, _, _| {
        Ok(ClaimOutcome {
            term: Term(8),
            previous: None,
            db_now: DbTimestamp::from_micros(0),
        })
    });
    let h = Arc::new(Harness {
        db,
        hang_renew: AtomicBool::new(false),
        closed: tokio::sync::Notify::new(),
        subscribe_gate: Some(tokio::sync::Notify::new()),
    });
    let e = elector(h.clone()).await;
    let lh = e.spawn(role()).await.unwrap();
    // The first round is denied; the subscription is still pending.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(tries.load(Ordering::SeqCst), 1);
    assert!(!lh.is_leader());
    // The holder releases and publishes: nobody listens yet.
    released.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        tries.load(Ordering::SeqCst),
        1,
        "no retry before its interval"
    );
    // Now the LISTEN becomes active.
    let subscribed_at = Instant::now();
    h.subscribe_gate.as_ref().unwrap().notify_one();
    let term = lh.wait_until_leader().await.unwrap();
    assert_eq!(term, Term(8));
    // Took over at the instant the subscription came up: 200 ms after the
    // first try, where the retry interval alone would have taken ≥ 1 s.
    assert_eq!(Instant::now(), subscribed_at);
    assert_eq!(
        entries(&l)
            .into_iter()
            .filter(|s| s.starts_with("try_lock"))
            .collect::<Vec<_>>(),
        vec!["try_lock granted=false", "try_lock granted=true"]
    );
    e.shutdown().await;
}
