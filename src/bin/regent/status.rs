//! `regent status` (one table) and `regent watch` (a line per change),
//! both from [`PgBackend::snapshot`](regent::postgres::PgBackend::snapshot):
//! no SQL of their own.
//!
//! `watch` is pushed: it subscribes to the release notifications of each
//! namespace that has a lease in force (at most [`MAX_LISTENED`]; each
//! subscription is a connection) and re-reads the snapshot on every event
//! (and on `MaybeMissed`), once more shortly after (a standby claims right
//! after a release), and otherwise every `--refresh`, so crashes, claims
//! in quiet namespaces and leases that run out still show.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clap::Args;
use comfy_table::{Table, presets};
use regent::postgres::{HolderSession, LeaseStatus, Snapshot};
use regent::sqlx::SqlxBackend;
use regent::{DbTimestamp, LeaseRecord, Namespace, Notify};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::db::{self, DbArgs, duration, now_utc};
use crate::error::CliError;
use crate::out::{self, say};

/// How long after a notification `watch` reads once more, to see the
/// standby's claim that follows a release.
const SETTLE: Duration = Duration::from_millis(250);
/// How long a namespace's listener waits before subscribing again after
/// its subscription failed.
const RESUBSCRIBE: Duration = Duration::from_secs(1);
/// The most namespaces `watch` listens to at once: each listener holds a
/// connection, and a database may hold many namespaces. The others show
/// at the `--refresh` interval.
const MAX_LISTENED: usize = 16;

/// Arguments of `regent status` and `regent watch`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Only this namespace (default: all).
    #[arg(long)]
    namespace: Option<String>,
    /// How often `watch` re-reads without a notification (to show leases
    /// that run out).
    #[arg(long, alias = "interval", default_value = "1s", value_parser = duration)]
    refresh: Duration,
}

/// `LEASE LEFT`: the time left, or how long ago the lease ended.
fn remaining(lease: &LeaseRecord, now: DbTimestamp) -> String {
    if lease.lease_until > now {
        let left = lease.lease_until.saturating_since(now);
        format!("{:.1}s", left.as_secs_f64())
    } else {
        let ago = now.saturating_since(lease.lease_until);
        format!("expired {:.1}s ago", ago.as_secs_f64())
    }
}

/// `HOLDER BACKEND`: whether the holder's session still holds the lock.
fn session(s: HolderSession) -> String {
    match s {
        HolderSession::Alive { pid } => format!("alive (pid {pid})"),
        HolderSession::Gone { pid } => format!("gone (pid {pid})"),
        HolderSession::Unknown => "unknown".to_owned(),
    }
}

/// The `status` table, one line per lease, columns aligned by two spaces.
fn table(snap: &Snapshot) -> String {
    if snap.leases.is_empty() {
        return "no leases yet".to_owned();
    }
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header([
        "NAMESPACE",
        "ROLE",
        "HOLDER",
        "TERM",
        "LEASE LEFT",
        "HOLDER BACKEND",
    ]);
    for s in &snap.leases {
        let l = &s.lease;
        t.add_row([
            l.namespace.to_string(),
            l.role.to_string(),
            l.holder.clone(),
            l.term.to_string(),
            remaining(l, snap.db_now),
            session(s.holder_session),
        ]);
    }
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    t.trim_fmt()
}

/// `regent status`
pub(crate) async fn status(args: StatusArgs) -> Result<u8, CliError> {
    let namespace = args.namespace.as_deref().map(Namespace::new).transpose()?;
    let b = db::backend(&args.db, "regent-status").await?;
    let snap = b.snapshot(namespace.as_ref()).await?;
    out::text(&format!("{}\n", table(&snap)));
    Ok(0)
}

/// What `watch` last said about a role.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A lease in force, its holder's session alive (or untracked).
    Leader { holder: String, term: u64 },
    /// A lease still in force whose holder's session is gone: nobody acts
    /// for the role until the lease runs out (or the zombie is preempted).
    SessionGone { holder: String, term: u64 },
    /// The lease has ended.
    NoLeader,
}

impl Seen {
    fn of(s: &LeaseStatus, now: DbTimestamp) -> Self {
        let (holder, term) = (s.lease.holder.clone(), s.lease.term.0);
        if s.lease.expired_at(now) {
            Seen::NoLeader
        } else if matches!(s.holder_session, HolderSession::Gone { .. }) {
            Seen::SessionGone { holder, term }
        } else {
            Seen::Leader { holder, term }
        }
    }

