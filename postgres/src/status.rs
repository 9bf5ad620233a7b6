//! [`PgBackend::snapshot`]: every lease row, the database time, and whether
//! each holder's session is still there — for status displays such as
//! `regent status` and `regent watch`, without SQL of their own.
//!
//! A row's `backend_pid` alone says little: PostgreSQL reuses pids, so a
//! holder that died long ago may name a pid that now belongs to some other
//! backend. A pid counts as the holder's session only while that backend
//! holds the role's advisory lock (the same `pg_locks` check as
//! [`Statements::preempt`](crate::Statements::preempt)).
//!
//! Two statements on the pool: [`StatusStatements::leases`] reads the rows
//! and `now()`; [`StatusStatements::lock_holders`] then asks, for the rows
//! that name a pid, whether that pid holds the row's lock. Both run on the
//! pool, never on the node's session.

use regent_core::{BackendError, DbTimestamp, LeaseRecord, Namespace};

use crate::driver::{Driver, Param, Row};
use crate::{AdvisoryKey, PgBackend, TableName};

/// `(extract(epoch FROM expr) * 1000000)::int8`: a timestamp as epoch µs.
fn us(expr: &str) -> String {
    format!("(extract(epoch FROM {expr}) * 1000000)::int8")
}

/// The statements of [`PgBackend::snapshot`] for one lease table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusStatements {
    /// `$1 ns text or NULL for all` → at least one row: `db_now_us,
    /// namespace, role,` lease columns (see [`crate::LeaseRow`]), ordered
    /// by namespace and role; `namespace` is NULL in the single row when
    /// the table has no matching lease.
    pub leases: String,
    /// `$1 pids int4[], $2 ns_keys int4[], $3 role_keys int4[]` → one row
    /// per input position, in input order: `holds bool`, true when that
    /// pid holds that advisory lock (granted) in this database.
    pub lock_holders: String,
}

impl StatusStatements {
    /// The statements for `table`.
    pub fn new(table: &TableName) -> Self {
        let t = table.qualified();
        let leases = format!(
            "SELECT {now} AS db_now_us, l.namespace AS namespace, l.role AS role, \
             l.holder AS holder, l.term AS term, l.backend_pid AS backend_pid, \
             {acq} AS acquired_us, {ren} AS renewed_us, {until} AS until_us \
             FROM (VALUES (1)) AS one(x) \
             LEFT JOIN {t} AS l ON $1::text IS NULL OR l.namespace = $1::text \
             ORDER BY l.namespace, l.role",
            now = us("now()"),
            acq = us("l.acquired_at"),
            ren = us("l.renewed_at"),
            until = us("l.lease_until"),
        );
        let lock_holders = "SELECT EXISTS (SELECT 1 FROM pg_locks AS k WHERE k.pid = a.pid \
             AND k.locktype = 'advisory' AND k.objsubid = 2 AND k.granted \
             AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND k.classid = (a.k1::int8 & 4294967295)::oid \
             AND k.objid = (a.k2::int8 & 4294967295)::oid) AS holds \
             FROM unnest($1::int4[], $2::int4[], $3::int4[]) WITH ORDINALITY AS a(pid, k1, k2, ord) \
             ORDER BY a.ord"
            .to_owned();
        Self {
            leases,
            lock_holders,
        }
    }
}

/// Whether the session a lease row names is still the holder's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderSession {
    /// The backend `pid` holds the role's advisory lock: the holder's
    /// session is alive.
    Alive {
        /// `pg_backend_pid()` of the holder's session.
        pid: i32,
    },
    /// The backend `pid` does not hold the role's lock (it ended, released
    /// the role, or the pid now belongs to another backend): the holder's
    /// session is gone, whatever the lease says.
    Gone {
        /// The pid the row names.
        pid: i32,
    },
    /// The row names no pid (written by something that does not track one).
    Unknown,
}

/// One lease row and the state of its holder's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    /// The row.
    pub lease: LeaseRecord,
    /// Whether the session the row names still holds the role's lock.
    pub holder_session: HolderSession,
}

impl LeaseStatus {
    /// Whether the row names a live leader at `now`: the lease has not
    /// ended and the holder's session holds the lock (or tracks no pid).
    pub fn led_at(&self, now: DbTimestamp) -> bool {
        !self.lease.expired_at(now) && !matches!(self.holder_session, HolderSession::Gone { .. })
    }
}

