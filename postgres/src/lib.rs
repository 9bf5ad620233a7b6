//! regent-postgres: regent's one PostgreSQL engine.
//!
//! Everything both PostgreSQL backends do lives here, once: the schema DDL,
//! statement text, advisory-lock key derivation, channel names, row
//! decoding, lock planning ([`plan`], [`held_roles`]), session
//! [`Settings`], error classification ([`misconfiguration`]), the fenced
//! check ([`PgBackend::fence`]) and the session engine [`PgBackend`] —
//! opening the node's session with the transaction-pooler probe, the one
//! cancellation rule, lock-loss detection, the release listener.
//! [`PgBackend`] is generic over a small [`driver::Driver`] trait; the
//! adapters `regent-sqlx` and `regent-tokio-postgres` implement it (connect,
//! run a statement, listen, bind, decode) and nothing else.
//!
//! # Two modes
//!
//! [`Mode::Session`] (the default) keeps mutual exclusion in session-level
//! advisory locks on one dedicated connection per node. [`Mode::Lease`]
//! keeps it in the lease row alone — a compare-and-set in database time,
//! every statement one autocommit transaction on the pool
//! ([`Driver::pool_query_pooler_safe`](driver::Driver::pool_query_pooler_safe)) —
//! so it works through a transaction pooler; see [`Mode`] for what each
//! costs and guarantees, and the `lease_mode` module's table for how each
//! trait call maps. In both modes every claimed row carries this backend's
//! [`Incarnation`], and "my own lease" means holder **and** incarnation.
//!
//! # Parameters and results
//!
//! Every statement uses `$n` placeholders with explicit casts, so the same
//! text works on sqlx and tokio-postgres. Times come back as `int8`
//! microseconds since the Unix epoch (columns ending in `_us`), which map to
//! [`DbTimestamp`](regent_core::DbTimestamp) without a date-time library. Lease
//! columns are always named as in [`LeaseRow`]: `holder`, `term`,
//! `backend_pid`, `acquired_us`, `renewed_us`, `until_us` (all `NULL` when a
//! `LEFT JOIN` found no row).
//!
//! The connection-level statements ([`BACKEND_PID`], [`PROBE_BEGIN`],
//! [`BEGIN`], [`COMMIT`], [`ROLLBACK`], [`listen`], [`set_commands`],
//! [`set_local_commands`]) take no parameters; they are run with the simple
//! query protocol.
//!
//! # Advisory-lock keys
//!
//! A role's lock is `pg_try_advisory_lock(ns_key, role_key)` — the two-`int4`
//! form, which `pg_locks` shows with `objsubid = 2`, `classid = ns_key` and
//! `objid = role_key` (as unsigned `oid`s). Each key is
//! `fold(FNV-1a-64(utf8 bytes of the name))`, where FNV-1a 64 starts from
//! the offset basis `0xcbf29ce484222325` and, for each byte, XORs the byte in
//! and multiplies by the prime `0x100000001b3` (wrapping), and
//! `fold(h) = ((h >> 32) ^ (h & 0xffff_ffff))` reinterpreted as a two's
//! complement `i32`. The namespace key depends only on the namespace and the
//! role key only on the role (advisory locks are database-wide: namespaces,
//! not tables, isolate deployments). This is stable: it never changes between
//! releases. Test vectors (see [`AdvisoryKey::derive`]):
//!
//! | name          | FNV-1a 64            | key (i32)     |
//! |---------------|----------------------|---------------|
//! | `""`          | `0xcbf29ce484222325` | `1339080641`  |
//! | `"a"`         | `0xaf63dc4c8601ec8c` | `694300864`   |
//! | `"default"`   | `0xebada5168620c5fe` | `1837981928`  |
//! | `"scheduler"` | `0xa3e66bbb9ba9c7fa` | `944745537`   |
//! | `"billing"`   | `0x4005570295afd25c` | `-710245026`  |
//! | `"ünïcødé"`   | `0x7fe9369f83b596a0` | `-61038529`   |
//!
//! so the role `"scheduler"` in namespace `"default"` locks
//! `pg_try_advisory_lock(1837981928, 944745537)`.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use std::fmt;

use thiserror::Error;

mod backend;
pub mod driver;
mod errors;
mod fenced;
mod forward;
mod incarnation;
mod keys;
mod lease;
mod lease_mode;
mod listen;
mod ops;
mod plan;
mod rows;
mod session;
mod settings;
mod statements;
mod status;

