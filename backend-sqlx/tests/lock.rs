//! Lock contract of `SqlxBackend` against a real PostgreSQL.

mod common;

use std::time::Duration;

use common::{Ctx, LEASE, granted, node_id, role};
use regent_core::{BackendError, Depose, HeldLease, Lease, Lock, PreemptOutcome, Term};
use regent_sqlx::{SessionSettings, SqlxBackend};

#[tokio::test]
async fn lock_is_exclusive_between_nodes() {
    let ctx = Ctx::new("excl").await;
    let (a, b) = (ctx.node("a"), ctx.node("b"));
    a.connect().await.unwrap();
    b.connect().await.unwrap();
    let r = role("scheduler");

    let got_a = a
        .try_lock(&ctx.ns(), std::slice::from_ref(&r))
        .await
        .unwrap();
    assert!(got_a.attempts[0].granted);
    assert_eq!(got_a.attempts[0].lease, None);
    let got_b = b
        .try_lock(&ctx.ns(), std::slice::from_ref(&r))
        .await
        .unwrap();
    assert!(!got_b.attempts[0].granted);
    assert!(got_b.db_now >= got_a.db_now);

    assert_eq!(
        a.held(&ctx.ns(), std::slice::from_ref(&r)).await.unwrap(),
        vec![r.clone()]
    );
    assert!(
        b.held(&ctx.ns(), std::slice::from_ref(&r))
            .await
            .unwrap()
            .is_empty()
    );

    a.unlock(&ctx.ns(), &r).await.unwrap();
    a.unlock(&ctx.ns(), &r).await.unwrap(); // not held: not an error
    assert!(granted(&b, &ctx.ns(), &r).await);
    assert!(!granted(&a, &ctx.ns(), &r).await);
    ctx.cleanup().await;
}

#[tokio::test]
async fn try_lock_never_takes_a_held_key_twice() {
    let ctx = Ctx::new("reent").await;
    let (a, b) = (ctx.node("a"), ctx.node("b"));
    let r = role("r");
    // Twice in one batch and once more: one lock on the server.
    let first = a
        .try_lock(&ctx.ns(), &[r.clone(), r.clone()])
        .await
        .unwrap();
    assert_eq!(first.attempts.len(), 1);
    assert!(first.attempts[0].granted);
    assert!(granted(&a, &ctx.ns(), &r).await);
    let pid = ctx.pids(&ctx.app("a")).await[0];
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'advisory'",
    )
    .bind(pid)
    .fetch_one(&ctx.pool)
    .await
    .unwrap();
    assert_eq!(locks, 1, "re-entrant advisory lock taken twice");
    // So one unlock frees it.
    a.unlock(&ctx.ns(), &r).await.unwrap();
    assert!(granted(&b, &ctx.ns(), &r).await);
    ctx.cleanup().await;
}

#[tokio::test]
async fn terminated_session_is_lock_loss_then_a_new_session_works() {
    let ctx = Ctx::new("term").await;
    let (a, b) = (ctx.node("a"), ctx.node("b"));
    let r = role("r");
    assert!(granted(&a, &ctx.ns(), &r).await);
    let pid = a.session_pid().unwrap();
    assert_eq!(ctx.pids(&ctx.app("a")).await, vec![pid]);
    assert_eq!(ctx.terminate(&ctx.app("a")).await, 1);

    let err = a
        .held(&ctx.ns(), std::slice::from_ref(&r))
        .await
        .unwrap_err();
    assert!(err.is_session_lost(), "{err:?}");
    // The lock went with the session...
    assert!(granted(&b, &ctx.ns(), &r).await);
    // ...and the next call on `a` opens a fresh session.
    assert!(
        a.held(&ctx.ns(), std::slice::from_ref(&r))
            .await
            .unwrap()
            .is_empty()
    );
    a.ping().await.unwrap();
    b.unlock(&ctx.ns(), &r).await.unwrap();
    assert!(granted(&a, &ctx.ns(), &r).await);
    ctx.cleanup().await;
}

