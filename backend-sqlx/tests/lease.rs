//! Lease contract, fencing and migration of `SqlxBackend` against a real
//! PostgreSQL.

mod common;

use std::time::Duration;

use common::{Ctx, LEASE, granted, node_id, role};
use regent_core::{BackendError, HeldLease, Lease, Lock, Namespace, Term};
use regent_sqlx::{FencedError, SqlxBackend};

#[tokio::test]
async fn claim_increments_term_and_returns_previous() {
    let ctx = Ctx::new("claim").await;
    let (a, b) = (ctx.node("a"), ctx.node("b"));
    let (r, ida, idb) = (role("r"), node_id("a"), node_id("b"));

    assert!(granted(&a, &ctx.ns(), &r).await);
    let first = a.claim(&ctx.ns(), &r, &ida, LEASE).await.unwrap();
    assert_eq!(first.term, Term(1));
    assert_eq!(first.previous, None);

    // b sees the row in its try_lock.
    let seen = b
        .try_lock(&ctx.ns(), std::slice::from_ref(&r))
        .await
        .unwrap();
    let row = seen.attempts[0].lease.clone().unwrap();
    assert_eq!((row.holder.as_str(), row.term), ("a", Term(1)));
    assert_eq!(row.acquired_at, first.db_now);
    assert_eq!(row.lease_until, first.db_now + LEASE);
    assert!(row.session.is_some());

    // a releases properly; b takes over with term 2 and sees a's row.
    a.expire(&ctx.ns(), &r, &ida, Term(1)).await.unwrap();
    a.unlock(&ctx.ns(), &r).await.unwrap();
    assert!(granted(&b, &ctx.ns(), &r).await);
    let second = b.claim(&ctx.ns(), &r, &idb, LEASE).await.unwrap();
    assert_eq!(second.term, Term(2));
    let prev = second.previous.unwrap();
    assert_eq!((prev.holder.as_str(), prev.term), ("a", Term(1)));
    assert!(prev.expired_at(second.db_now));
    // Claiming again (same holder) still increments.
    assert_eq!(
        b.claim(&ctx.ns(), &r, &idb, LEASE).await.unwrap().term,
        Term(3)
    );
    ctx.cleanup().await;
}

#[tokio::test]
async fn renew_is_one_batch_guarded_by_holder_term_and_session() {
    let ctx = Ctx::new("renew").await;
    let (a, b) = (ctx.node("a"), ctx.node("b"));
    let ida = node_id("a");
    let roles = [role("r1"), role("r2"), role("r3")];
    a.try_lock(&ctx.ns(), &roles).await.unwrap();
    let mut held = Vec::new();
    for r in &roles {
        let term = a
            .claim(&ctx.ns(), r, &ida, Duration::from_secs(1))
            .await
            .unwrap()
            .term;
        held.push(HeldLease {
            role: r.clone(),
            term,
        });
    }
    let (_, before) = a.read(&ctx.ns(), &roles).await.unwrap();
    // r2 with a stale term is not renewed.
    let mut ask = held.clone();
    ask[1].term = Term(99);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let out = a.renew(&ctx.ns(), &ida, &ask, LEASE).await.unwrap();
    assert_eq!(out.renewed, vec![roles[0].clone(), roles[2].clone()]);
    let (now, after) = a.read(&ctx.ns(), &roles).await.unwrap();
    assert!(now >= out.db_now);
    assert_eq!(after[0].lease_until, out.db_now + LEASE);
    assert!(after[0].renewed_at > before[0].renewed_at);
    assert_eq!(after[1].lease_until, before[1].lease_until);
    // Another holder name renews nothing.
    let other = a
        .renew(&ctx.ns(), &node_id("x"), &held, LEASE)
        .await
        .unwrap();
    assert!(other.renewed.is_empty());
    // Right holder and terms but another session (no lock): nothing.
    let stolen = b.renew(&ctx.ns(), &ida, &held, LEASE).await.unwrap();
    assert!(stolen.renewed.is_empty());
    // An empty batch still reports the database clock.
    assert!(a.renew(&ctx.ns(), &ida, &[], LEASE).await.unwrap().db_now >= out.db_now);
    ctx.cleanup().await;
}

