//! How database errors map to [`BackendError`]: the SQLSTATEs no retry can
//! fix, and the messages of session, pool and connect failures. Each
//! backend extracts the SQLSTATE and a description from its own error type.

use std::time::Duration;

use crate::{
    SQLSTATE_INSUFFICIENT_PRIVILEGE, SQLSTATE_INVALID_SCHEMA, SQLSTATE_UNDEFINED_TABLE, TableName,
    missing_table_error, privilege_error,
};
use regent_core::BackendError;

/// SQLSTATE `26000`: invalid_sql_statement_name (a prepared statement
/// vanished).
pub const SQLSTATE_INVALID_SQL_STATEMENT_NAME: &str = "26000";

/// SQLSTATE `42703`: undefined_column (a lease table from before a column
/// was added; `migrate()` adds it).
pub const SQLSTATE_UNDEFINED_COLUMN: &str = "42703";

/// A message for an error that no retry can fix, if `sqlstate` is one;
/// `detail` describes the error.
pub fn misconfiguration(sqlstate: Option<&str>, table: &TableName, detail: &str) -> Option<String> {
    match sqlstate? {
        SQLSTATE_UNDEFINED_TABLE | SQLSTATE_INVALID_SCHEMA => Some(missing_table_error(table)),
        SQLSTATE_INSUFFICIENT_PRIVILEGE => Some(privilege_error(table, detail)),
        SQLSTATE_INVALID_SQL_STATEMENT_NAME => Some(format!(
            "{detail}: prepared statements vanished between round trips, which happens behind \
             a connection pooler in transaction mode (PgBouncer `pool_mode=transaction`). {}",
            crate::POOLER_FIXES
        )),
        SQLSTATE_UNDEFINED_COLUMN => Some(format!(
            "{detail}: the lease table {table} was created by an older regent and lacks the \
             `incarnation` column: run `regent migrate` (or call `migrate()` on the backend) \
             once more, or apply postgres/sql/regent_leases.sql again, to add it"
        )),
        // invalid_authorization_specification, invalid_password, unknown database
        "28000" | "28P01" | "3D000" => Some(format!(
            "{detail}: check the user, password and database name in the connection settings"
        )),
        _ => None,
    }
}

/// Maps an error of a statement on the lock session. The caller drops the
/// session, so every lock on it is gone.
pub fn session_error(sqlstate: Option<&str>, table: &TableName, detail: String) -> BackendError {
    match misconfiguration(sqlstate, table, &detail) {
        Some(msg) => BackendError::Misconfigured(msg),
        None => BackendError::SessionLost { reason: detail },
    }
}

/// Maps an error of a statement on the shared pool (no locks involved).
pub fn pool_error(sqlstate: Option<&str>, table: &TableName, detail: String) -> BackendError {
    match misconfiguration(sqlstate, table, &detail) {
        Some(msg) => BackendError::Misconfigured(msg),
        None => BackendError::Transient(detail),
    }
}

/// Maps an error while opening a session: nothing was held yet.
pub fn connect_error(sqlstate: Option<&str>, table: &TableName, detail: &str) -> BackendError {
    match misconfiguration(sqlstate, table, detail) {
        Some(msg) => BackendError::Misconfigured(msg),
        None => BackendError::Transient(format!("could not open the database session: {detail}")),
    }
}

/// The session did not answer a call within `limit`: it is given up.
pub fn no_reply_error(limit: Duration) -> BackendError {
    BackendError::SessionLost {
        reason: format!("no reply on the session within {limit:?}"),
    }
}

/// Opening the session took longer than `limit`.
pub fn open_timeout_error(limit: Duration) -> BackendError {
    BackendError::Transient(format!(
        "opening the database session took longer than {limit:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let t = TableName::default();
        assert!(misconfiguration(None, &t, "x").is_none());
        assert!(misconfiguration(Some("40001"), &t, "x").is_none());
        let missing = misconfiguration(Some(SQLSTATE_UNDEFINED_TABLE), &t, "x").unwrap();
        assert!(missing.contains("regent migrate"), "{missing}");
        let auth = misconfiguration(Some("28P01"), &t, "bad password").unwrap();
        assert!(auth.starts_with("bad password: check the user"), "{auth}");
        let pooled = misconfiguration(Some("26000"), &t, "x").unwrap();
        assert!(pooled.contains("pool_mode=session"), "{pooled}");
        assert!(pooled.contains("lease_mode()"), "{pooled}");
        let old = misconfiguration(Some(SQLSTATE_UNDEFINED_COLUMN), &t, "x").unwrap();
        assert!(
            old.contains("incarnation") && old.contains("migrate"),
            "{old}"
        );
        assert!(session_error(None, &t, "boom".into()).is_session_lost());
        assert!(pool_error(None, &t, "boom".into()).is_retryable());
        assert!(!pool_error(Some("42501"), &t, "denied".into()).is_retryable());
        let c = connect_error(None, &t, "refused");
        assert!(c.is_retryable() && c.to_string().contains("could not open"));
        assert!(no_reply_error(Duration::from_secs(1)).is_session_lost());
        assert!(open_timeout_error(Duration::from_secs(1)).is_retryable());
    }
}