/// Locks role `r`'s lease row `FOR UPDATE` from outside the node (as a
/// takeover's claim does for an instant), so the node's renewal of it waits.
async fn lock_row_from_outside(
    ctx: &Ctx,
    r: &regent_core::Role,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = ctx.pool.begin().await.unwrap();
    let sql = format!(
        "SELECT 1 FROM \"{}\".regent_leases WHERE namespace = $1 AND role = $2 FOR UPDATE",
        ctx.schema
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(ctx.ns().as_str())
        .bind(r.as_str())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx
}

#[tokio::test]
async fn a_call_given_up_on_still_completes_and_a_queued_one_is_skipped() {
    let ctx = Ctx::new("abandon").await;
    let (a, b) = (ctx.node("a"), ctx.node("b"));
    let (r, me) = (role("r"), node_id("a"));
    assert!(granted(&a, &ctx.ns(), &r).await);
    let term = a.claim(&ctx.ns(), &r, &me, LEASE).await.unwrap().term;
    // Someone holds the row, so the renewal waits; the caller gives up on
    // it (as the driver's attempt timeout does).
    let outside = lock_row_from_outside(&ctx, &r).await;
    let ms = Duration::from_millis;
    let held = [HeldLease {
        role: r.clone(),
        term,
    }];
    let slow = tokio::time::timeout(ms(300), a.renew(&ctx.ns(), &me, &held, LEASE)).await;
    assert!(slow.is_err(), "the renewal should wait for the row lock");
    // This one queues behind the running renewal and is given up on too.
    let queued = [role("queued")];
    let skipped = tokio::time::timeout(ms(100), a.try_lock(&ctx.ns(), &queued)).await;
    assert!(skipped.is_err());
    outside.rollback().await.unwrap();
    // The renewal ran to completion in the background: no session was lost.
    a.ping().await.unwrap();
    assert_eq!(
        a.held(&ctx.ns(), std::slice::from_ref(&r)).await.unwrap(),
        vec![r.clone()]
    );
    // The queued try_lock never ran.
    assert!(granted(&b, &ctx.ns(), &queued[0]).await);
    ctx.cleanup().await;
}

/// A renewal blocked past the (server-side) statement timeout fails with a
/// retryable error, and the session keeps its locks: DML never costs the
/// session. Checked for both ways of sending settings.
async fn statement_timeout_scenario(tag: &str, how: SessionSettings) {
    let ctx = Ctx::new(tag).await;
    let a = SqlxBackend::builder()
        .schema(&ctx.schema)
        .application_name(&ctx.app("a"))
        .session_settings(how)
        .statement_timeout(Duration::from_millis(300))
        .build(ctx.pool.clone())
        .unwrap();
    let b = ctx.node("b");
    let (r, me) = (role("r"), node_id("a"));
    assert!(granted(&a, &ctx.ns(), &r).await);
    let term = a.claim(&ctx.ns(), &r, &me, LEASE).await.unwrap().term;
    let outside = lock_row_from_outside(&ctx, &r).await;
    let held = [HeldLease {
        role: r.clone(),
        term,
    }];
    let err = a.renew(&ctx.ns(), &me, &held, LEASE).await.unwrap_err();
    assert!(!err.is_session_lost() && err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("statement timeout"), "{err}");
    outside.rollback().await.unwrap();
    // The lock stayed with a's session; the next renewal goes through.
    assert!(!granted(&b, &ctx.ns(), &r).await);
    let renewed = a.renew(&ctx.ns(), &me, &held, LEASE).await.unwrap();
    assert_eq!(renewed.renewed, vec![r.clone()]);
    ctx.cleanup().await;
}

#[tokio::test]
async fn statement_timeout_of_dml_keeps_the_session_and_its_locks() {
    statement_timeout_scenario("stmt", SessionSettings::StartupOptions).await;
}

#[tokio::test]
async fn set_commands_mode_applies_the_statement_timeout() {
    statement_timeout_scenario("setcmd", SessionSettings::SetCommands).await;
}

#[tokio::test]
async fn claim_without_the_lock_is_refused() {
    let ctx = Ctx::new("nolock").await;
    let a = ctx.node("a");
    let err = a
        .claim(&ctx.ns(), &role("r"), &node_id("a"), LEASE)
        .await
        .unwrap_err();
    assert!(err.is_session_lost(), "{err:?}");
    let (_, rows) = a.read(&ctx.ns(), &[role("r")]).await.unwrap();
    assert!(rows.is_empty());
    ctx.cleanup().await;
}

#[tokio::test]
async fn two_hundred_roles_share_one_session_connection() {
    let ctx = Ctx::new("many").await;
    let a = ctx.node("a");
    let me = node_id("a");
    let roles: Vec<_> = (0..200).map(|i| role(&format!("shard-{i}"))).collect();
    let out = a.try_lock(&ctx.ns(), &roles).await.unwrap();
    assert_eq!(out.attempts.len(), 200);
    assert!(out.attempts.iter().all(|x| x.granted));
    let mut held = Vec::new();
    for r in &roles {
        let term = a.claim(&ctx.ns(), r, &me, LEASE).await.unwrap().term;
        held.push(regent_core::HeldLease {
            role: r.clone(),
            term,
        });
    }
    let renewed = a.renew(&ctx.ns(), &me, &held, LEASE).await.unwrap();
    assert_eq!(renewed.renewed.len(), 200);
    assert_eq!(a.held(&ctx.ns(), &roles).await.unwrap().len(), 200);
    assert_eq!(
        ctx.pids(&ctx.app("a")).await.len(),
        1,
        "one session per node"
    );
    let pid = ctx.pids(&ctx.app("a")).await[0];
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'advisory'",
    )
    .bind(pid)
    .fetch_one(&ctx.pool)
    .await
    .unwrap();
    assert_eq!(locks, 200);
    ctx.cleanup().await;
}