/// What [`forward_backend!`] expands to refers to; not public API.
#[doc(hidden)]
pub mod __private {
    pub use async_trait::async_trait;
    pub use regent_core::{
        Backend, BackendError, ClaimOutcome, DbTimestamp, Depose, HeldLease, Lease, LeaseRecord,
        Lock, Namespace, NodeId, Notify, PreemptOutcome, Released, RenewOutcome, Role,
        Subscription, Term, TryLockOutcome,
    };
}

pub use backend::{FencedError, MigrateError, PgBackend, TxExec};
pub use errors::{
    SQLSTATE_INVALID_SQL_STATEMENT_NAME, SQLSTATE_UNDEFINED_COLUMN, connect_error,
    misconfiguration, no_reply_error, open_timeout_error, pool_error, session_error,
};
pub use fenced::{Stale, check_fenced};
pub use incarnation::Incarnation;
pub use keys::{
    AdvisoryKey, fenced_application_name, fnv1a64, fold32, migrate_lock_key, notify_channel,
};
pub use listen::PgSubscription;
pub use ops::SQLSTATE_LOCK_NOT_AVAILABLE;
pub use plan::{
    KEY_COLLISION_WARNING, KeyCollision, LockPlan, Planned, TryLockParams, check_claim,
    check_try_lock_rows, held_roles, lock_attempts, plan, record_granted,
};
pub use rows::{
    LeaseRow, PREEMPT_NOT_PERMITTED_WARNING, RowError, lease_names, micros, preempt_outcome,
    renewed_roles, term_from_db, term_to_db, unreadable_row,
};
pub use settings::{
    InvalidOptions, ListenerUrl, Mode, OptionError, Options, SessionSettings, Settings, require,
    startup_options,
};
pub use statements::{
    BACKEND_PID, BEGIN, COMMIT, MODE_ALREADY_HELD, MODE_SKIP, MODE_TRY, PREEMPT_NOT_PERMITTED,
    PREEMPT_NOT_ZOMBIE, PREEMPT_TERMINATED, PROBE_BEGIN, ROLLBACK, Statements, listen,
    migrate_check, set_commands, set_local_commands,
};
pub use status::{
    HolderSession, LeaseStatus, Snapshot, StatusStatements, join_holders, leases_from_rows,
    lock_checks,
};

/// The default schema of the lease table.
pub const DEFAULT_SCHEMA: &str = "public";
/// The default name of the lease table.
pub const DEFAULT_TABLE: &str = "regent_leases";

/// SQLSTATE `42P01`: the table does not exist.
pub const SQLSTATE_UNDEFINED_TABLE: &str = "42P01";
/// SQLSTATE `3F000`: the schema does not exist.
pub const SQLSTATE_INVALID_SCHEMA: &str = "3F000";
/// SQLSTATE `42501`: insufficient privilege.
pub const SQLSTATE_INSUFFICIENT_PRIVILEGE: &str = "42501";

/// A schema or table name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "invalid {kind} name {name:?}: use 1 to 63 ASCII letters, digits and underscores, \
     not starting with a digit"
)]
pub struct IdentError {
    /// Which kind of identifier ("schema", "table").
    pub kind: &'static str,
    /// The rejected name.
    pub name: String,
}

fn validate_ident(kind: &'static str, name: &str) -> Result<(), IdentError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    ok.then_some(()).ok_or_else(|| IdentError {
        kind,
        name: name.to_owned(),
    })
}

/// Where the lease table lives: a validated schema and table name.
///
/// ```
/// use regent_postgres::TableName;
/// let t = TableName::new("ops", "Leases").unwrap();
/// assert_eq!(t.qualified(), r#""ops"."Leases""#);
/// assert!(TableName::new("ops", "x; drop table y").is_err());
/// assert_eq!(TableName::default().qualified(), r#""public"."regent_leases""#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    schema: String,
    table: String,
}

impl TableName {
    /// Validates both names (ASCII letters, digits, `_`; 1–63 bytes; no
    /// leading digit). They are always quoted, so case is preserved.
    pub fn new(schema: &str, table: &str) -> Result<Self, IdentError> {
        validate_ident("schema", schema)?;
        validate_ident("table", table)?;
        Ok(Self {
            schema: schema.to_owned(),
            table: table.to_owned(),
        })
    }

