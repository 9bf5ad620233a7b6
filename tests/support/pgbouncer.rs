//! A private PgBouncer on a free loopback port in front of a PostgreSQL
//! server (a private cluster or the local server), for the pooler tests.
//!
//! Uses Debian's `pgbouncer` package, which `scripts/test-services`
//! installs; panics (never skips) when it is missing.
//! PgBouncer refuses to run as root, so when the tests run as root it runs
//! as `postgres`, and every file it reads is owned by `postgres`. It
//! accepts any user with trust auth and ignores the `extra_float_digits`
//! and `options` startup parameters that sqlx sends. Stopped (SIGTERM,
//! then SIGKILL) and its directory removed on drop.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = "/usr/sbin/pgbouncer";

/// PgBouncer's `pool_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection per client connection, for its lifetime.
    Session,
    /// A server connection per transaction: breaks session state.
    Transaction,
}

impl PoolMode {
    fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// A running PgBouncer.
pub struct PgBouncer {
    dir: PathBuf,
    port: u16,
    pid: Option<i32>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PgBouncer {
    /// Starts PgBouncer in `mode` in front of the server at
    /// `127.0.0.1:server_port` (any database name is passed through).
    /// Panics with a clear message if PgBouncer is not installed.
    pub fn start(server_port: u16, mode: PoolMode) -> PgBouncer {
        assert!(
            Path::new(BIN).exists(),
            "PgBouncer not found at {BIN}: run the tests with `scripts/test`, or run \
             `scripts/test-services` once (it installs Debian's pgbouncer package)"
        );
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("regent-pgbouncer-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create pgbouncer dir");
        let ini = format!(
            "[databases]\n\
             * = host=127.0.0.1 port={server_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/users.txt\n\
             pool_mode = {mode}\n\
             max_client_conn = 200\n\
             default_pool_size = 50\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n\
             admin_users = postgres\n",
            dir = dir.display(),
            mode = mode.as_str(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).expect("write pgbouncer.ini");
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").expect("write users.txt");
        let root = is_root();
        if root {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown of {} to postgres failed", dir.display());
        }
        let ini = dir.join("pgbouncer.ini");
        let out = if root {
            Command::new("runuser")
                .args(["-u", "postgres", "--", BIN, "-d"])
                .arg(&ini)
                .output()
        } else {
            Command::new(BIN).arg("-d").arg(&ini).output()
        }
        .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
        let mut b = PgBouncer {
            dir,
            port,
            pid: None,
        };
        assert!(
            out.status.success(),
            "pgbouncer failed to start: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            b.log()
        );
        let start = Instant::now();
        while b.pid.is_none() && start.elapsed() < Duration::from_secs(10) {
            b.pid = std::fs::read_to_string(b.dir.join("pgbouncer.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(b.pid.is_some(), "pgbouncer wrote no pid file\n{}", b.log());
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "pgbouncer does not listen on port {port}\n{}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        b
    }

    /// The port PgBouncer listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE` through PgBouncer.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// PgBouncer's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    fn signal(&self, sig: &str) -> bool {
        let Some(pid) = self.pid else { return false };
        Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if self.signal("TERM") {
            let start = Instant::now();
            // `kill -0` succeeds while the process exists.
            while self.signal("0") && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.signal("0") {
                self.signal("KILL");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