    fn describe(&self) -> String {
        match self {
            Seen::Leader { holder, term } => format!("leader {holder}  term {term}"),
            Seen::SessionGone { holder, term } => {
                format!("leader {holder}  term {term}  (its session is gone; the lease runs out)")
            }
            Seen::NoLeader => "no leader (lease expired)".to_owned(),
        }
    }
}

/// The lines `watch` prints for `snap`: one per role whose state changed
/// since `seen`, which is updated.
fn changes(seen: &mut BTreeMap<(String, String), Seen>, snap: &Snapshot) -> Vec<String> {
    let mut lines = Vec::new();
    for s in &snap.leases {
        let key = (s.lease.namespace.to_string(), s.lease.role.to_string());
        let now = Seen::of(s, snap.db_now);
        if seen.get(&key) != Some(&now) {
            lines.push(format!("{}/{}  {}", key.0, key.1, now.describe()));
            seen.insert(key, now);
        }
    }
    lines
}

/// Forwards every event of `namespace`'s release channel to `wake` (and
/// one after each failed subscription, as events may have been missed)
/// until `watch` ends.
fn listen(b: SqlxBackend, namespace: Namespace, wake: mpsc::UnboundedSender<()>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut warned = false;
        loop {
            match b.subscribe(&namespace).await {
                Ok(mut sub) => {
                    // `Released` and `MaybeMissed` alike: read everything again.
                    while sub.recv().await.is_ok() {
                        if wake.send(()).is_err() {
                            return;
                        }
                    }
                }
                Err(e) if !warned => {
                    warned = true;
                    eprintln!(
                        "warning: cannot subscribe to namespace {namespace} ({e}); \
                         showing its changes at the --refresh interval"
                    );
                }
                Err(_) => {}
            }
            if wake.send(()).is_err() {
                return;
            }
            tokio::time::sleep(RESUBSCRIBE).await;
        }
    })
}