/// Every lease row (of one namespace or all) as of one database time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The database's `now()` when the rows were read.
    pub db_now: DbTimestamp,
    /// The rows, ordered by namespace and role.
    pub leases: Vec<LeaseStatus>,
}

/// The lease rows of a [`StatusStatements::leases`] result and the
/// database time; the single all-`NULL` row of an empty table is skipped.
pub fn leases_from_rows(rows: &[Row]) -> Result<(DbTimestamp, Vec<LeaseRecord>), BackendError> {
    let bad = |e: crate::driver::ColumnError| crate::unreadable_row(&e.to_string());
    let mut now = None;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        now = Some(DbTimestamp::from_micros(row.int("db_now_us").map_err(bad)?));
        let names = crate::lease_names(
            row.opt_text("namespace").map_err(bad)?,
            row.opt_text("role").map_err(bad)?,
        )?;
        if let Some((ns, role)) = names {
            out.extend(crate::lease::lease_from_row(row, &ns, &role)?);
        }
    }
    let now = now.ok_or_else(|| crate::unreadable_row("the status query returned no row"))?;
    Ok((now, out))
}

/// The parameters of [`StatusStatements::lock_holders`] for the rows of
/// `leases` that name a pid: `(index into leases, pid, key)`.
pub fn lock_checks(leases: &[LeaseRecord]) -> Vec<(usize, i32, AdvisoryKey)> {
    leases
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let pid = l.session.and_then(|p| i32::try_from(p).ok())?;
            Some((i, pid, AdvisoryKey::derive(&l.namespace, &l.role)))
        })
        .collect()
}

/// Joins the rows with the `holds` answers of [`lock_checks`] (in the
/// checks' order) into the statuses.
pub fn join_holders(
    leases: Vec<LeaseRecord>,
    checks: &[(usize, i32, AdvisoryKey)],
    holds: &[bool],
) -> Result<Vec<LeaseStatus>, BackendError> {
    if checks.len() != holds.len() {
        return Err(crate::unreadable_row(&format!(
            "asked whether {} sessions hold their locks, got {} answers",
            checks.len(),
            holds.len()
        )));
    }
    let mut out: Vec<LeaseStatus> = leases
        .into_iter()
        .map(|lease| LeaseStatus {
            lease,
            holder_session: HolderSession::Unknown,
        })
        .collect();
    for (&(i, pid, _), &held) in checks.iter().zip(holds) {
        if let Some(s) = out.get_mut(i) {
            s.holder_session = if held {
                HolderSession::Alive { pid }
            } else {
                HolderSession::Gone { pid }
            };
        }
    }
    Ok(out)
}

