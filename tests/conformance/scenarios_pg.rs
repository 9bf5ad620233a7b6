//! PostgreSQL-only scenarios: zombies planted with `pg_advisory_lock`,
//! privileges, one session connection per node, schemas, every connection
//! terminated. Engine-neutral scenarios live in `regent-conformance`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use regent::postgres::AdvisoryKey;
use regent::{Config, Elector, Namespace, Role, TakeoverPolicy};
use regent_conformance::support::{
    campaign, eventually, fast_builder, fast_config, lead, leaders, unique, within,
};
use sqlx::{Connection, PgConnection};

use super::{PgFactory, admin};

/// A superuser session that holds `role`'s advisory lock and a lease row
/// that ended `ago` ago (negative: still running), like a client that died
/// behind a pooler while its backend lives on.
async fn plant_zombie(
    url: &str,
    ns: &Namespace,
    role: &Role,
    lease_from_now_secs: i64,
) -> PgConnection {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let key = AdvisoryKey::derive(ns, role);
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(key.ns)
        .bind(key.role)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO regent_leases
             (namespace, role, holder, term, backend_pid, acquired_at, renewed_at, lease_until)
         VALUES ($1, $2, 'zombie', 5, pg_backend_pid(), now() - interval '1 hour',
                 now() - interval '1 hour', now() + make_interval(secs => $3))",
    )
    .bind(ns.as_str())
    .bind(role.as_str())
    .bind(lease_from_now_secs as f64)
    .execute(&mut conn)
    .await
    .unwrap();
    conn
}

fn preempting(grace: Duration) -> Config {
    fast_builder(TakeoverPolicy::WaitForLease)
        .preempt_zombies(true)
        .zombie_grace(grace)
        .build()
        .unwrap()
}

