//! Error types of the crate, and the mapping of sqlx errors to
//! [`BackendError`].

use regent_core::{BackendError, Term};
use regent_postgres::{self as postgres, IdentError, OptionError, Stale, TableName};
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
         CREATE on the schema (or apply postgres/sql/regent_leases.sql from the regent sources as a privileged user)"
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
        "{}",
        Stale::message(.namespace, .role, *.token, .current_holder.as_deref(), *.current_term)
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
    postgres::misconfiguration(sqlstate(e).as_deref(), table, &e.to_string())
}

/// Maps an error of a statement on the lock session. The caller has already
/// dropped the session, so every lock on it is gone.
pub(crate) fn session_error(e: &sqlx::Error, table: &TableName) -> BackendError {
    postgres::session_error(sqlstate(e).as_deref(), table, e.to_string())
}

/// Maps an error of a statement on the shared pool (no locks involved).
pub(crate) fn pool_error(e: &sqlx::Error, table: &TableName) -> BackendError {
    postgres::pool_error(sqlstate(e).as_deref(), table, e.to_string())
}

/// Maps an error while opening a session: nothing was held yet.
pub(crate) fn connect_error(e: &sqlx::Error, table: &TableName) -> BackendError {
    postgres::connect_error(sqlstate(e).as_deref(), table, &e.to_string())
}

impl From<OptionError> for SetupError {
    fn from(e: OptionError) -> Self {
        SetupError::Option {
            field: e.field,
            rule: e.rule,
        }
    }
}

impl From<Stale> for FencedError {
    fn from(s: Stale) -> Self {
        FencedError::Stale {
            namespace: s.namespace,
            role: s.role,
            token: s.token,
            current_holder: s.current_holder,
            current_term: s.current_term,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        // The messages themselves are tested in regent_postgres.
        let stale = Stale {
            namespace: "default".into(),
            role: "r".into(),
            token: Term(3),
            current_holder: None,
            current_term: None,
        };
        assert_eq!(
            FencedError::from(stale.clone()).to_string(),
            stale.to_string()
        );
        let opt = OptionError {
            field: "statement_timeout",
            rule: "must be at least 1 ms",
        };
        assert_eq!(SetupError::from(opt).to_string(), opt.to_string());
        let e = sqlx::Error::Protocol("boom".into());
        let t = TableName::default();
        assert!(session_error(&e, &t).is_session_lost());
        assert!(pool_error(&e, &t).is_retryable());
    }
}
