//! The error type of building and connecting a backend.

use deadpool_postgres::{BuildError, PoolError};
use regent_postgres::InvalidOptions;
use thiserror::Error;

/// Building, connecting or migrating a
/// [`TokioPgBackend`](crate::TokioPgBackend) failed.
#[derive(Debug, Error)]
pub enum SetupError {
    /// A table name or an option cannot work; the message names it and
    /// the rule.
    #[error(transparent)]
    Invalid(#[from] InvalidOptions),
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
    #[error(transparent)]
    Migrate(#[from] regent_postgres::MigrateError),
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
