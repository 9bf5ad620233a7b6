//! A private, throwaway PostgreSQL cluster for tests that stop, restart or
//! kill the server. Uses the server binaries of Debian's postgresql-15
//! package; when the tests run as root, every server command runs as the
//! `postgres` user (initdb refuses root).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running (or stopped) private cluster; removed on drop.
pub struct Cluster {
    base: PathBuf,
    port: u16,
    as_postgres: bool,
    /// Extra `-c name=value` server options (see [`Cluster::start_with`]).
    extra: String,
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
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Cluster {
    /// initdb + start on a free loopback port. Panics with a clear message
    /// if the server binaries are missing.
    pub fn start() -> Cluster {
        Self::start_with("")
    }

    /// Like [`Cluster::start`], with extra server options appended to the
    /// command line, e.g. `-c shared_preload_libraries=pg_stat_statements`.
    pub fn start_with(extra: &str) -> Cluster {
        assert!(
            Path::new(BIN).join("initdb").exists(),
            "PostgreSQL 15 server binaries not found in {BIN}; install postgresql-15"
        );
        let base = std::env::temp_dir().join(format!(
            "regent-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        let as_postgres = is_root();
        let c = Cluster {
            base: base.clone(),
            port: free_port(),
            as_postgres,
            extra: extra.to_owned(),
        };
        std::fs::create_dir_all(base.join("sock")).expect("create cluster dir");
        if as_postgres {
            c.sh(
                "install",
                &[
                    "-d",
                    "-o",
                    "postgres",
                    "-g",
                    "postgres",
                    "-m",
                    "700",
                    base.to_str().unwrap(),
                    base.join("sock").to_str().unwrap(),
                ],
                false,
            );
        }
        c.pg(
            "initdb",
            &[
                "-D",
                c.data().to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "-N",
            ],
        );
        c.pg_ctl_start();
        c
    }

    fn data(&self) -> PathBuf {
        self.base.join("data")
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn sh(&self, prog: &str, args: &[&str], as_pg: bool) -> std::process::Output {
        if as_pg && self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--", prog])
                .args(args)
                .output()
        } else {
            Command::new(prog).args(args).output()
        }
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
    }

    fn pg(&self, tool: &str, args: &[&str]) {
        let prog = format!("{BIN}/{tool}");
        let out = self.sh(&prog, args, true);
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl_start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300 {}",
            self.port,
            self.base.join("sock").display(),
            self.extra
        );
        self.pg(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-l",
                self.base.join("server.log").to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "-o",
                &opts,
                "start",
            ],
        );
    }

    /// Fast shutdown: every session is terminated, rows stay.
    pub fn stop(&self) {
        self.pg(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "-t",
                "30",
                "stop",
            ],
        );
    }

    /// Starts a stopped cluster again on the same port.
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }

    /// Stop, then start.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Waits (bounded) until the server accepts TCP connections.
    pub async fn wait_ready(&self) {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("private cluster on port {} did not come up", self.port);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.sh(
            &format!("{BIN}/pg_ctl"),
            &[
                "-D",
                self.data().to_str().unwrap_or("/nonexistent"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            true,
        );
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