    /// The schema name, unquoted.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table name, unquoted.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// `"schema"."table"`, quoted, ready to splice into SQL.
    pub fn qualified(&self) -> String {
        format!("\"{}\".\"{}\"", self.schema, self.table)
    }
}

impl Default for TableName {
    fn default() -> Self {
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
            table: DEFAULT_TABLE.to_owned(),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.qualified())
    }
}

/// The DDL statements that create the lease table, in order. The schema is
/// created only when it is not `public` (creating `public` would need the
/// `CREATE` privilege on the database even though it exists).
pub fn ddl_statements(table: &TableName) -> Vec<String> {
    let mut out = Vec::new();
    if table.schema() != DEFAULT_SCHEMA {
        out.push(format!(
            "CREATE SCHEMA IF NOT EXISTS \"{}\"",
            table.schema()
        ));
    }
    out.push(format!(
        "CREATE TABLE IF NOT EXISTS {} (\n    \
         namespace    text        NOT NULL,\n    \
         role         text        NOT NULL,\n    \
         holder       text        NOT NULL,\n    \
         term         bigint      NOT NULL CHECK (term > 0),\n    \
         backend_pid  integer,\n    \
         acquired_at  timestamptz NOT NULL,\n    \
         renewed_at   timestamptz NOT NULL,\n    \
         lease_until  timestamptz NOT NULL,\n    \
         incarnation  text,\n    \
         PRIMARY KEY (namespace, role)\n)",
        table.qualified()
    ));
    out
}

/// The statements that bring a lease table created by an older version up
/// to date: add the nullable `incarnation` column (see [`Incarnation`]).
/// Idempotent. [`PgBackend::migrate`] runs them when the column is missing;
/// rows claimed before the upgrade have `NULL` there and count as nobody's
/// own lease.
pub fn upgrade_statements(table: &TableName) -> Vec<String> {
    vec![format!(
        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS incarnation text",
        table.qualified()
    )]
}

/// [`ddl_statements`] then [`upgrade_statements`] as one idempotent script, as shipped in `postgres/sql/regent_leases.sql`
/// for teams with their own migration tool.
pub fn ddl_script(table: &TableName) -> String {
    let mut s = String::from(
        "-- regent lease table. Generated by regent_postgres::ddl_script;\n\
         -- the same DDL that `regent migrate` / `migrate()` runs.\n",
    );
    for stmt in ddl_statements(table)
        .into_iter()
        .chain(upgrade_statements(table))
    {
        s.push_str(&stmt);
        s.push_str(";\n");
    }
    s
}

/// The error message when `pg_backend_pid()` changed between two round
/// trips on one session: a transaction pooler is in front of the database.
/// Returns `None` when the pids agree.
pub fn transaction_pooling_error(first_pid: i32, second_pid: i32) -> Option<String> {
    (first_pid != second_pid).then(|| {
        format!(
            "the database session changed between two statements (backend pid {first_pid} \
             then {second_pid}): a connection pooler in transaction mode (PgBouncer \
             `pool_mode=transaction`) is in front of PostgreSQL, which silently breaks \
             session advisory locks. {}",
            POOLER_FIXES
        )
    })
}

/// The ways out when session mode meets a transaction pooler, ending every
/// refusal: lease mode (one line), a session pooler, or a direct connection.
pub const POOLER_FIXES: &str = "Switch to lease mode, which works through transaction \
     poolers: `SqlxBackend::builder().lease_mode()` (regent-sqlx) or \
     `TokioPgBackend::builder().lease_mode()` (regent-tokio-postgres); or use \
     `pool_mode=session` for regent's connection, or connect to PostgreSQL directly";

