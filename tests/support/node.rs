//! `regent node` child processes for fault tests: start one, read what it
//! prints (leadership changes, fenced writes), SIGKILL / SIGSTOP / SIGCONT
//! it. The child is killed (SIGKILL) and reaped on drop.
//!
//! The binary is this package's `regent-fault-node` (test support: `regent
//! node` from the CLI's own sources plus `--fenced-counter`), so a test
//! using this module must be an integration test or bench of the facade
//! (`CARGO_BIN_EXE_regent-fault-node`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One line a child printed, with the moment the test read it.
#[derive(Debug, Clone)]
pub struct Line {
    /// When the reader thread received the line.
    pub at: Instant,
    /// The text, without the leading `HH:MM:SS.mmm` time stamp.
    pub text: String,
}

/// What the child last said about its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// Nothing yet.
    Unknown,
    /// `LEADER term N`.
    Leader(u64),
    /// `follower …`.
    Follower,
    /// `stopped`, or the process is gone.
    Gone,
}

#[derive(Default)]
struct Out {
    lines: Vec<Line>,
    reported: Option<Reported>,
    /// Set on SIGKILL: lines still buffered in the pipe must not revive it.
    dead: bool,
    stderr: String,
}

/// A running `regent-fault-node` (`regent node` + `--fenced-counter`).
pub struct Node {
    /// A label for messages (its `--node-id`).
    pub id: String,
    child: Child,
    out: Arc<Mutex<Out>>,
    killed: bool,
}

/// The path of the `regent-fault-node` binary Cargo built for this test
/// run.
pub fn node_bin() -> &'static str {
    env!("CARGO_BIN_EXE_regent-fault-node")
}

