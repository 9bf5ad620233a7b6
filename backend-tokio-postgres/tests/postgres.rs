//! Tests against a real PostgreSQL (`DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/test`). Each test has its own schema
//! and namespace.

mod support;

use std::time::{Duration, Instant};

use regent_core::{
    BackendError, HeldLease, Lease, Lock, Namespace, NodeId, Notify, NotifyEvent, Role, Term,
};
use regent_postgres::AdvisoryKey;
use regent_tokio_postgres::{FencedError, TokioPgBackend};
use support::Ctx;

const LEASE: Duration = Duration::from_secs(10);

fn role(s: &str) -> Role {
    Role::new(s).unwrap()
}

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

async fn lock_one(b: &TokioPgBackend, ns: &Namespace, r: &Role) -> bool {
    let out = b.try_lock(ns, std::slice::from_ref(r)).await.unwrap();
    assert_eq!(out.attempts.len(), 1);
    out.attempts[0].granted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_exclusive_between_two_backends() {
    let ctx = Ctx::new("excl").await;
    let a = ctx.backend("a").await;
    let b = ctx.backend_from_pool("b");
    a.connect().await.unwrap();
    b.connect().await.unwrap();
    let (r, ns) = (role("scheduler"), &ctx.ns);
    let key = AdvisoryKey::derive(ns, &r);

    assert!(lock_one(&a, ns, &r).await);
    assert!(!lock_one(&b, ns, &r).await);
    // Asking again is granted without taking the key a second time...
    assert!(lock_one(&a, ns, &r).await);
    assert_eq!(ctx.lock_holders(key).await, vec![a.session_pid().unwrap()]);
    // ...so one unlock frees it.
    a.unlock(ns, &r).await.unwrap();
    ctx.assert_lock_freed(key).await;
    assert!(lock_one(&b, ns, &r).await);
    assert!(!lock_one(&a, ns, &r).await);
    // Unlocking a role not held is not an error and changes nothing.
    a.unlock(ns, &r).await.unwrap();
    assert_eq!(ctx.lock_holders(key).await, vec![b.session_pid().unwrap()]);
    // A batch: one role free, one taken by b, one duplicated.
    let batch = [role("x"), r.clone(), role("x")];
    let out = a.try_lock(ns, &batch).await.unwrap();
    let got: Vec<(&str, bool)> = out
        .attempts
        .iter()
        .map(|x| (x.role.as_str(), x.granted))
        .collect();
    assert_eq!(got, [("x", true), ("scheduler", false)]);
    ctx.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_renew_expire_semantics() {
    let ctx = Ctx::new("lease").await;
    let (a, b) = (ctx.backend("a").await, ctx.backend("b").await);
    let (r, ns) = (role("billing"), &ctx.ns);
    let (na, nb) = (node("node-a"), node("node-b"));

    assert!(lock_one(&a, ns, &r).await);
    let c1 = a.claim(ns, &r, &na, LEASE).await.unwrap();
    assert_eq!((c1.term, c1.previous.clone()), (Term(1), None));
    let (now, rows) = a.read(ns, std::slice::from_ref(&r)).await.unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!((row.holder.as_str(), row.term), ("node-a", Term(1)));
    assert_eq!(row.session, a.session_pid().map(i64::from));
    assert!(row.lease_until > now + Duration::from_secs(8));

    // Renew: only with the right holder and term.
    let held = |t| {
        vec![HeldLease {
            role: r.clone(),
            term: Term(t),
        }]
    };
    let ok = a.renew(ns, &na, &held(1), LEASE).await.unwrap();
    assert_eq!(ok.renewed, vec![r.clone()]);
    let wrong_term = a.renew(ns, &na, &held(2), LEASE).await.unwrap();
    assert!(wrong_term.renewed.is_empty());
    let wrong_holder = a.renew(ns, &nb, &held(1), LEASE).await.unwrap();
    assert!(wrong_holder.renewed.is_empty());
    // Renew runs on the holder's session: another session cannot extend it.
    let other_session = b.renew(ns, &na, &held(1), LEASE).await.unwrap();
    assert!(other_session.renewed.is_empty());

    // Expire ends the lease now; wrong term changes nothing.
    a.expire(ns, &r, &na, Term(9)).await.unwrap();
    let (_, rows) = a.read(ns, std::slice::from_ref(&r)).await.unwrap();
    assert!(rows[0].lease_until > now + Duration::from_secs(8));
    a.expire(ns, &r, &na, Term(1)).await.unwrap();
    let (now2, rows) = a.read(ns, std::slice::from_ref(&r)).await.unwrap();
    assert!(rows[0].expired_at(now2));

    // Takeover: b gets the lock, sees a's expired row, claims term 2.
    a.unlock(ns, &r).await.unwrap();
    let out = b.try_lock(ns, std::slice::from_ref(&r)).await.unwrap();
    assert!(out.attempts[0].granted);
    let seen = out.attempts[0].lease.clone().unwrap();
    assert_eq!((seen.holder.as_str(), seen.term), ("node-a", Term(1)));
    assert!(seen.expired_at(out.db_now));
    let c2 = b.claim(ns, &r, &nb, LEASE).await.unwrap();
    assert_eq!(c2.term, Term(2));
    assert_eq!(c2.previous.unwrap().holder, "node-a");
    // The deposed holder can no longer renew or expire it.
    assert!(
        a.renew(ns, &na, &held(1), LEASE)
            .await
            .unwrap()
            .renewed
            .is_empty()
    );
    a.expire(ns, &r, &na, Term(1)).await.unwrap();
    let listed = a.list(Some(ns)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].holder.as_str(), listed[0].term),
        ("node-b", Term(2))
    );
    assert!(!listed[0].expired_at(c2.db_now));
    assert!(
        a.list(None)
            .await
            .unwrap()
            .iter()
            .any(|l| l.namespace == *ns)
    );

    // Claiming without holding the lock is refused as lock loss.
    let e = a.claim(ns, &r, &na, LEASE).await.unwrap_err();
    assert!(e.is_session_lost(), "{e}");
    ctx.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_is_validated_against_the_server() {
    let ctx = Ctx::new("held").await;
    let a = ctx.backend("a").await;
    let ns = &ctx.ns;
    let (r1, r2, r3) = (role("r1"), role("r2"), role("r3"));
    let out = a.try_lock(ns, &[r1.clone(), r2.clone()]).await.unwrap();
    assert!(out.attempts.iter().all(|x| x.granted));
    let all = [r1.clone(), r2.clone(), r3.clone()];
    assert_eq!(
        a.held(ns, &all).await.unwrap(),
        vec![r1.clone(), r2.clone()]
    );
    a.unlock(ns, &r2).await.unwrap();
    assert_eq!(a.held(ns, &all).await.unwrap(), vec![r1.clone()]);
    // Another namespace's keys are not ours.
    let other = Namespace::new(format!("{}x", ctx.schema)).unwrap();
    assert!(a.held(&other, &all).await.unwrap().is_empty());
    // After reset, nothing is held (a fresh session).
    let pid = a.session_pid().unwrap();
    a.reset().await;
    assert_eq!(a.session_pid(), None);
    ctx.assert_lock_freed(AdvisoryKey::derive(ns, &r1)).await;
    assert!(a.held(ns, &all).await.unwrap().is_empty());
    assert_ne!(a.session_pid(), Some(pid));
    a.ping().await.unwrap();
    ctx.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_is_delivered_and_reconnect_says_maybe_missed() {
    let ctx = Ctx::new("notify").await;
    let (a, b) = (ctx.backend("a").await, ctx.backend("b").await);
    let (r, ns) = (role("mailer"), &ctx.ns);
    let mut sub = a.subscribe(ns).await.unwrap();
    b.publish_release(ns, &r).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev, NotifyEvent::Released(r.clone()));
    // Another namespace's releases are not delivered.
    let other = Namespace::new(format!("{}y", ctx.schema)).unwrap();
    b.publish_release(&other, &r).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.recv())
            .await
            .is_err()
    );

    // Kill the listener: the next event is MaybeMissed, then it listens again.
    let pid = ctx.pid_of_app(&format!("{}:listen", ctx.app("a"))).await;
    ctx.terminate(pid).await;
    let ev = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev, NotifyEvent::MaybeMissed);
    b.publish_release(ns, &r).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev, NotifyEvent::Released(r));
    ctx.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_transactions_reject_stale_tokens() {
    let ctx = Ctx::new("fenced").await;
    let (a, b) = (ctx.backend("a").await, ctx.backend("b").await);
    let (r, ns) = (role("ledger"), &ctx.ns);
    let (na, nb) = (node("node-a"), node("node-b"));
    let work = format!("\"{}\".work", ctx.schema);
    ctx.admin
        .batch_execute(&format!(
            "CREATE TABLE {work} (id int8 PRIMARY KEY, by text)"
        ))
        .await
        .unwrap();
    let insert = format!("INSERT INTO {work} VALUES ($1, $2)");

    // No lease row yet: stale.
    let e = a
        .fenced(&regent_core::Fence::new(
            ns.clone(),
            r.clone(),
            na.clone(),
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

    assert!(lock_one(&a, ns, &r).await);
    let t1 = a.claim(ns, &r, &na, LEASE).await.unwrap().term;
    let tx = a
        .fenced(&regent_core::Fence::new(
            ns.clone(),
            r.clone(),
            na.clone(),
            t1,
        ))
        .await
        .unwrap();
    tx.execute(&insert, &[&1_i64, &"a"]).await.unwrap();
    tx.commit().await.unwrap();

    // An open fenced transaction holds off a takeover until it ends: the
    // claim is refused as busy (it never waits on the shared session).
    let tx = a
        .fenced(&regent_core::Fence::new(
            ns.clone(),
            r.clone(),
            na.clone(),
            t1,
        ))
        .await
        .unwrap();
    tx.execute(&insert, &[&2_i64, &"a"]).await.unwrap();
    a.unlock(ns, &r).await.unwrap();
    assert!(lock_one(&b, ns, &r).await);
    let busy = b.claim(ns, &r, &nb, LEASE).await.unwrap_err();
    assert!(matches!(busy, BackendError::Busy(_)), "{busy}");
    assert!(b.session_pid().is_some(), "a busy claim costs no session");
    tx.commit().await.unwrap();
    let t2 = b.claim(ns, &r, &nb, LEASE).await.unwrap().term;
    assert_eq!(t2, Term(2));

    // The deposed leader's token is now stale; the write never happens.
    let e = a
        .fenced(&regent_core::Fence::new(
            ns.clone(),
            r.clone(),
            na.clone(),
            t1,
        ))
        .await
        .unwrap_err();
    match &e {
        FencedError::Stale(regent_postgres::Stale {
            current_holder,
            current_term,
            ..
        }) => {
            assert_eq!(current_holder.as_deref(), Some("node-b"));
            assert_eq!(*current_term, Some(Term(2)));
        }
        other => panic!("expected Stale, got {other}"),
    }
    assert!(e.to_string().contains("stale fencing token 1"), "{e}");
    // Right term, wrong holder: stale too.
    assert!(matches!(
        a.fenced(&regent_core::Fence::new(
            ns.clone(),
            r.clone(),
            na.clone(),
            t2
        ))
        .await,
        Err(FencedError::Stale(_))
    ));
    // A dropped (uncommitted) transaction writes nothing.
    let tx = b
        .fenced(&regent_core::Fence::new(
            ns.clone(),
            r.clone(),
            nb.clone(),
            t2,
        ))
        .await
        .unwrap();
    tx.execute(&insert, &[&3_i64, &"b"]).await.unwrap();
    drop(tx);
    let tx = b
        .fenced(&regent_core::Fence::new(
            ns.clone(),
            r.clone(),
            nb.clone(),
            t2,
        ))
        .await
        .unwrap();
    let rows = tx
        .query(&format!("SELECT id FROM {work} ORDER BY id"), &[])
        .await
        .unwrap();
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, [1, 2]);
    tx.rollback().await.unwrap();
    ctx.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_session_is_reported_at_once_and_replaced() {
    let ctx = Ctx::new("term").await;
    let a = ctx.backend("a").await;
    let (r, ns) = (role("scheduler"), &ctx.ns);
    a.connect().await.unwrap();
    assert!(lock_one(&a, ns, &r).await);
    let pid = a.session_pid().unwrap();

    let watcher = a.clone();
    let closed = tokio::spawn(async move {
        watcher.session_closed().await;
        Instant::now()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !closed.is_finished(),
        "session_closed fired for a live session"
    );
    let t0 = Instant::now();
    ctx.terminate(pid).await;
    // Pushed by the connection's end, not found by a later call: no call is
    // made meanwhile. (The timeout is a hang guard; the latency is
    // measured in benches/lockloss.rs.)
    let at = tokio::time::timeout(Duration::from_secs(60), closed)
        .await
        .expect("session_closed never completed")
        .unwrap();
    let latency = at.saturating_duration_since(t0);
    eprintln!("session_closed latency after pg_terminate_backend: {latency:?}");
    assert_eq!(a.session_pid(), None);

    // Reported once: a new wait does not complete for the old session.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), a.session_closed())
            .await
            .is_err()
    );
    // The next call opens a fresh session (the loss was already reported).
    assert!(lock_one(&a, ns, &r).await);
    let pid2 = a.session_pid().unwrap();
    assert_ne!(pid2, pid);
    assert!(a.held(ns, std::slice::from_ref(&r)).await.unwrap() == vec![r.clone()]);

    // With nobody waiting, the next call reports the loss, once.
    ctx.terminate(pid2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = a.held(ns, std::slice::from_ref(&r)).await.unwrap_err();
    assert!(matches!(e, BackendError::SessionLost { .. }), "{e}");
    assert!(
        a.held(ns, std::slice::from_ref(&r))
            .await
            .unwrap()
            .is_empty()
    );
    let pid3 = a.session_pid().unwrap();
    assert!(pid3 != pid && pid3 != pid2);

    // A session closed by reset() is not reported as closing by itself.
    let watcher = a.clone();
    let closed = tokio::spawn(async move { watcher.session_closed().await });
    a.reset().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!closed.is_finished(), "session_closed fired for reset()");
    // ...but the watcher does fire for the next session's end.
    a.ping().await.unwrap();
    ctx.terminate(a.session_pid().unwrap()).await;
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("session_closed missed the next session")
        .unwrap();
    ctx.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lock_leaks() {
    let ctx = Ctx::new("leaks").await;
    let ns = &ctx.ns;
    let roles = [role("p"), role("q")];
    let keys: Vec<AdvisoryKey> = roles.iter().map(|r| AdvisoryKey::derive(ns, r)).collect();
    {
        let a = ctx.backend("a").await;
        let out = a.try_lock(ns, &roles).await.unwrap();
        assert!(out.attempts.iter().all(|x| x.granted));
        // Pool traffic meanwhile must not pick up any lock.
        a.list(Some(ns)).await.unwrap();
        a.reset().await;
        for k in &keys {
            ctx.assert_lock_freed(*k).await;
        }
        // Locks taken again, then the backend is dropped.
        assert!(
            a.try_lock(ns, &roles)
                .await
                .unwrap()
                .attempts
                .iter()
                .all(|x| x.granted)
        );
    }
    for k in &keys {
        ctx.assert_lock_freed(*k).await;
    }
    // An abandoned call closes the session: nothing stays locked.
    let b = ctx.backend("b").await;
    assert!(lock_one(&b, ns, &roles[0]).await);
    let _ = tokio::time::timeout(Duration::from_micros(1), b.try_lock(ns, &roles[1..])).await;
    let after = b.held(ns, &roles).await;
    if after.is_err() {
        // The call was abandoned mid-statement: the session was closed.
        for k in &keys {
            ctx.assert_lock_freed(*k).await;
        }
    }
    ctx.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_migrate() {
    let ctx = Ctx::new("setup").await;
    // Concurrent, repeated migrations of a fresh schema all succeed.
    let fresh = format!("{}_m", ctx.schema);
    let nodes: Vec<TokioPgBackend> = {
        let mut v = Vec::new();
        for i in 0..4 {
            v.push(
                TokioPgBackend::builder()
                    .schema(&fresh)
                    .application_name(&ctx.app(&format!("m{i}")))
                    .connect(&ctx.url)
                    .await
                    .unwrap(),
            );
        }
        v
    };
    let results =
        futures_util::future::join_all(nodes.iter().map(|n| async move { n.migrate().await }))
            .await;
    for r in results {
        r.unwrap();
    }
    nodes[0].migrate().await.unwrap();
    nodes[0].connect().await.unwrap();

    // A missing table is a clear, non-retryable error at connect().
    let missing = TokioPgBackend::builder()
        .schema("rtp_no_such_schema")
        .connect(&ctx.url)
        .await
        .unwrap();
    let e = missing.connect().await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("migrate"), "{e}");
    // A bad URL is a setup error that says what is expected.
    let e = TokioPgBackend::connect("postgres://[bad")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("postgres://"), "{e}");
    let _ = ctx
        .admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{fresh}\" CASCADE"))
        .await;
    ctx.drop_schema().await;
}