/// The namespaces of `snap` worth listening to: those with a lease in
/// force (only a holder can release), at most `max`, in name order.
fn to_listen(snap: &Snapshot, max: usize) -> BTreeSet<Namespace> {
    snap.leases
        .iter()
        .filter(|s| s.led_at(snap.db_now))
        .map(|s| s.lease.namespace.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .take(max)
        .collect()
}

/// The release listeners of `watch`, one task per namespace.
struct Listeners {
    backend: SqlxBackend,
    wake: mpsc::UnboundedSender<()>,
    tasks: BTreeMap<Namespace, JoinHandle<()>>,
}

impl Listeners {
    /// Listens to exactly `wanted`: starts the new, stops the others.
    fn listen_to(&mut self, wanted: &BTreeSet<Namespace>) {
        self.tasks.retain(|ns, task| {
            let keep = wanted.contains(ns);
            if !keep {
                task.abort();
            }
            keep
        });
        for ns in wanted {
            if !self.tasks.contains_key(ns) {
                let task = listen(self.backend.clone(), ns.clone(), self.wake.clone());
                self.tasks.insert(ns.clone(), task);
            }
        }
    }
}

/// `regent watch`
pub(crate) async fn watch(args: StatusArgs) -> Result<u8, CliError> {
    let namespace = args.namespace.as_deref().map(Namespace::new).transpose()?;
    let b = db::backend(&args.db, "regent-watch").await?;
    let (wake_tx, mut wake) = mpsc::unbounded_channel();
    let mut listeners = Listeners {
        backend: b.clone(),
        wake: wake_tx,
        tasks: BTreeMap::new(),
    };
    if let Some(ns) = &namespace {
        // One namespace: listen to it from the start, led or not.
        listeners.listen_to(&BTreeSet::from([ns.clone()]));
    }
    let mut seen = BTreeMap::new();
    let stop = db::shutdown_signal();
    tokio::pin!(stop);
    let mut next_read = Instant::now();
    let mut follow_up: Option<Instant> = None;
    loop {
        let deadline = follow_up.map_or(next_read, |f| f.min(next_read));
        tokio::select! {
            () = &mut stop => return Ok(0),
            Some(()) = wake.recv() => {
                while wake.try_recv().is_ok() {}
                follow_up = Some(Instant::now() + SETTLE);
            }
            () = tokio::time::sleep_until(deadline) => {
                if follow_up.is_some_and(|f| f <= Instant::now()) {
                    follow_up = None;
                }
            }
        }
        let snap = b.snapshot(namespace.as_ref()).await?;
        next_read = Instant::now() + args.refresh;
        for line in changes(&mut seen, &snap) {
            say!("{} {line}", now_utc());
        }
        if namespace.is_none() {
            listeners.listen_to(&to_listen(&snap, MAX_LISTENED));
        }
    }
}

#[cfg(test)]
mod tests {
    use regent::{Role, Term};

    use super::*;

    fn status(role: &str, holder: &str, term: u64, until_s: i64, s: HolderSession) -> LeaseStatus {
        LeaseStatus {
            lease: LeaseRecord {
                namespace: Namespace::new("demo").unwrap(),
                role: Role::new(role).unwrap(),
                holder: holder.to_owned(),
                term: Term(term),
                session: None,
                acquired_at: DbTimestamp::from_micros(0),
                renewed_at: DbTimestamp::from_micros(0),
                lease_until: DbTimestamp::from_micros(until_s * 1_000_000),
            },
            holder_session: s,
        }
    }

    fn snap(now_s: i64, leases: Vec<LeaseStatus>) -> Snapshot {
        Snapshot {
            db_now: DbTimestamp::from_micros(now_s * 1_000_000),
            leases,
        }
    }

    #[test]
    fn the_table_aligns_columns_and_names_the_session_state() {
        let s = snap(
            10,
            vec![
                status(
                    "billing",
                    "demo-node-1",
                    1,
                    19,
                    HolderSession::Alive { pid: 5360 },
                ),
                status("scheduler", "n2", 12, 8, HolderSession::Gone { pid: 77 }),
            ],
        );
        assert_eq!(
            table(&s),
            "NAMESPACE  ROLE       HOLDER       TERM  LEASE LEFT        HOLDER BACKEND\n\
             demo       billing    demo-node-1  1     9.0s              alive (pid 5360)\n\
             demo       scheduler  n2           12    expired 2.0s ago  gone (pid 77)"
        );
        assert_eq!(table(&snap(0, vec![])), "no leases yet");
    }

    #[test]
    fn watch_listens_only_to_namespaces_with_a_lease_in_force() {
        let alive = HolderSession::Alive { pid: 1 };
        let in_ns = |ns: &str, until_s: i64, s: HolderSession| {
            let mut l = status("r", "n", 1, until_s, s);
            l.lease.namespace = Namespace::new(ns).unwrap();
            l
        };
        let s = snap(
            10,
            vec![
                in_ns("c", 20, alive),
                in_ns("a", 20, alive),
                in_ns("a", 20, alive),
                in_ns("expired", 5, alive),
                in_ns("dead", 20, HolderSession::Gone { pid: 9 }),
                in_ns("b", 20, HolderSession::Unknown),
            ],
        );
        let names = |set: BTreeSet<Namespace>| -> Vec<String> {
            set.into_iter().map(|n| n.to_string()).collect()
        };
        assert_eq!(names(to_listen(&s, 16)), ["a", "b", "c"]);
        assert_eq!(names(to_listen(&s, 2)), ["a", "b"]);
    }

    #[test]
    fn watch_prints_each_change_once_in_role_order() {
        let alive = HolderSession::Alive { pid: 1 };
        let mut seen = BTreeMap::new();
        let first = snap(
            0,
            vec![
                status("a", "n1", 1, 10, alive),
                status("b", "n1", 1, 10, HolderSession::Unknown),
            ],
        );
        assert_eq!(
            changes(&mut seen, &first),
            ["demo/a  leader n1  term 1", "demo/b  leader n1  term 1"]
        );
        // A renewal changes nothing worth a line.
        let renewed = snap(5, vec![status("a", "n1", 1, 15, alive)]);
        assert!(changes(&mut seen, &renewed).is_empty());
        // The holder's session goes (its pid may live on in another backend).
        let gone = snap(
            6,
            vec![status("a", "n1", 1, 15, HolderSession::Gone { pid: 1 })],
        );
        assert_eq!(
            changes(&mut seen, &gone),
            ["demo/a  leader n1  term 1  (its session is gone; the lease runs out)"]
        );
        let expired = snap(
            15,
            vec![status("a", "n1", 1, 15, HolderSession::Gone { pid: 1 })],
        );
        assert_eq!(
            changes(&mut seen, &expired),
            ["demo/a  no leader (lease expired)"]
        );
        let taken = snap(
            16,
            vec![status("a", "n2", 2, 26, HolderSession::Alive { pid: 2 })],
        );
        assert_eq!(changes(&mut seen, &taken), ["demo/a  leader n2  term 2"]);
    }
}
