//! The error type of building and connecting a backend.

use regent_postgres::InvalidOptions;
use thiserror::Error;

/// Building, connecting or migrating a [`SqlxBackend`](crate::SqlxBackend)
/// failed.
#[derive(Debug, Error)]
pub enum SetupError {
    /// A table name or an option cannot work; the message names it and
    /// the rule.
    #[error(transparent)]
    Invalid(#[from] InvalidOptions),
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
    #[error(transparent)]
    Migrate(#[from] regent_postgres::MigrateError),
}

#[cfg(test)]
mod tests {
    use regent_postgres::OptionError;

    use super::*;

    #[test]
    fn option_errors_keep_their_message() {
        let opt = OptionError {
            field: "statement_timeout",
            rule: "must be at least 1 ms",
        };
        assert_eq!(
            SetupError::from(InvalidOptions::from(opt)).to_string(),
            opt.to_string()
        );
    }
}
