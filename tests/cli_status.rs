//! `regent status` / `regent watch` and `PgBackend::snapshot` against a
//! real PostgreSQL: a holder's session counts as alive only while it holds
//! the role's lock (a live pid that does not is "gone"), and `watch` is
//! pushed by release notifications rather than by its refresh interval.

#![cfg(all(feature = "sqlx", feature = "cli"))]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use regent::postgres::HolderSession;
use regent::sqlx::SqlxBackend;
use regent::{Config, Elector, Namespace, NodeId, Role};
use support::fault::wait_for;

fn regent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_regent"));
    c.env_remove("DATABASE_URL");
    c
}

fn config() -> Config {
    Config::builder()
        .lease_duration(Duration::from_secs(30))
        .renew_interval(Duration::from_secs(5))
        .retry_interval(Duration::from_millis(300))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_pid_without_the_lock_is_gone() {
    let url = support::pg::database_url().await;
    let ns = Namespace::new(support::pg::unique("status")).unwrap();
    let b = SqlxBackend::connect(&url).await.unwrap();
    b.migrate().await.unwrap();
    let elector = Elector::builder(b.clone())
        .namespace(ns.clone())
        .node_id(NodeId::new("status-leader").unwrap())
        .config(config())
        .build()
        .await
        .unwrap();
    let handle = elector.spawn(Role::new("led").unwrap()).await.unwrap();
    wait_for("a leader", Duration::from_secs(20), || handle.token()).await;
    let session = b.session_pid().unwrap();

    // A row naming a pid that is alive — this connection's — but whose
    // backend holds no lock: what a reused pid looks like.
    let other = sqlx::PgPool::connect(&url).await.unwrap();
    let mut conn = other.acquire().await.unwrap();
    let reused: i32 = sqlx::query_scalar(
        "INSERT INTO regent_leases (namespace, role, holder, term, backend_pid, acquired_at, \
         renewed_at, lease_until) VALUES ($1, 'zombie', 'dead-node', 7, pg_backend_pid(), now(), \
         now(), now() + interval '1 minute') RETURNING backend_pid",
    )
    .bind(ns.as_str())
    .fetch_one(&mut *conn)
    .await
    .unwrap();

    let snap = b.snapshot(Some(&ns)).await.unwrap();
    let sessions: Vec<(&str, HolderSession)> = snap
        .leases
        .iter()
        .map(|s| (s.lease.role.as_str(), s.holder_session))
        .collect();
    assert_eq!(
        sessions,
        [
            ("led", HolderSession::Alive { pid: session }),
            ("zombie", HolderSession::Gone { pid: reused }),
        ]
    );

    let out = regent()
        .args(["status", "--database-url", &url, "--namespace", ns.as_str()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("NAMESPACE") && lines[0].ends_with("HOLDER BACKEND"));
    assert!(lines[1].contains("led") && lines[1].ends_with(&format!("alive (pid {session})")));
    assert!(lines[2].contains("dead-node") && lines[2].ends_with(&format!("gone (pid {reused})")));

    drop(conn);
    elector.shutdown().await;
    support::node::cleanup(&url, ns.as_str(), "cli_status_unused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_is_pushed_by_the_release() {
    let url = support::pg::database_url().await;
    let ns = Namespace::new(support::pg::unique("watch")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let b = SqlxBackend::connect(&url).await.unwrap();
    b.migrate().await.unwrap();
    let first = Elector::builder(b)
        .namespace(ns.clone())
        .node_id(NodeId::new("first").unwrap())
        .config(config())
        .build()
        .await
        .unwrap();
    let h1 = first.spawn(role.clone()).await.unwrap();
    wait_for("first leads", Duration::from_secs(20), || h1.token()).await;

    // A refresh of an hour: every later line must come from a notification.
    let mut watch = regent()
        .args(["watch", "--database-url", &url, "--namespace", ns.as_str()])
        .args(["--refresh", "1h"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Drop the time stamp.
            let text = line
                .split_once(' ')
                .map_or(line.clone(), |(_, t)| t.to_owned());
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    let next = || lines.recv_timeout(Duration::from_secs(20)).unwrap();
    let key = format!("{ns}/scheduler");
    assert_eq!(next(), format!("{key}  leader first  term 1"));

    let second_backend = SqlxBackend::connect(&url).await.unwrap();
    let second = Elector::builder(second_backend)
        .namespace(ns.clone())
        .node_id(NodeId::new("second").unwrap())
        .config(config())
        .build()
        .await
        .unwrap();
    let h2 = second.spawn(role.clone()).await.unwrap();
    // Let `second` subscribe before the release.
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.shutdown().await;
    drop(h1);
    wait_for("second leads", Duration::from_secs(20), || h2.token()).await;

    // The release, then the takeover (maybe seen in one read).
    let mut seen = vec![next()];
    if seen[0].contains("no leader") {
        seen.push(next());
    }
    assert_eq!(
        seen.last().unwrap(),
        &format!("{key}  leader second  term 2"),
        "{seen:?}"
    );

    let _ = watch.kill();
    let _ = watch.wait();
    second.shutdown().await;
    support::node::cleanup(&url, ns.as_str(), "cli_status_unused").await;
}
