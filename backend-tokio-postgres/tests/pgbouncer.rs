//! Transaction pooling is refused at `connect()`: a PgBouncer in
//! `pool_mode=transaction` in front of the test database, with
//! `server_lifetime = 0` so every transaction gets a fresh server backend
//! (as a busy pool would hand out different ones). Skipped, with a note, where PgBouncer is not
//! installed or the tests do not run as root (it must run as `postgres`).

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use regent_core::{BackendError, Lock};
use regent_tokio_postgres::{SessionSettings, TokioPgBackend};
use tokio_postgres::config::Host;
use tokio_postgres::{Config, NoTls};

const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// A PgBouncer this test started (by pid), stopped on drop.
struct Bouncer {
    dir: PathBuf,
    port: u16,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgb.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn start(upstream: &Config, mode: &str) -> Option<Bouncer> {
    // Never a silent skip: the README's test command (scripts/test) installs
    // pgbouncer through scripts/test-services, and CI runs as root.
    assert!(
        Path::new(PGBOUNCER).exists(),
        "{PGBOUNCER} is missing: run scripts/test-services (or apt-get install pgbouncer), \
         or use the README's test command scripts/test"
    );
    assert!(
        is_root(),
        "the PgBouncer test must run as root (it runs pgbouncer as postgres)"
    );
    let host = match upstream.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = upstream.get_ports().first().copied().unwrap_or(5432);
    let user = upstream.get_user().unwrap_or("postgres").to_owned();
    let db = upstream.get_dbname().unwrap_or("test").to_owned();
    let listen = free_port();
    let dir = std::env::temp_dir().join(format!("rtp-pgb-{}-{listen}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ini = format!(
        "[databases]\n{db} = host={host} port={port} dbname={db} user={user}\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n\
         auth_type = trust\nauth_file = {d}/users.txt\npool_mode = {mode}\n\
         server_lifetime = 0\ndefault_pool_size = 4\n\
         ignore_startup_parameters = extra_float_digits,options\n\
         logfile = {d}/pgb.log\npidfile = {d}/pgb.pid\n",
        d = dir.display()
    );
    std::fs::write(dir.join("pgb.ini"), ini).unwrap();
    std::fs::write(dir.join("users.txt"), format!("\"{user}\" \"\"\n")).unwrap();
    let chown = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(chown.success());
    let bouncer = Bouncer { dir, port: listen };
    let ok = Command::new("runuser")
        .args(["-u", "postgres", "--", PGBOUNCER, "-d"])
        .arg(bouncer.dir.join("pgb.ini"))
        .status()
        .unwrap();
    assert!(ok.success(), "pgbouncer failed to start; see its log");
    Some(bouncer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooler_is_refused_at_connect() {
    let url = support::database_url();
    let upstream: Config = url.parse().unwrap();
    for mode in ["session", "transaction"] {
        let Some(bouncer) = start(&upstream, mode) else {
            return;
        };
        check(&url, &upstream, &bouncer, mode).await;
    }
}

async fn check(url: &str, upstream: &Config, bouncer: &Bouncer, mode: &str) {
    // (Config::host/port append to the lists, so build a fresh config.)
    let mut via = Config::new();
    via.host("127.0.0.1")
        .port(bouncer.port)
        .user(upstream.get_user().unwrap_or("postgres"))
        .dbname(upstream.get_dbname().unwrap_or("test"));
    // Wait until PgBouncer answers.
    let mut up = false;
    for _ in 0..50 {
        if via.connect(NoTls).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "pgbouncer did not accept connections");

    let mut session = via.clone();
    session.application_name("rtp-pgbouncer");
    let pool = TokioPgBackend::connect(url).await.unwrap().pool().clone();
    let backend = TokioPgBackend::builder()
        .session_settings(SessionSettings::SetCommands)
        .build(pool, session)
        .unwrap();
    let result = backend.connect().await;
    if mode == "session" {
        // Session pooling keeps advisory locks working: accepted (the
        // table may or may not exist in this database).
        match result {
            Ok(()) => {}
            Err(BackendError::Misconfigured(msg)) => {
                assert!(msg.contains("does not exist"), "{msg}")
            }
            Err(e) => panic!("session pooling must be accepted: {e}"),
        }
        return;
    }
    let e = result.unwrap_err();
    match &e {
        BackendError::Misconfigured(msg) => {
            assert!(msg.contains("pool_mode=transaction"), "{msg}");
            assert!(msg.contains("pool_mode=session"), "{msg}");
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
    assert!(!e.is_retryable());
}