/// How long the session's second `pg_backend_pid()` may wait while the
/// probe connection holds its transaction before the probe lets go (see
/// [`pooler_probe_error`]). A direct connection answers at once; only a
/// transaction pooler with no other server connection free makes it wait,
/// and the probe then rolls back so the query can go on.
pub const PROBE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// The start-up check for a transaction pooler, with a probe.
///
/// The session runs [`BACKEND_PID`] (`first_pid`); then a second, short-lived
/// *probe* connection with the same connect options (so through the same
/// pooler, if any) runs [`PROBE_BEGIN`] (`probe_pid`) and keeps that
/// transaction open while the session runs [`BACKEND_PID`] again
/// (`second_pid`); then the probe rolls back and closes.
///
/// A transaction pooler gives a lone client back the server connection it
/// released last, so the session's two pids alone may agree behind it. But
/// the probe, asking while the session is between transactions, is handed
/// that same server connection — which it holds, so the session's second
/// query must get another one. So the pooler is detected when the session's
/// pids differ **or** the probe's pid equals the session's first. A direct
/// connection, or a pooler in session mode, gives the probe a server
/// connection of its own and passes. Returns `None` when it passes.
pub fn pooler_probe_error(first_pid: i32, second_pid: i32, probe_pid: i32) -> Option<String> {
    transaction_pooling_error(first_pid, second_pid).or_else(|| {
        (probe_pid == first_pid).then(|| {
            format!(
                "another connection was handed this session's database connection (backend \
                 pid {first_pid}) between two of its statements: a connection pooler in \
                 transaction mode (PgBouncer `pool_mode=transaction`) is in front of \
                 PostgreSQL, which silently breaks session advisory locks. {POOLER_FIXES}"
            )
        })
    })
}

/// The error message when the lease table (or its schema) is missing.
pub fn missing_table_error(table: &TableName) -> String {
    format!(
        "the lease table {table} does not exist: run `regent migrate` (or call \
         `migrate()` on the backend) once, or apply postgres/sql/regent_leases.sql from the regent sources with your \
         migration tool"
    )
}

/// The error message when the database role lacks privileges on the table.
pub fn privilege_error(table: &TableName, detail: &str) -> String {
    format!(
        "permission denied on the lease table {table} ({detail}): grant SELECT, INSERT, \
         UPDATE on it to the role regent connects as"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_sql_file_matches_generated_ddl() {
        let shipped = include_str!("../sql/regent_leases.sql");
        assert_eq!(
            shipped,
            ddl_script(&TableName::default()),
            "postgres/sql/regent_leases.sql is out of date: regenerate it from \
             regent_postgres::ddl_script(&TableName::default())"
        );
    }

    #[test]
    fn names_and_messages() {
        for bad in ["", "1a", "a-b", "a\"b", "ä", &"x".repeat(64)] {
            assert_eq!(TableName::new("s", bad).unwrap_err().kind, "table");
        }
        assert_eq!(TableName::new("", "t").unwrap_err().kind, "schema");
        assert_eq!(ddl_statements(&TableName::default()).len(), 1);
        assert!(ddl_statements(&TableName::default())[0].contains("incarnation  text,"));
        assert_eq!(
            upgrade_statements(&TableName::new("ops", "t").unwrap()),
            ["ALTER TABLE \"ops\".\"t\" ADD COLUMN IF NOT EXISTS incarnation text"]
        );
        assert!(
            ddl_script(&TableName::default())
                .ends_with("ADD COLUMN IF NOT EXISTS incarnation text;\n")
        );
        let custom = ddl_statements(&TableName::new("ops", "t").unwrap());
        assert_eq!(custom[0], "CREATE SCHEMA IF NOT EXISTS \"ops\"");
        assert_eq!(transaction_pooling_error(7, 7), None);
        let e = transaction_pooling_error(7, 8).unwrap();
        assert!(e.contains("pool_mode=transaction") && e.contains("pool_mode=session"));
    }

    #[test]
    fn pooler_probe() {
        // Direct connection / session pooling: the probe has its own backend.
        assert_eq!(pooler_probe_error(7, 7, 9), None);
        // Transaction pooling, lone client: the probe got our connection.
        let e = pooler_probe_error(7, 7, 7).unwrap();
        assert!(!e.contains("  "), "no stray spaces: {e}");
        // The refusal names lease mode and the one-line switch of both drivers.
        assert!(
            e.contains("lease mode")
                && e.contains("SqlxBackend::builder().lease_mode()")
                && e.contains("TokioPgBackend::builder().lease_mode()"),
            "{e}"
        );
        assert!(
            e.contains("pool_mode=transaction")
                && e.contains("pool_mode=session")
                && e.contains("directly")
                && e.contains("pid 7"),
            "{e}"
        );
        // The session itself moved (busy pool): refused, whatever the probe saw.
        for probe in [7, 8, 9] {
            let e = pooler_probe_error(7, 8, probe).unwrap();
            assert!(
                e.contains("7 then 8") && e.contains("pool_mode=session"),
                "{e}"
            );
        }
    }
}
