//! Error types of the crate, and the mapping of tokio-postgres and
//! deadpool errors to [`BackendError`].

use deadpool_postgres::{BuildError, PoolError};
use regent_core::{BackendError, Term};
use regent_postgres::{self as postgres, IdentError, OptionError, Stale, TableName};
use thiserror::Error;

/// Building, connecting or migrating a
/// [`TokioPgBackend`](crate::TokioPgBackend) failed.
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
    #[error(
        "invalid database URL: {}; expected postgres://user[:password]@host[:port]/database \
         or a key=value connection string",
        describe(.0)
    )]
    Url(#[source] tokio_postgres::Error),
    /// The connection pool could not be built.
    #[error("could not build the connection pool: {}", describe(.0))]
    Pool(#[source] BuildError),
    /// PostgreSQL could not be reached.
    #[error(
        "could not connect to PostgreSQL: {}; check that the server runs and that the \
         URL's host, port, user and database are right",
        describe(.0)
    )]
    Connect(#[source] PoolError),
    /// `migrate()` failed.
    #[error(
        "creating the lease table {table} failed: {}; the connecting role needs \
         CREATE on the schema (or apply postgres/sql/regent_leases.sql from the regent sources as a privileged user)",
        describe(&**.source)
    )]
    Migrate {
        /// The table being created.
        table: TableName,
        /// The database or pool error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why [`TokioPgBackend::fenced`](crate::TokioPgBackend::fenced) refused to
/// open a fenced transaction.
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
    #[error(
        "fenced transaction could not be opened: {}; nothing was written, retry later",
        describe(.0)
    )]
    Database(#[source] tokio_postgres::Error),
    /// No pooled connection could be had; nothing was written.
    #[error(
        "fenced transaction could not get a pooled connection: {}; nothing was written, \
         retry later (or enlarge the pool)",
        describe(.0)
    )]
    Pool(#[source] PoolError),
}

/// `e` and its chain of causes, each once: tokio-postgres displays only
/// the kind of an error ("db error", "error connecting to server") and
/// keeps the server's message or the OS error in its source.
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// The SQLSTATE of a database error, if `e` is one.
pub(crate) fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// A message for an error that no retry can fix, if `e` is one.
pub(crate) fn misconfiguration(e: &tokio_postgres::Error, table: &TableName) -> Option<String> {
    postgres::misconfiguration(sqlstate(e), table, &describe(e))
}

/// Maps an error of a statement on the lock session. The caller drops the
/// session, so every lock on it is gone.
pub(crate) fn session_error(e: &tokio_postgres::Error, table: &TableName) -> BackendError {
    postgres::session_error(sqlstate(e), table, describe(e))
}

/// Maps an error of a statement on the shared pool (no locks involved).
pub(crate) fn pool_error(e: &tokio_postgres::Error, table: &TableName) -> BackendError {
    postgres::pool_error(sqlstate(e), table, describe(e))
}

/// Maps a failure to get a connection from the pool.
pub(crate) fn pool_get_error(e: &PoolError, table: &TableName) -> BackendError {
    match e {
        PoolError::Backend(e) => pool_error(e, table),
        PoolError::Closed => BackendError::Misconfigured(
            "the deadpool connection pool given to regent was closed; build the backend \
             over an open pool"
                .to_owned(),
        ),
        other => BackendError::Transient(format!("no pooled connection: {}", describe(other))),
    }
}

/// Maps an error while opening a session: nothing was held yet.
pub(crate) fn connect_error(e: &tokio_postgres::Error, table: &TableName) -> BackendError {
    postgres::connect_error(sqlstate(e), table, &describe(e))
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
        let closed = pool_get_error(&PoolError::Closed, &TableName::default());
        assert!(!closed.is_retryable());
    }
}