/// Timing and policy flags for a short-lease node: lease 2 s, renew
/// 500 ms, retry 300 ms, validate 250 ms.
pub fn fast_flags() -> Vec<String> {
    [
        "--lease",
        "2s",
        "--renew",
        "500ms",
        "--retry",
        "300ms",
        "--validate",
        "250ms",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

impl Node {
    /// Starts `regent-fault-node --database-url URL --role ROLE --node-id ID
    /// --namespace NS --application-name ID` plus `extra` flags.
    pub fn spawn(url: &str, ns: &str, role: &str, id: &str, extra: &[String]) -> Node {
        let mut child = Command::new(node_bin())
            .args(["--database-url", url, "--role", role, "--node-id", id])
            .args(["--namespace", ns, "--application-name", id])
            .args(extra)
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", node_bin()));
        let out = Arc::new(Mutex::new(Out::default()));
        let stdout = child.stdout.take().expect("piped stdout");
        let o = out.clone();
        let verbose = std::env::var_os("REGENT_TEST_VERBOSE").is_some();
        let label = id.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if verbose {
                    eprintln!("[{label}] {line}");
                }
                let text = line
                    .split_once(' ')
                    .map_or(line.as_str(), |(_, t)| t)
                    .to_owned();
                let mut o = o.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(r) = parse_report(&text) {
                    o.reported = Some(r);
                }
                o.lines.push(Line {
                    at: Instant::now(),
                    text,
                });
            }
            o.lock().unwrap_or_else(PoisonError::into_inner).reported = Some(Reported::Gone);
        });
        let mut stderr = child.stderr.take().expect("piped stderr");
        let o = out.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            o.lock().unwrap_or_else(PoisonError::into_inner).stderr = s;
        });
        Node {
            id: id.to_owned(),
            child,
            out,
            killed: false,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the child last reported about its role.
    pub fn reported(&self) -> Reported {
        let o = self.lock();
        if o.dead {
            Reported::Gone
        } else {
            o.reported.unwrap_or(Reported::Unknown)
        }
    }

    /// The term, if the child last reported `LEADER`.
    pub fn leading(&self) -> Option<u64> {
        match self.reported() {
            Reported::Leader(t) => Some(t),
            _ => None,
        }
    }

    /// How many lines the child printed so far.
    pub fn line_count(&self) -> usize {
        self.lock().lines.len()
    }

    /// Every line printed so far.
    pub fn lines(&self) -> Vec<Line> {
        self.lock().lines.clone()
    }

    /// The lines from index `from` on.
    pub fn lines_since(&self, from: usize) -> Vec<Line> {
        self.lock()
            .lines
            .get(from..)
            .map(<[Line]>::to_vec)
            .unwrap_or_default()
    }

    /// Everything, for assertion messages.
    pub fn dump(&self) -> String {
        let o = self.lock();
        let mut s = format!("--- {} (pid {}) ---\n", self.id, self.child.id());
        for l in &o.lines {
            s.push_str(&l.text);
            s.push('\n');
        }
        if !o.stderr.is_empty() {
            s.push_str("stderr: ");
            s.push_str(&o.stderr);
        }
        s
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if !self.killed {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.killed = true;
            self.lock().dead = true;
        }
    }

    /// SIGTERM (the CLI resigns gracefully) and wait, bounded, for exit.
    pub fn terminate(&mut self, within: Duration) -> bool {
        self.signal("TERM");
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.killed = true;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGSTOP: the process freezes; its TCP connections stay open.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {} failed", self.child.id());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits (bounded) until a printed line satisfies `f`; returns it.
    pub fn wait_line(&self, what: &str, within: Duration, f: impl Fn(&str) -> bool) -> Line {
        let start = Instant::now();
        loop {
            if let Some(l) = self.lock().lines.iter().find(|l| f(&l.text)) {
                return l.clone();
            }
            assert!(
                start.elapsed() < within,
                "timed out after {within:?} waiting for {}: {what}\n{}",
                self.id,
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Parses a leadership line's text (after the time stamp):
/// `ROLE  LEADER    term 3`, `ROLE  follower  leader x`, `ROLE  stopped`.
fn parse_report(text: &str) -> Option<Reported> {
    let mut words = text.split_whitespace().skip(1);
    match words.next()? {
        "LEADER" => {
            let term = words.nth(1)?.parse().ok()?;
            Some(Reported::Leader(term))
        }
        "follower" => Some(Reported::Follower),
        "stopped" => Some(Reported::Gone),
        _ => None,
    }
}

/// The term of a `fenced-write ok term N` line, if it is one.
pub fn fenced_ok(text: &str) -> Option<u64> {
    fenced_term(text, "ok")
}

/// The term of a `fenced-write KIND term N` line of the given kind.
pub fn fenced_term(text: &str, kind: &str) -> Option<u64> {
    let mut words = text.split_whitespace().skip(1);
    if words.next()? != "fenced-write" || words.next()? != kind || words.next()? != "term" {
        return None;
    }
    words.next()?.trim_end_matches(':').parse().ok()
}

/// Creates the lease table and an empty fenced counter table `counter`
/// on the database at `url`, so children need not race to create them.
pub async fn prepare(url: &str, counter: &str) {
    let b = regent::sqlx::SqlxBackend::connect(url)
        .await
        .expect("connect");
    b.migrate().await.expect("migrate");
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {counter} (role text PRIMARY KEY, \
         value int8 NOT NULL DEFAULT 0, last_token int8 NOT NULL DEFAULT 0)"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(create))
        .execute(b.pool())
        .await
        .expect("create counter");
    b.pool().close().await;
}

/// Drops the counter table and the namespace's lease rows.
pub async fn cleanup(url: &str, ns: &str, counter: &str) {
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    let drop = format!("DROP TABLE IF EXISTS {counter}");
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
        .execute(&pool)
        .await;
    let _ = sqlx::query("DELETE FROM regent_leases WHERE namespace = $1")
        .bind(ns)
        .execute(&pool)
        .await;
    pool.close().await;
}

/// `(value, last_token)` of the counter row of `role`.
pub async fn counter(url: &str, counter: &str, role: &str) -> (i64, i64) {
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    let q = format!("SELECT value, last_token FROM {counter} WHERE role = $1");
    let row: (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(q))
        .bind(role)
        .fetch_one(&pool)
        .await
        .expect("counter row");
    pool.close().await;
    row
}

/// Asserts that the fence never let a stale token through to the counter
/// on any child (`fenced-write stale-at-counter`).
pub fn assert_fence_held(nodes: &[&Node]) {
    for n in nodes {
        let bad: Vec<String> = n
            .lines()
            .into_iter()
            .filter(|l| fenced_term(&l.text, "stale-at-counter").is_some())
            .map(|l| l.text)
            .collect();
        assert!(
            bad.is_empty(),
            "STALE TOKEN passed the fence on {}: {bad:?}\n{}",
            n.id,
            n.dump()
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_parse() {
        use super::{Reported, fenced_ok, fenced_term, parse_report};
        assert_eq!(
            parse_report("scheduler   LEADER    term 3"),
            Some(Reported::Leader(3))
        );
        assert_eq!(
            parse_report("scheduler   follower  leader b"),
            Some(Reported::Follower)
        );
        assert_eq!(parse_report("scheduler   stopped"), Some(Reported::Gone));
        assert_eq!(parse_report("node a campaigning"), None);
        assert_eq!(fenced_ok("s fenced-write ok term 7"), Some(7));
        assert_eq!(fenced_ok("s fenced-write refused term 7"), None);
        assert_eq!(
            fenced_term("s fenced-write error term 7: boom", "error"),
            Some(7)
        );
    }
}
