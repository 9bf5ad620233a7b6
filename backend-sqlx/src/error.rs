//! Error types of the crate, and the mapping of sqlx errors to
//! [`BackendError`].

use regent_core::postgres::{
    self, IdentError, SQLSTATE_INSUFFICIENT_PRIVILEGE, SQLSTATE_INVALID_SCHEMA,
    SQLSTATE_UNDEFINED_TABLE, TableName,
};
use regent_core::{BackendError, Term};
use thiserror::Error;

/// Building, connecting or migrating a [`SqlxBackend`](crate::SqlxBackend)
/// failed.
#[derive(Debug, Error)]
pub enum SetupError {
    /// A schema or table name is not a plain identifier.
    #[error(transparent)]
    Identifier(#[from] IdentError),
    /// An option is out of range.
    #[error("invalid option `{field}`: {rule}")]
    Option {
        /// The builder method / option name.
        field: &'static str,
        /// The rule it broke.
        rule: &'static str,
    },
    /// The connection URL could not be parsed.
    #[error("invalid database URL: {0}; expected postgres://user[:password]@host[:port]/database")]
    Url(#[source] sqlx::Error),
    /// PostgreSQL could not be reached.
    #[error(
        "could not connect to PostgreSQL: {0}; check that the server runs and that the \
         URL's host, port, user and database are right"
    )]
    Connect(#[source] sqlx::Error),
    /// PostgreSQL did not answer in time.
    #[error(
        "could not connect to PostgreSQL within {0:?}: check that the server runs and is \
         reachable at the URL's host and port"
    )]
    ConnectTimeout(std::time::Duration),
    /// `migrate()` failed.
    #[error(
        "creating the lease table {table} failed: {source}; the connecting role needs \
         CREATE on the schema (or apply core/sql/regent_leases.sql from the regent sources as a privileged user)"
    )]
    Migrate {
        /// The table being created.
        table: TableName,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },
}

/// Why [`SqlxBackend::fenced`](crate::SqlxBackend::fenced) refused to open
/// a fenced transaction.
#[derive(Debug, Error)]
pub enum FencedError {
    /// The lease row no longer names this holder with this term: another node
    /// took over (or the lease never existed). Do not perform the write; this
    /// node is no longer leader for `role`.
    #[error(
        "stale fencing token {token} for role {role:?} in namespace {namespace:?}: the lease \
         is now {current}; this node is no longer leader, so drop the write instead of retrying",
        current = match (.current_holder, .current_term) {
            (Some(h), Some(t)) => format!("held by {h:?} at term {t}"),
            _ => "missing".to_owned(),
        }
    )]
    Stale {
        /// The namespace.
        namespace: String,
        /// The role.
        role: String,
        /// The token the caller presented.
        token: Term,
        /// Who holds the lease now, if there is a row.
        current_holder: Option<String>,
        /// The current term, if there is a row.
        current_term: Option<Term>,
    },
    /// The lease table is missing or not accessible.
    #[error("{0}")]
    Misconfigured(String),
    /// The database failed; the write did not happen. Retrying may help.
    #[error("fenced transaction could not be opened: {0}; nothing was written, retry later")]
    Database(#[source] sqlx::Error),
}

/// The SQLSTATE of a database error, if `e` is one.
pub(crate) fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// A message for an error that no retry can fix, if `e` is one.
pub(crate) fn misconfiguration(e: &sqlx::Error, table: &TableName) -> Option<String> {
    match sqlstate(e).as_deref() {
        Some(SQLSTATE_UNDEFINED_TABLE | SQLSTATE_INVALID_SCHEMA) => {
            Some(postgres::missing_table_error(table))
        }
        Some(SQLSTATE_INSUFFICIENT_PRIVILEGE) => {
            Some(postgres::privilege_error(table, &e.to_string()))
        }
        // invalid_sql_statement_name: a prepared statement vanished.
        Some("26000") => Some(format!(
            "{e}: prepared statements vanished between round trips, which happens behind a \
             connection pooler in transaction mode (PgBouncer `pool_mode=transaction`); use \
             `pool_mode=session` for regent's connection, or connect to PostgreSQL directly"
        )),
        // invalid_authorization_specification, invalid_password, unknown database
        Some("28000" | "28P01" | "3D000") => Some(format!(
            "{e}: check the user, password and database name in the connection settings"
        )),
        _ => None,
    }
}

/// Maps an error of a statement on the lock session. The caller has already
/// dropped the session, so every lock on it is gone.
pub(crate) fn session_error(e: &sqlx::Error, table: &TableName) -> BackendError {
    match misconfiguration(e, table) {
        Some(msg) => BackendError::Misconfigured(msg),
        None => BackendError::SessionLost {
            reason: e.to_string(),
        },
    }
}

/// Maps an error of a statement on the shared pool (no locks involved).
pub(crate) fn pool_error(e: &sqlx::Error, table: &TableName) -> BackendError {
    match misconfiguration(e, table) {
        Some(msg) => BackendError::Misconfigured(msg),
        None => BackendError::Transient(e.to_string()),
    }
}

/// Maps an error while opening a session: nothing was held yet.
pub(crate) fn connect_error(e: &sqlx::Error, table: &TableName) -> BackendError {
    match misconfiguration(e, table) {
        Some(msg) => BackendError::Misconfigured(msg),
        None => BackendError::Transient(format!("could not open the database session: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let stale = FencedError::Stale {
            namespace: "default".into(),
            role: "r".into(),
            token: Term(3),
            current_holder: Some("b".into()),
            current_term: Some(Term(4)),
        };
        let s = stale.to_string();
        assert!(
            s.contains("stale fencing token 3") && s.contains("\"b\" at term 4"),
            "{s}"
        );
        let opt = SetupError::Option {
            field: "statement_timeout",
            rule: "must be at least 1 ms",
        };
        assert!(opt.to_string().contains("statement_timeout"));
        let e = sqlx::Error::Protocol("boom".into());
        let t = TableName::default();
        assert!(session_error(&e, &t).is_session_lost());
        assert!(pool_error(&e, &t).is_retryable());
    }
}
