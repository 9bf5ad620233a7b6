//! Scenarios about the database: zombies, fencing, connections, names,
//! migrations, outages.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use regent::postgres::AdvisoryKey;
use regent::{Config, Elector, Lease, NameError, Namespace, NodeId, Role, TakeoverPolicy};
use sqlx::{Connection, PgConnection};
use tokio::time::Instant;

use super::crash::Crashable;
use super::{
    Factory, FenceError, admin, campaign, eventually, fast_builder, fast_config, leaders, unique,
};

const LONG: Duration = Duration::from_secs(20);

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
pub async fn zombie_preempted_when_privileged<F: Factory>(f: &F) {
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
    let token = tokio::time::timeout(LONG, h.wait_until_leader())
        .await
        .expect("candidate never preempted the zombie")
        .unwrap();
    assert!(token.0 > 5, "new term {token} must exceed the zombie's 5");
    assert!(
        sqlx::query("SELECT 1").execute(&mut zombie).await.is_err(),
        "the zombie's session should have been terminated"
    );
    e.shutdown().await;
}

/// 5b. A holder whose lease is still running is never preempted.
pub async fn zombie_never_preempted_while_lease_valid<F: Factory>(f: &F) {
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
pub async fn zombie_refused_without_privilege<F: Factory>(f: &F) {
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

/// 6a. After a takeover, the old leader's fenced write fails.
pub async fn fenced_stale_token_fails<F: Factory>(f: &F) {
    let ns = Namespace::new(unique("fence")).unwrap();
    let role = Role::new("ledger").unwrap();
    let app = unique("app");
    let a = Crashable::new(f.node(&app, None).await);
    f.migrate(a.inner()).await.unwrap();
    let cfg = fast_config(TakeoverPolicy::Immediate);
    let (_ea, ha) = campaign(&a, &ns, "node-a", &role, cfg.clone()).await;
    let t1 = ha.wait_until_leader().await.unwrap();
    let me = NodeId::new("node-a").unwrap();
    f.fenced_write(a.inner(), &ns, &role, &me, t1, Duration::ZERO)
        .await
        .expect("the leader's fenced write succeeds");
    let b = f.node(&app, None).await;
    let (eb, hb) = campaign(&b, &ns, "node-b", &role, cfg).await;
    a.crash().await;
    let t2 = hb.wait_until_leader().await.unwrap();
    assert!(t2 > t1);
    match f
        .fenced_write(&b, &ns, &role, &me, t1, Duration::ZERO)
        .await
    {
        Err(FenceError::Stale) => {}
        other => panic!("old token {t1} after takeover (term {t2}) gave {other:?}"),
    }
    let b_id = NodeId::new("node-b").unwrap();
    f.fenced_write(&b, &ns, &role, &b_id, t2, Duration::ZERO)
        .await
        .expect("the new leader's fenced write succeeds");
    eb.shutdown().await;
}

/// 6b. A takeover waits for a fenced transaction in flight.
pub async fn takeover_waits_for_fenced_transaction<F: Factory>(f: &F) {
    let ns = Namespace::new(unique("fwait")).unwrap();
    let role = Role::new("ledger").unwrap();
    let app = unique("app");
    let a = Crashable::new(f.node(&app, None).await);
    f.migrate(a.inner()).await.unwrap();
    let cfg = fast_config(TakeoverPolicy::Immediate);
    let (_ea, ha) = campaign(&a, &ns, "node-a", &role, cfg.clone()).await;
    let t1 = ha.wait_until_leader().await.unwrap();
    let b = f.node(&app, None).await;
    let (eb, hb) = campaign(&b, &ns, "node-b", &role, cfg).await;
    let me = NodeId::new("node-a").unwrap();
    let inner = a.inner().clone();
    let fenced = async {
        let r = f
            .fenced_write(&inner, &ns, &role, &me, t1, Duration::from_millis(1500))
            .await;
        (r, Instant::now())
    };
    let crash_then_lead = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.crash().await;
        hb.wait_until_leader().await.unwrap();
        Instant::now()
    };
    let ((written, committed_at), led_at) = tokio::join!(fenced, crash_then_lead);
    written.expect("the in-flight fenced transaction commits");
    assert!(
        led_at + Duration::from_millis(100) >= committed_at,
        "the new leader led {:?} before the fenced transaction committed",
        committed_at - led_at
    );
    eb.shutdown().await;
}

/// 7. 200 roles on one node share one session connection.
pub async fn many_roles_one_session<F: Factory>(f: &F) {
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
    eventually("all 200 roles lead", Duration::from_secs(60), || {
        leaders(&handles).len() == 200
    })
    .await;
    let (sessions,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
            .bind(&app)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(sessions, 1, "200 roles must share one session connection");
    e.shutdown().await;
}

/// 8a. Odd but valid names round-trip; invalid ones are typed errors.
pub async fn names_round_trip<F: Factory>(f: &F) {
    let ns = Namespace::new(format!("ns '\"%;ü {}", unique("n"))).unwrap();
    let names = [
        "quo'te \"double\"".to_owned(),
        "ünïcødé ✓ 🦀".to_owned(),
        "100%_off".to_owned(),
        "semi;colon; DROP TABLE regent_leases; --".to_owned(),
        "x".repeat(63),
        "€".repeat(21),
    ];
    let node = f.node(&unique("app"), None).await;
    f.migrate(&node).await.unwrap();
    let e = Elector::builder(node.clone())
        .namespace(ns.clone())
        .config(fast_config(TakeoverPolicy::WaitForLease))
        .build()
        .await
        .unwrap();
    let mut handles = Vec::new();
    for n in &names {
        handles.push(e.spawn(Role::new(n.as_str()).unwrap()).await.unwrap());
    }
    eventually("every odd name leads", LONG, || {
        leaders(&handles).len() == names.len()
    })
    .await;
    let mut listed: Vec<String> = node
        .list(Some(&ns))
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            assert_eq!(r.namespace, ns);
            r.role.as_str().to_owned()
        })
        .collect();
    listed.sort();
    let mut want = names.to_vec();
    want.sort();
    assert_eq!(listed, want);
    assert!(matches!(Role::new(""), Err(NameError::Empty { .. })));
    assert!(matches!(
        Role::new("x".repeat(64)),
        Err(NameError::TooLong { .. })
    ));
    assert!(matches!(
        Role::new("€".repeat(22)),
        Err(NameError::TooLong { .. })
    ));
    assert!(matches!(
        Namespace::new("a\0b"),
        Err(NameError::ControlCharacter { .. })
    ));
    e.shutdown().await;
}