#[tokio::test]
async fn expire_ends_the_lease_only_for_holder_and_term() {
    let ctx = Ctx::new("expire").await;
    let a = ctx.node("a");
    let (r, ida) = (role("r"), node_id("a"));
    a.try_lock(&ctx.ns(), std::slice::from_ref(&r))
        .await
        .unwrap();
    let c = a.claim(&ctx.ns(), &r, &ida, LEASE).await.unwrap();
    a.expire(&ctx.ns(), &r, &ida, Term(7)).await.unwrap();
    a.expire(&ctx.ns(), &r, &node_id("b"), c.term)
        .await
        .unwrap();
    let (now, rows) = a.read(&ctx.ns(), std::slice::from_ref(&r)).await.unwrap();
    assert!(!rows[0].expired_at(now));
    a.expire(&ctx.ns(), &r, &ida, c.term).await.unwrap();
    let (now, rows) = a.read(&ctx.ns(), std::slice::from_ref(&r)).await.unwrap();
    assert!(rows[0].expired_at(now));
    assert_eq!((rows[0].holder.as_str(), rows[0].term), ("a", c.term));
    // Expiring a role that has no row is fine too.
    a.expire(&ctx.ns(), &role("none"), &ida, Term(1))
        .await
        .unwrap();
    ctx.cleanup().await;
}

#[tokio::test]
async fn list_and_read_filter_by_namespace() {
    let ctx = Ctx::new("list").await;
    let a = ctx.node("a");
    let ida = node_id("a");
    let other = Namespace::new(format!("{}-other", ctx.schema)).unwrap();
    for n in [ctx.ns(), other.clone()] {
        let rs = [role("x"), role("y")];
        a.try_lock(&n, &rs).await.unwrap();
        for r in &rs {
            a.claim(&n, r, &ida, LEASE).await.unwrap();
        }
    }
    assert_eq!(a.list(None).await.unwrap().len(), 4);
    let only = a.list(Some(&other)).await.unwrap();
    assert_eq!(only.len(), 2);
    assert!(only.iter().all(|l| l.namespace == other));
    let (_, rows) = a.read(&other, &[role("y"), role("missing")]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].role, role("y"));
    let (now, none) = a.read(&other, &[]).await.unwrap();
    assert!(none.is_empty() && now.as_micros() > 0);
    ctx.cleanup().await;
}