/// 5a. A zombie whose lease ended more than the grace ago is terminated,
///     and the candidate leads.
pub async fn zombie_preempted_when_privileged<F: PgFactory>(f: &F) {
    let ns = Namespace::new(unique("zombie")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let node = f.node(&unique("app"), None).await;
    f.migrate(&node).await.unwrap();
    let mut zombie = plant_zombie(f.url(), &ns, &role, -10).await;
    let (e, h) = campaign(
        &node,
        &ns,
        "node-a",
        &role,
        preempting(Duration::from_secs(1)),
    )
    .await;
    let token = within("the candidate preempts the zombie", h.wait_until_leader())
        .await
        .unwrap();
    assert!(token.0 > 5, "new term {token} must exceed the zombie's 5");
    assert!(
        sqlx::query("SELECT 1").execute(&mut zombie).await.is_err(),
        "the zombie's session should have been terminated"
    );
    e.shutdown().await;
}

/// 5b. A holder whose lease is still running is never preempted.
pub async fn zombie_never_preempted_while_lease_valid<F: PgFactory>(f: &F) {
    let ns = Namespace::new(unique("valid")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let node = f.node(&unique("app"), None).await;
    f.migrate(&node).await.unwrap();
    let mut holder = plant_zombie(f.url(), &ns, &role, 3600).await;
    let (e, h) = campaign(
        &node,
        &ns,
        "node-a",
        &role,
        preempting(Duration::from_millis(100)),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!h.is_leader());
    sqlx::query("SELECT 1")
        .execute(&mut holder)
        .await
        .expect("a holder with a valid lease was terminated");
    e.shutdown().await;
}

/// 5c. Without the privilege to terminate the holder, the node says so and
///     keeps waiting; nothing breaks.
pub async fn zombie_refused_without_privilege<F: PgFactory>(f: &F) {
    let ns = Namespace::new(unique("noperm")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let db = admin(f.url()).await;
    let first = f.node(&unique("app"), None).await;
    f.migrate(&first).await.unwrap();
    let user = unique("regent_np");
    for sql in [
        format!("CREATE ROLE {user} LOGIN"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON regent_leases TO {user}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&db)
            .await
            .unwrap();
    }
    let mut zombie = plant_zombie(f.url(), &ns, &role, -10).await;
    let node = f.node(&unique("app"), Some(&user)).await;
    let (e, h) = campaign(
        &node,
        &ns,
        "node-np",
        &role,
        preempting(Duration::from_millis(500)),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!h.is_leader());
    assert!(!e.is_stopped(), "the elector must keep waiting, not stop");
    sqlx::query("SELECT 1")
        .execute(&mut zombie)
        .await
        .expect("an unprivileged node must not be able to terminate the zombie");
    e.shutdown().await;
}

/// 7. 200 roles on one node share one session connection.
pub async fn many_roles_one_session<F: PgFactory>(f: &F) {
    let ns = Namespace::new(unique("many")).unwrap();
    let app = unique("app");
    let db = admin(f.url()).await;
    let node = f.node(&app, None).await;
    f.migrate(&node).await.unwrap();
    let e = Elector::builder(node.clone())
        .namespace(ns.clone())
        .config(fast_config(TakeoverPolicy::WaitForLease))
        .build()
        .await
        .unwrap();
    let mut handles = Vec::new();
    for i in 0..200 {
        handles.push(
            e.spawn(Role::new(format!("shard-{i}")).unwrap())
                .await
                .unwrap(),
        );
    }
    eventually("all 200 roles lead", || leaders(&handles).len() == 200).await;
    let (sessions,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
            .bind(&app)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(sessions, 1, "200 roles must share one session connection");
    e.shutdown().await;
}

/// 9. `migrate()` from 8 tasks at once succeeds, and again is a no-op.
pub async fn concurrent_migrate<F: PgFactory>(f: &F) {
    let schema = unique("mig");
    let db = admin(f.url()).await;
    let mut nodes = Vec::new();
    for _ in 0..8 {
        nodes.push(f.node_in_schema(&unique("app"), &schema).await);
    }
    let results = futures::future::join_all(nodes.iter().map(|n| f.migrate(n))).await;
    for r in results {
        r.expect("concurrent migrate must succeed");
    }
    let (exists,): (bool,) = sqlx::query_as("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("{schema}.regent_leases"))
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(exists);
    f.migrate(&nodes[0])
        .await
        .expect("a second migrate is a no-op");
}

/// 10b. Every connection of the nodes is dropped mid-leadership: the leader
///      steps down, and a leader is elected again once connections work.
pub async fn all_connections_dropped_then_recovery<F: PgFactory>(f: &F) {
    let ns = Namespace::new(unique("drop")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let app = unique("app");
    let db = admin(f.url()).await;
    let a = f.node(&app, None).await;
    f.migrate(&a).await.unwrap();
    let b = f.node(&app, None).await;
    let cfg = fast_config(TakeoverPolicy::WaitForLease);
    let (ea, ha) = campaign(&a, &ns, "node-a", &role, cfg.clone()).await;
    let (eb, hb) = campaign(&b, &ns, "node-b", &role, cfg).await;
    let handles = [ha.clone(), hb.clone()];
    eventually("a leader", || leaders(&handles).len() == 1).await;
    let leader = handles[leaders(&handles)[0]].clone();
    let lost = Arc::new(AtomicBool::new(false));
    let l2 = lost.clone();
    let watcher = tokio::spawn(async move {
        leader
            .run_while_leader(|cancel, _| async move {
                cancel.cancelled().await;
                l2.store(true, Ordering::SeqCst);
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name LIKE $1 || '%' AND pid <> pg_backend_pid()",
    )
    .bind(&app)
    .execute(&db)
    .await
    .unwrap();
    watcher.await.unwrap().unwrap();
    assert!(lost.load(Ordering::SeqCst));
    eventually("a leader again", || leaders(&handles).len() == 1).await;
    ea.shutdown().await;
    eb.shutdown().await;
}

/// 11. A lease table created by an older regent (no `incarnation` column)
///     is refused at start with an error that says to migrate; `migrate()`
///     adds the column, keeps the rows, and is idempotent.
pub async fn migrate_upgrades_an_old_table<F: PgFactory>(f: &F) {
    use regent::Lock;
    let schema = unique("old");
    let db = admin(f.url()).await;
    for stmt in [
        format!("CREATE SCHEMA \"{schema}\""),
        format!(
            "CREATE TABLE \"{schema}\".regent_leases (namespace text NOT NULL, \
             role text NOT NULL, holder text NOT NULL, term bigint NOT NULL CHECK (term > 0), \
             backend_pid integer, acquired_at timestamptz NOT NULL, \
             renewed_at timestamptz NOT NULL, lease_until timestamptz NOT NULL, \
             PRIMARY KEY (namespace, role))"
        ),
        format!(
            "INSERT INTO \"{schema}\".regent_leases VALUES \
             ('default', 'r', 'old-node', 7, NULL, now(), now(), now())"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&db)
            .await
            .unwrap();
    }
    let node = f.node_in_schema(&unique("app"), &schema).await;
    let err = node
        .connect()
        .await
        .expect_err("an old table must be refused");
    let msg = err.to_string();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(
        msg.contains("incarnation") && msg.contains("migrate"),
        "{msg}"
    );
    f.migrate(&node).await.expect("migrate upgrades the table");
    f.migrate(&node).await.expect("and again is a no-op");
    let (col, holder, term, inc): (bool, String, i64, Option<String>) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = $1 \
         AND table_name = 'regent_leases' AND column_name = 'incarnation'), \
         holder, term, incarnation FROM \"{schema}\".regent_leases"
        )))
        .bind(&schema)
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(col, "the incarnation column was added");
    assert_eq!((holder.as_str(), term, inc), ("old-node", 7, None));
    node.connect()
        .await
        .expect("the upgraded table is accepted");
    node.reset().await;
}

/// 12. Two processes that share a node id by mistake are not the same
///     holder: the second can neither re-claim, renew, expire nor validate
///     the first one's lease (each backend has its own incarnation, written
///     into the rows it claims).
pub async fn same_node_id_is_not_the_same_holder<F: PgFactory>(f: &F) {
    use regent::{Backend, BackendError, HeldLease, Lease, Lock, NodeId};
    let ns = Namespace::new(unique("inc")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let roles = std::slice::from_ref(&role);
    let holder = NodeId::new("node-x").unwrap();
    let lease = Duration::from_secs(30);
    let a = f.node(&unique("app"), None).await;
    f.migrate(&a).await.unwrap();
    let b = f.node(&unique("app"), None).await;
    a.connect().await.unwrap();
    b.connect().await.unwrap();
    let granted = a.try_lock(&ns, roles).await.unwrap();
    assert!(granted.attempts[0].granted);
    let term = a.claim(&ns, &role, &holder, lease).await.unwrap().term;
    let (_, before) = a.read(&ns, roles).await.unwrap();
    // The second process, same node id.
    let tried = b.try_lock(&ns, roles).await.unwrap();
    assert!(!tried.attempts[0].granted, "b was granted a's role");
    if f.lease_mode() {
        let err = b.claim(&ns, &role, &holder, lease).await.unwrap_err();
        assert!(matches!(err, BackendError::Busy(_)), "{err:?}");
    }
    let held = [HeldLease {
        role: role.clone(),
        term,
    }];
    let renewed = b.renew(&ns, &holder, &held, lease).await.unwrap();
    assert!(renewed.renewed.is_empty(), "b renewed a's lease");
    b.expire(&ns, &role, &holder, term).await.unwrap();
    assert!(b.held(&ns, roles).await.unwrap().is_empty());
    let (_, after) = a.read(&ns, roles).await.unwrap();
    assert_eq!(after, before, "b changed a's lease");
    // a itself still owns it.
    assert_eq!(a.held(&ns, roles).await.unwrap(), roles);
    let renewed = a.renew(&ns, &holder, &held, lease).await.unwrap();
    assert_eq!(renewed.renewed, roles);
    a.release(&ns, &role, &holder, Some(term)).await.unwrap();
    a.reset().await;
    b.reset().await;
}

/// 13. Lease mode without notifications: a resigning leader ends its
///     lease, and the standby takes over at its next retry round. The lease
///     is an hour, so only the ended lease (not its running out) can let
///     the standby lead within the hang guard; terms increase.
pub async fn resign_hands_over_by_polling<F: PgFactory>(f: &F) {
    let ns = Namespace::new(unique("poll")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let hour = Duration::from_secs(3600);
    let cfg = Config::builder()
        .lease_duration(hour)
        .renew_interval(Duration::from_millis(500))
        .attempt_timeout(Duration::from_millis(900))
        .validate_interval(Duration::from_millis(500))
        .retry_interval(Duration::from_millis(200))
        .retry_jitter(Duration::from_millis(50))
        .drain_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let a = f.node(&unique("app"), None).await;
    f.migrate(&a).await.unwrap();
    let b = f.node(&unique("app"), None).await;
    let (ea, ha) = campaign(&a, &ns, "node-a", &role, cfg.clone()).await;
    let t1 = lead("a leads", &ha).await;
    let (eb, hb) = campaign(&b, &ns, "node-b", &role, cfg).await;
    eventually("b observes a", || {
        hb.leadership()
            == regent::Leadership::Follower {
                leader: Some("node-a".into()),
            }
    })
    .await;
    ha.resign().await;
    let t2 = lead("b takes over after the resign", &hb).await;
    assert!(t2 > t1, "term did not increase: {t1} then {t2}");
    assert!(!ha.is_leader());
    ea.shutdown().await;
    eb.shutdown().await;
}

/// 14. Lease mode: a claim its caller gave up on, released without a term
///     while (or after) it commits, does not keep its lease: nobody leads
///     with it, so standbys must not wait an hour for it.
pub async fn abandoned_claim_is_ended<F: PgFactory>(f: &F) {
    use regent::{Backend, Lease, Lock, NodeId};
    let ns = Namespace::new(unique("abandon")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let roles = std::slice::from_ref(&role);
    let holder = NodeId::new("node-a").unwrap();
    let a = f.node(&unique("app"), None).await;
    f.migrate(&a).await.unwrap();
    a.connect().await.unwrap();
    assert!(a.try_lock(&ns, roles).await.unwrap().attempts[0].granted);
    // Start the claim and give up on it at once (its first poll sends it).
    let claim = a.claim(&ns, &role, &holder, Duration::from_secs(3600));
    let _ = tokio::time::timeout(Duration::ZERO, claim).await;
    a.release(&ns, &role, &holder, None).await.unwrap();
    let ended = || {
        let (a, ns, role) = (a.clone(), ns.clone(), role.clone());
        async move {
            let (now, rows) = a.read(&ns, &[role]).await.unwrap();
            rows.first().is_some_and(|r| r.lease_until <= now)
        }
    };
    regent_conformance::support::eventually_async("the abandoned claim's lease is ended", ended)
        .await;
    assert!(a.held(&ns, roles).await.unwrap().is_empty());
}