/// A zombie frozen inside a fenced transaction: deposing it ends that
/// transaction too (it carries a name unique to the zombie's term), so the
/// claim is no longer held off until `fenced_idle_timeout`.
#[tokio::test]
async fn deposing_a_zombie_ends_its_open_fenced_work() {
    let ctx = Ctx::new("depfence").await;
    let (a, b) = (ctx.node("a"), ctx.node("b"));
    let (r, ida, idb) = (role("r"), node_id("a"), node_id("b"));
    assert!(granted(&a, &ctx.ns(), &r).await);
    let term = a
        .claim(&ctx.ns(), &r, &ida, Duration::from_millis(200))
        .await
        .unwrap()
        .term;
    let fence = regent_core::Fence::new(ctx.ns(), r.clone(), ida.clone(), term);
    let mut tx = a.fenced(&fence).await.unwrap();
    // a freezes: its lock session and its fenced work stay open.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let lease = b
        .try_lock(&ctx.ns(), std::slice::from_ref(&r))
        .await
        .unwrap()
        .attempts[0]
        .lease
        .clone()
        .unwrap();
    assert_eq!(
        b.depose(&lease, Duration::from_millis(100)).await.unwrap(),
        PreemptOutcome::Terminated
    );
    ctx.wait_gone(&ctx.app("a")).await;
    // The fenced work is gone too: the claim is not busy, and a's late
    // write cannot commit.
    assert!(granted(&b, &ctx.ns(), &r).await);
    let c = b.claim(&ctx.ns(), &r, &idb, LEASE).await.unwrap();
    assert_eq!(c.term, Term(term.0 + 1));
    let late = async {
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        tx.commit().await
    }
    .await;
    assert!(late.is_err(), "the zombie's fenced work committed");
    ctx.cleanup().await;
}