#[tokio::test]
async fn fenced_transaction_rejects_a_stale_token() {
    let ctx = Ctx::new("fenced").await;
    let (a, b) = (ctx.node("a"), ctx.node("b"));
    let (r, ida, idb) = (role("r"), node_id("a"), node_id("b"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE \"{}\".writes (token bigint)",
        ctx.schema
    )))
    .execute(&ctx.pool)
    .await
    .unwrap();
    let insert = format!("INSERT INTO \"{}\".writes VALUES ($1)", ctx.schema);

    // No lease yet: stale.
    let e = a
        .fenced(&regent_core::Fence::new(
            ctx.ns().clone(),
            r.clone(),
            ida.clone(),
            Term(1),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            FencedError::Stale(regent_postgres::Stale {
                current_term: None,
                ..
            })
        ),
        "{e}"
    );

    a.try_lock(&ctx.ns(), std::slice::from_ref(&r))
        .await
        .unwrap();
    let t1 = a.claim(&ctx.ns(), &r, &ida, LEASE).await.unwrap().term;
    let mut tx = a
        .fenced(&regent_core::Fence::new(
            ctx.ns().clone(),
            r.clone(),
            ida.clone(),
            t1,
        ))
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
        .bind(1_i64)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        a.fenced(&regent_core::Fence::new(
            ctx.ns().clone(),
            r.clone(),
            idb.clone(),
            t1
        ))
        .await
        .is_err()
    );
    assert!(
        a.fenced(&regent_core::Fence::new(
            ctx.ns().clone(),
            r.clone(),
            ida.clone(),
            Term(t1.0 + 1)
        ))
        .await
        .is_err()
    );

    // b takes over: a's token is stale from now on.
    a.expire(&ctx.ns(), &r, &ida, t1).await.unwrap();
    a.unlock(&ctx.ns(), &r).await.unwrap();
    b.try_lock(&ctx.ns(), std::slice::from_ref(&r))
        .await
        .unwrap();
    let t2 = b.claim(&ctx.ns(), &r, &idb, LEASE).await.unwrap().term;
    match a
        .fenced(&regent_core::Fence::new(
            ctx.ns().clone(),
            r.clone(),
            ida.clone(),
            t1,
        ))
        .await
        .unwrap_err()
    {
        FencedError::Stale(regent_postgres::Stale {
            token,
            current_holder,
            current_term,
            ..
        }) => {
            assert_eq!(token, t1);
            assert_eq!(current_holder.as_deref(), Some("b"));
            assert_eq!(current_term, Some(t2));
        }
        other => panic!("expected Stale, got {other}"),
    }
    b.fenced(&regent_core::Fence::new(
        ctx.ns().clone(),
        r.clone(),
        idb.clone(),
        t2,
    ))
    .await
    .unwrap()
    .commit()
    .await
    .unwrap();
    ctx.cleanup().await;
}

#[tokio::test]
async fn takeover_claim_is_busy_while_fenced_work_is_in_flight() {
    let ctx = Ctx::new("fwait").await;
    let (a, b) = (ctx.node("a"), ctx.node("b"));
    let (r, ida, idb) = (role("r"), node_id("a"), node_id("b"));
    a.try_lock(&ctx.ns(), std::slice::from_ref(&r))
        .await
        .unwrap();
    let t1 = a.claim(&ctx.ns(), &r, &ida, LEASE).await.unwrap().term;
    let tx = a
        .fenced(&regent_core::Fence::new(
            ctx.ns().clone(),
            r.clone(),
            ida.clone(),
            t1,
        ))
        .await
        .unwrap();
    // a's session goes away (crash); b gets the lock and claims.
    a.reset().await;
    ctx.wait_gone(&ctx.app("a")).await;
    assert!(granted(&b, &ctx.ns(), &r).await);
    // The claim never waits on the row lock (it would hold up every other
    // role of b's session): it is refused as busy, and changes nothing.
    let busy = b.claim(&ctx.ns(), &r, &idb, LEASE).await.unwrap_err();
    assert!(matches!(busy, BackendError::Busy(_)), "{busy}");
    assert!(busy.is_retryable() && !busy.is_session_lost());
    // b's session survived the refusal: it still holds the lock.
    assert_eq!(
        b.held(&ctx.ns(), std::slice::from_ref(&r)).await.unwrap(),
        vec![r.clone()]
    );
    tx.commit().await.unwrap();
    let c = b.claim(&ctx.ns(), &r, &idb, LEASE).await.unwrap();
    assert_eq!(c.term, Term(t1.0 + 1));
    assert_eq!(c.previous.unwrap().term, t1);
    ctx.cleanup().await;
}