/// 8b. The same role in two namespaces has two independent leaders.
pub async fn namespaces_do_not_interfere<F: Factory>(f: &F) {
    let role = Role::new("scheduler").unwrap();
    let ns1 = Namespace::new(unique("ns1")).unwrap();
    let ns2 = Namespace::new(unique("ns2")).unwrap();
    let app = unique("app");
    let a = f.node(&app, None).await;
    f.migrate(&a).await.unwrap();
    let b = f.node(&app, None).await;
    let cfg = fast_config(TakeoverPolicy::WaitForLease);
    let (ea, ha) = campaign(&a, &ns1, "node-a", &role, cfg.clone()).await;
    let (eb, hb) = campaign(&b, &ns2, "node-b", &role, cfg).await;
    eventually("both namespaces have a leader", LONG, || {
        ha.is_leader() && hb.is_leader()
    })
    .await;
    ha.resign().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        hb.is_leader(),
        "a release in one namespace disturbed the other"
    );
    ea.shutdown().await;
    eb.shutdown().await;
}

/// 9. `migrate()` from 8 tasks at once succeeds, and again is a no-op.
pub async fn concurrent_migrate<F: Factory>(f: &F) {
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

/// 10a. An unreachable database is a clear error at start, not a hang.
pub async fn unreachable_database_fails_fast<F: Factory>(f: &F) {
    let url = "postgres://postgres@127.0.0.1:1/test";
    let t = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        match f.node_for_url(url).await {
            Err(e) => Err(e),
            Ok(node) => Elector::builder(node)
                .build()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    })
    .await
    .expect("starting against an unreachable database hung");
    let err = result.expect_err("starting against an unreachable database must fail");
    assert!(!err.is_empty());
    assert!(t.elapsed() < Duration::from_secs(30));
}

/// 10b. Every connection of the nodes is dropped mid-leadership: the leader
///      steps down, and a leader is elected again once connections work.
pub async fn all_connections_dropped_then_recovery<F: Factory>(f: &F) {
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
    eventually("a leader", LONG, || leaders(&handles).len() == 1).await;
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
    eventually("a leader again", LONG, || leaders(&handles).len() == 1).await;
    ea.shutdown().await;
    eb.shutdown().await;
}