#[tokio::test]
async fn preempt_terminates_only_an_expired_zombie() {
    let ctx = Ctx::new("preempt").await;
    let (a, b) = (ctx.node("a"), ctx.node("b"));
    let (r, me) = (role("r"), node_id("a"));
    assert!(granted(&a, &ctx.ns(), &r).await);
    a.claim(&ctx.ns(), &r, &me, Duration::from_millis(200))
        .await
        .unwrap();
    let seen = b
        .try_lock(&ctx.ns(), std::slice::from_ref(&r))
        .await
        .unwrap()
        .attempts[0]
        .clone();
    assert!(!seen.granted);
    let lease = seen.lease.unwrap();
    assert_eq!(lease.holder, "a");
    // Not yet expired by more than the grace period.
    let grace = Duration::from_millis(100);
    assert_eq!(
        b.depose(&lease, grace).await.unwrap(),
        PreemptOutcome::NotZombie
    );
    // A different term (the row moved on) is not the zombie either.
    let mut other = lease.clone();
    other.term.0 += 1;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        b.depose(&other, grace).await.unwrap(),
        PreemptOutcome::NotZombie
    );
    assert_eq!(
        b.depose(&lease, grace).await.unwrap(),
        PreemptOutcome::Terminated
    );
    ctx.wait_gone(&ctx.app("a")).await;
    assert!(granted(&b, &ctx.ns(), &r).await);
    assert!(a.ping().await.unwrap_err().is_session_lost());
    // The pid is gone now: nothing to terminate.
    assert_eq!(
        b.depose(&lease, grace).await.unwrap(),
        PreemptOutcome::NotZombie
    );
    ctx.cleanup().await;
}

#[tokio::test]
async fn preempt_without_privilege_is_not_permitted() {
    let ctx = Ctx::new("noperm").await;
    let a = ctx.node("a");
    let (r, me) = (role("r"), node_id("a"));
    assert!(granted(&a, &ctx.ns(), &r).await);
    a.claim(&ctx.ns(), &r, &me, Duration::from_millis(1))
        .await
        .unwrap();
    let lease = a
        .read(&ctx.ns(), std::slice::from_ref(&r))
        .await
        .unwrap()
        .1
        .remove(0);
    // A login role without pg_signal_backend, allowed to read the table.
    let user = "regent_test_nopriv";
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DO $$ BEGIN CREATE ROLE {user} LOGIN; EXCEPTION WHEN duplicate_object OR \
         unique_violation THEN NULL; END $$; \
         GRANT USAGE ON SCHEMA \"{s}\" TO {user}; \
         GRANT SELECT ON ALL TABLES IN SCHEMA \"{s}\" TO {user};",
        s = ctx.schema
    )))
    .execute(&ctx.pool)
    .await
    .unwrap();
    let url = ctx.url.replacen("postgres@", &format!("{user}@"), 1);
    if url == ctx.url {
        eprintln!("skipping: DATABASE_URL does not use user postgres");
        return ctx.cleanup().await;
    }
    let weak = SqlxBackend::builder()
        .schema(&ctx.schema)
        .connect(&url)
        .await
        .unwrap();
    // The table exists, so migrate() needs no CREATE privilege.
    weak.migrate().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let out = weak.depose(&lease, Duration::ZERO).await.unwrap();
    assert_eq!(out, PreemptOutcome::NotPermitted);
    assert_eq!(
        a.held(&ctx.ns(), std::slice::from_ref(&r)).await.unwrap(),
        vec![r.clone()]
    );
    weak.pool().close().await;
    ctx.cleanup().await;
}

#[tokio::test]
async fn missing_table_is_misconfigured() {
    let ctx = Ctx::without_table("missing").await;
    let a = ctx.node("a");
    let err = a.connect().await.unwrap_err();
    let BackendError::Misconfigured(msg) = &err else {
        panic!("expected Misconfigured, got {err:?}")
    };
    assert!(
        msg.contains("regent migrate") && msg.contains("migrate()"),
        "{msg}"
    );
    let err = a.try_lock(&ctx.ns(), &[role("r")]).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    let err = a.list(None).await.unwrap_err();
    assert!(matches!(err, BackendError::Misconfigured(_)), "{err:?}");
    a.migrate().await.unwrap();
    a.connect().await.unwrap();
    ctx.cleanup().await;
}

#[tokio::test]
async fn unreachable_database_fails_fast_with_a_clear_error() {
    // A refused connection is an error at once, not a retry loop; the
    // timeout is only a hang guard (speed belongs in benches/).
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        SqlxBackend::connect("postgres://postgres@127.0.0.1:1/test"),
    )
    .await
    .expect("connect to a closed port hung")
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("could not connect to PostgreSQL"), "{msg}");
    let bad = SqlxBackend::connect("postgres://u@h:notaport/db")
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("invalid database URL"), "{bad}");
}