impl<D: Driver> PgBackend<D> {
    /// Every lease row of `namespace` (or of all namespaces), the database
    /// time, and whether each holder's session still holds the role's
    /// advisory lock — a pid reused by another backend counts as gone.
    ///
    /// Runs two statements on the pool (never on the session), each bounded
    /// by the call timeout.
    ///
    /// # Errors
    /// As the pool's statements: [`BackendError::Timeout`], a missing table
    /// or privilege ([`BackendError::Misconfigured`]), or a transient
    /// database error.
    pub async fn snapshot(&self, namespace: Option<&Namespace>) -> Result<Snapshot, BackendError> {
        let e = &self.engine;
        let sql = StatusStatements::new(&e.settings.table);
        let rows = e
            .pool(
                &sql.leases,
                &[Param::OptText(namespace.map(|n| n.as_str().to_owned()))],
            )
            .await?;
        let (db_now, leases) = leases_from_rows(&rows)?;
        let checks = lock_checks(&leases);
        let holds = if checks.is_empty() {
            Vec::new()
        } else {
            let params = [
                Param::Int4Array(checks.iter().map(|c| c.1).collect()),
                Param::Int4Array(checks.iter().map(|c| c.2.ns).collect()),
                Param::Int4Array(checks.iter().map(|c| c.2.role).collect()),
            ];
            e.pool(&sql.lock_holders, &params)
                .await?
                .iter()
                .map(|r| r.bool("holds"))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| crate::unreadable_row(&e.to_string()))?
        };
        Ok(Snapshot {
            db_now,
            leases: join_holders(leases, &checks, &holds)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use regent_core::{Role, Term};

    use super::*;
    use crate::driver::Value;

    fn lease_row(ns: Option<&str>, role: Option<&str>, pid: Option<i64>) -> Row {
        let text = |s: Option<&str>| s.map_or(Value::Null, |s| Value::Text(s.to_owned()));
        let int = |v: i64| {
            if ns.is_some() {
                Value::Int(v)
            } else {
                Value::Null
            }
        };
        Row::new(vec![
            ("db_now_us".into(), Value::Int(5_000_000)),
            ("namespace".into(), text(ns)),
            ("role".into(), text(role)),
            ("holder".into(), text(ns.map(|_| "node-a"))),
            ("term".into(), int(3)),
            ("backend_pid".into(), pid.map_or(Value::Null, Value::Int)),
            ("acquired_us".into(), int(1_000_000)),
            ("renewed_us".into(), int(4_000_000)),
            ("until_us".into(), int(9_000_000)),
        ])
    }

    #[test]
    fn statements_name_the_table_and_check_the_lock() {
        let s = StatusStatements::new(&TableName::new("ops", "leases").unwrap());
        assert!(
            s.leases.contains(r#"LEFT JOIN "ops"."leases" AS l"#),
            "{}",
            s.leases
        );
        assert!(s.leases.contains("$1::text IS NULL"));
        // The liveness test is lock ownership, not pid existence.
        assert!(s.lock_holders.contains("pg_locks"));
        assert!(s.lock_holders.contains("k.objsubid = 2 AND k.granted"));
        assert!(!s.lock_holders.contains("pg_stat_activity"));
        assert!(s.lock_holders.contains("ORDER BY a.ord"));
    }

    #[test]
    fn an_empty_table_still_gives_the_time() {
        let (now, leases) = leases_from_rows(&[lease_row(None, None, None)]).unwrap();
        assert_eq!(now, DbTimestamp::from_micros(5_000_000));
        assert!(leases.is_empty());
        assert!(leases_from_rows(&[]).is_err());
    }

    #[test]
    fn rows_decode_in_order() {
        let rows = [
            lease_row(Some("a"), Some("billing"), Some(7)),
            lease_row(Some("a"), Some("scheduler"), None),
        ];
        let (_, leases) = leases_from_rows(&rows).unwrap();
        let names: Vec<&str> = leases.iter().map(|l| l.role.as_str()).collect();
        assert_eq!(names, ["billing", "scheduler"]);
        assert_eq!(leases[0].term, Term(3));
        assert_eq!(leases[0].session, Some(7));
        assert_eq!(leases[1].session, None);
    }

    #[test]
    fn only_a_pid_that_holds_the_lock_is_alive() {
        let rows = [
            lease_row(Some("a"), Some("billing"), Some(7)),
            lease_row(Some("a"), Some("jobs"), None),
            lease_row(Some("a"), Some("scheduler"), Some(8)),
        ];
        let (now, leases) = leases_from_rows(&rows).unwrap();
        let checks = lock_checks(&leases);
        // Rows without a pid are not asked about; keys follow the names.
        assert_eq!(checks.len(), 2);
        assert_eq!((checks[0].0, checks[0].1), (0, 7));
        assert_eq!((checks[1].0, checks[1].1), (2, 8));
        let ns = Namespace::new("a").unwrap();
        assert_eq!(
            checks[1].2,
            AdvisoryKey::derive(&ns, &Role::new("scheduler").unwrap())
        );
        // pid 8 exists (maybe reused) but does not hold the lock: gone.
        let statuses = join_holders(leases.clone(), &checks, &[true, false]).unwrap();
        let sessions: Vec<HolderSession> = statuses.iter().map(|s| s.holder_session).collect();
        assert_eq!(
            sessions,
            [
                HolderSession::Alive { pid: 7 },
                HolderSession::Unknown,
                HolderSession::Gone { pid: 8 },
            ]
        );
        assert!(statuses[0].led_at(now));
        assert!(statuses[1].led_at(now));
        assert!(!statuses[2].led_at(now), "a gone session leads nothing");
        assert!(!statuses[0].led_at(DbTimestamp::from_micros(9_000_000)));
        assert!(join_holders(leases, &checks, &[true]).is_err());
    }
}