#[tokio::test]
async fn concurrent_migrate_from_eight_tasks() {
    let ctx = Ctx::without_table("migr").await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let node = ctx.node(&format!("m{i}"));
        tasks.push(tokio::spawn(async move { node.migrate().await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let a = ctx.node("a");
    a.migrate().await.unwrap();
    a.connect().await.unwrap();
    assert!(a.list(None).await.unwrap().is_empty());
    ctx.cleanup().await;
}

#[tokio::test]
async fn an_idle_fenced_transaction_is_ended_by_the_server_and_the_claim_proceeds() {
    let ctx = Ctx::new("fidle").await;
    let a = SqlxBackend::builder()
        .schema(&ctx.schema)
        .application_name(&ctx.app("a"))
        .fenced_idle_timeout(Duration::from_millis(300))
        .build(ctx.pool.clone())
        .unwrap();
    let b = ctx.node("b");
    let (r, ida, idb) = (role("r"), node_id("a"), node_id("b"));
    assert!(granted(&a, &ctx.ns(), &r).await);
    let t1 = a.claim(&ctx.ns(), &r, &ida, LEASE).await.unwrap().term;
    // a's fenced transaction holds the row FOR KEY SHARE, then a freezes.
    let mut tx = a
        .fenced(&regent_core::Fence::new(
            ctx.ns().clone(),
            r.clone(),
            ida.clone(),
            t1,
        ))
        .await
        .unwrap();
    a.reset().await;
    ctx.wait_gone(&ctx.app("a")).await;
    assert!(granted(&b, &ctx.ns(), &r).await);
    // b's claim is busy until the server ends the idle transaction (after
    // 300 ms), then goes through. Bounded: at most 100 tries, 100 ms apart.
    let mut busy = 0;
    let c = loop {
        match b.claim(&ctx.ns(), &r, &idb, LEASE).await {
            Ok(c) => break c,
            Err(BackendError::Busy(_)) if busy < 100 => busy += 1,
            Err(e) => panic!("claim failed after {busy} busy tries: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(c.term, Term(t1.0 + 1));
    // The frozen leader wakes up: its transaction is gone, nothing is written.
    let commit = async {
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        tx.commit().await
    }
    .await;
    assert!(commit.is_err(), "the idle fenced transaction committed");
    // The pool recovers, and a's old token is now stale.
    assert!(matches!(
        a.fenced(&regent_core::Fence::new(
            ctx.ns().clone(),
            r.clone(),
            ida.clone(),
            t1
        ))
        .await,
        Err(FencedError::Stale(_))
    ));
    ctx.cleanup().await;
}

/// A release that names no term (the caller gave up on its claim, or let
/// go before its wait for the predecessor was over) shortens this
/// session's claim to the end of the lease it replaced: an unled claim
/// never makes the next holder wait a whole extra lease, and a predecessor
/// that may still act is still waited for.
#[tokio::test]
async fn a_release_without_a_term_shortens_the_claim_to_its_predecessor() {
    use regent_core::Backend;
    let ctx = Ctx::new("unled").await;
    let (a, b) = (ctx.node("a"), ctx.node("b"));
    let (r, s, ida, idb) = (role("r"), role("s"), node_id("a"), node_id("b"));
    let ns = ctx.ns();
    // a leads r; its session dies, its lease runs on.
    assert!(granted(&a, &ns, &r).await);
    let ta = a.claim(&ns, &r, &ida, LEASE).await.unwrap();
    a.reset().await;
    ctx.wait_gone(&ctx.app("a")).await;
    assert!(granted(&b, &ns, &r).await);
    let tb = b.claim(&ns, &r, &idb, LEASE).await.unwrap();
    let a_until = tb.previous.clone().unwrap().lease_until;
    assert_eq!(tb.term, Term(ta.term.0 + 1));
    // b lets go without a term (as after a claim it gave up on).
    b.release(&ns, &r, &idb, None).await.unwrap();
    let (_, rows) = b.read(&ns, std::slice::from_ref(&r)).await.unwrap();
    assert_eq!(rows[0].term, tb.term);
    assert_eq!(
        rows[0].lease_until, a_until,
        "the unled claim must end with a's lease, not a lease later"
    );
    // With no running predecessor, the unled claim ends now.
    assert!(granted(&b, &ns, &s).await);
    b.claim(&ns, &s, &idb, LEASE).await.unwrap();
    b.release(&ns, &s, &idb, None).await.unwrap();
    let (now, rows) = b.read(&ns, std::slice::from_ref(&s)).await.unwrap();
    assert!(rows[0].lease_until <= now);
    ctx.cleanup().await;
}
