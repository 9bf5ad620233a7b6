//! Release notifications of `SqlxBackend` against a real PostgreSQL.

mod common;

use std::time::Duration;

use common::{Ctx, role};
use regent_core::{Namespace, Notify, NotifyEvent, Subscription};

async fn next(sub: &mut Box<dyn Subscription>) -> NotifyEvent {
    tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("no notification within 5 s")
        .expect("subscription failed")
}

#[tokio::test]
async fn release_notification_is_delivered_per_namespace() {
    let ctx = Ctx::new("notify").await;
    let (a, b) = (ctx.node("a"), ctx.node("b"));
    // A namespace of this test only, since channels are per database.
    let mine = Namespace::new(ctx.schema.clone()).unwrap();
    let other = Namespace::new(format!("{}-other", ctx.schema)).unwrap();
    let mut sub = b.subscribe(&mine).await.unwrap();
    a.publish_release(&other, &role("elsewhere")).await.unwrap();
    a.publish_release(&mine, &role("scheduler")).await.unwrap();
    assert_eq!(
        next(&mut sub).await,
        NotifyEvent::Released(role("scheduler"))
    );
    ctx.cleanup().await;
}

#[tokio::test]
async fn listener_reconnect_yields_maybe_missed() {
    let ctx = Ctx::new("relisten").await;
    let (a, b) = (ctx.node("a"), ctx.node("b"));
    let mine = Namespace::new(ctx.schema.clone()).unwrap();
    let mut sub = b.subscribe(&mine).await.unwrap();
    // Kill the listener's connection; PgListener reconnects by itself.
    assert_eq!(ctx.terminate(&format!("{}:listen", ctx.app("b"))).await, 1);
    a.publish_release(&mine, &role("lost")).await.unwrap();
    assert_eq!(next(&mut sub).await, NotifyEvent::MaybeMissed);
    // Listening again after the reconnect.
    a.publish_release(&mine, &role("r")).await.unwrap();
    let mut got = next(&mut sub).await;
    if got == NotifyEvent::Released(role("lost")) {
        got = next(&mut sub).await; // the reconnect raced the first publish
    }
    assert_eq!(got, NotifyEvent::Released(role("r")));
    // Dropping the subscription closes its connection.
    drop(sub);
    ctx.wait_gone(&format!("{}:listen", ctx.app("b"))).await;
    ctx.cleanup().await;
}

/// `Backend::release` is one statement: the lease ends, the lock is free
/// and the notification arrives — and, by the time a subscriber hears it,
/// the lease row is already expired and the lock already free.
#[tokio::test]
async fn release_expires_unlocks_and_notifies_in_one_step() {
    use common::{LEASE, granted, node_id};
    use regent_core::{Backend, Lease};
    let ctx = Ctx::new("release1").await;
    let (a, b) = (ctx.node("a"), ctx.node("b"));
    let (r, ida) = (role("r"), node_id("a"));
    let ns = ctx.ns();
    let mut sub = b.subscribe(&ns).await.unwrap();
    assert!(granted(&a, &ns, &r).await);
    let term = a.claim(&ns, &r, &ida, LEASE).await.unwrap().term;
    let released = a.release(&ns, &r, &ida, Some(term)).await.unwrap();
    assert!(released.notified && released.expire_failed.is_none());
    assert_eq!(next(&mut sub).await, NotifyEvent::Released(r.clone()));
    let (now, rows) = b.read(&ns, std::slice::from_ref(&r)).await.unwrap();
    assert!(rows[0].lease_until <= now, "the lease was not ended");
    assert!(granted(&b, &ns, &r).await, "the lock was not freed");
    // Releasing a role this session does not hold publishes nothing; a lock
    // held without a claim is freed but not announced (nobody took over
    // anything: announcing it would end a resigned node's hold-off, see
    // the machine's test `a_busy_claim_releases_without_announcing`).
    let not_held = a.release(&ns, &role("other"), &ida, None).await.unwrap();
    assert!(!not_held.notified);
    assert!(granted(&a, &ns, &role("other")).await);
    let no_term = a.release(&ns, &role("other"), &ida, None).await.unwrap();
    assert!(!no_term.notified);
    assert!(
        granted(&b, &ns, &role("other")).await,
        "the lock was not freed"
    );
    ctx.cleanup().await;
}