/// A `MakeTlsConnect` other than `NoTls` (it counts, then connects without
/// TLS): the generic constructor accepts it and uses it for every
/// connection — pool, session and listener.
#[derive(Clone)]
struct CountingTls(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> for CountingTls {
    type Stream = tokio_postgres::tls::NoTlsStream;
    type TlsConnect = tokio_postgres::NoTls;
    type Error = tokio_postgres::tls::NoTlsError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio_postgres::tls::MakeTlsConnect::<tokio_postgres::Socket>::make_tls_connect(
            &mut tokio_postgres::NoTls,
            domain,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_tls_connector_is_accepted() {
    let ctx = Ctx::new("tls").await;
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a = TokioPgBackend::builder()
        .tls(CountingTls(count.clone()))
        .schema(&ctx.schema)
        .application_name(&ctx.app("tls"))
        .connect(&ctx.url)
        .await
        .unwrap();
    let pool_only = count.load(std::sync::atomic::Ordering::SeqCst);
    assert!(pool_only >= 1);
    assert!(lock_one(&a, &ctx.ns, &role("r")).await);
    let _sub = a.subscribe(&ctx.ns).await.unwrap();
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        pool_only + 3,
        "session, its pooler probe and listener must use the given connector"
    );
    ctx.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_applies_and_dml_errors_keep_the_locks() {
    use regent_tokio_postgres::SessionSettings;
    let ctx = Ctx::new("stmt").await;
    let ns = &ctx.ns;
    let nb = node("node-b");
    for (i, how) in [
        SessionSettings::StartupOptions,
        SessionSettings::SetCommands,
    ]
    .into_iter()
    .enumerate()
    {
        let r = role(&format!("r{i}"));
        let b = TokioPgBackend::builder()
            .schema(&ctx.schema)
            .application_name(&ctx.app(&format!("b{i}")))
            .statement_timeout(Duration::from_millis(200))
            .session_settings(how)
            .connect(&ctx.url)
            .await
            .unwrap();
        assert!(lock_one(&b, ns, &r).await);
        let term = b.claim(ns, &r, &nb, LEASE).await.unwrap().term;
        let pid = b.session_pid();
        // Someone else holds the row FOR UPDATE: b's renewal waits, and its
        // statement timeout ends the wait.
        let (outside, conn) = tokio_postgres::connect(&ctx.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let sql = format!(
            "BEGIN; SELECT 1 FROM \"{}\".regent_leases WHERE namespace = '{}' AND role = '{}' FOR UPDATE",
            ctx.schema, ns, r
        );
        outside.batch_execute(&sql).await.unwrap();
        let held = [HeldLease {
            role: r.clone(),
            term,
        }];
        let e = b.renew(ns, &nb, &held, LEASE).await.unwrap_err();
        assert!(!e.is_session_lost() && e.is_retryable(), "{how:?}: {e}");
        assert!(e.to_string().contains("statement timeout"), "{how:?}: {e}");
        outside.batch_execute("ROLLBACK").await.unwrap();
        // The session, and with it b's lock, stayed.
        assert_eq!(b.session_pid(), pid);
        assert_eq!(
            b.held(ns, std::slice::from_ref(&r)).await.unwrap(),
            vec![r.clone()]
        );
        let renewed = b.renew(ns, &nb, &held, LEASE).await.unwrap();
        assert_eq!(renewed.renewed, vec![r.clone()]);
    }
    ctx.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_fenced_transaction_is_ended_by_the_server_and_the_claim_proceeds() {
    let ctx = Ctx::new("fidle").await;
    let a = TokioPgBackend::builder()
        .schema(&ctx.schema)
        .application_name(&ctx.app("a"))
        .max_pool_connections(2)
        .fenced_idle_timeout(Duration::from_millis(300))
        .connect(&ctx.url)
        .await
        .unwrap();
    let b = ctx.backend("b").await;
    let (r, ns) = (role("frozen"), &ctx.ns);
    let (na, nb) = (node("node-a"), node("node-b"));
    assert!(lock_one(&a, ns, &r).await);
    let t1 = a.claim(ns, &r, &na, LEASE).await.unwrap().term;
    // a's fenced transaction holds the row FOR KEY SHARE, then a freezes.
    let tx = a
        .fenced(&regent_core::Fence::new(
            ns.clone(),
            r.clone(),
            na.clone(),
            t1,
        ))
        .await
        .unwrap();
    a.unlock(ns, &r).await.unwrap();
    assert!(lock_one(&b, ns, &r).await);
    // b's claim is busy until the server ends the idle transaction (after
    // 300 ms), then goes through. Bounded: at most 100 tries, 100 ms apart.
    let mut busy = 0;
    let c = loop {
        match b.claim(ns, &r, &nb, LEASE).await {
            Ok(c) => break c,
            Err(BackendError::Busy(_)) if busy < 100 => busy += 1,
            Err(e) => panic!("claim failed after {busy} busy tries: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(c.term, Term(t1.0 + 1));
    // The frozen leader wakes up: its transaction is gone, nothing is written.
    let commit = match tx.execute("SELECT 1", &[]).await {
        Ok(_) => tx.commit().await,
        Err(e) => Err(e),
    };
    assert!(commit.is_err(), "the idle fenced transaction committed");
    // The pool recovers, and a's old token is now stale.
    assert!(matches!(
        a.fenced(&regent_core::Fence::new(
            ns.clone(),
            r.clone(),
            na.clone(),
            t1
        ))
        .await,
        Err(FencedError::Stale(_))
    ));
    ctx.drop_schema().await;
}

/// `Backend::release` in one statement on this driver too: with a term
/// (an `int8`) and without one (a typed `NULL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_in_one_statement_with_and_without_a_term() {
    use regent_core::Backend;
    let ctx = Ctx::new("release1").await;
    let (a, b) = (ctx.backend("a").await, ctx.backend("b").await);
    let (ns, na) = (&ctx.ns, node("node-a"));
    let (r, s) = (role("r"), role("s"));
    assert!(lock_one(&a, ns, &r).await);
    let term = a.claim(ns, &r, &na, LEASE).await.unwrap().term;
    assert!(a.release(ns, &r, &na, Some(term)).await.unwrap().notified);
    let (now, rows) = b.read(ns, std::slice::from_ref(&r)).await.unwrap();
    assert!(rows[0].lease_until <= now);
    assert!(lock_one(&b, ns, &r).await);
    assert!(lock_one(&a, ns, &s).await);
    // A lock held without a claim is freed, not announced.
    assert!(!a.release(ns, &s, &na, None).await.unwrap().notified);
    assert!(lock_one(&b, ns, &s).await);
    ctx.drop_schema().await;
}
