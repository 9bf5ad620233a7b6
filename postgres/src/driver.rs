//! The small trait a PostgreSQL client library implements so that the one
//! engine in this crate can run on it: open a dedicated connection, run a
//! statement (simple or extended protocol) on it or on a pool, listen for
//! notifications. Values cross the boundary as [`Param`] and [`Value`], so
//! the engine never sees a driver's own types.
//!
//! An adapter (`regent-sqlx`, `regent-tokio-postgres`) implements
//! [`Driver`], [`Conn`] and [`Listener`] and nothing else: every statement,
//! every protocol decision and every error policy lives in the engine.

use std::time::Duration;

use async_trait::async_trait;

/// A statement parameter. Every statement of the engine casts its
/// parameters explicitly (`$1::text`, `$2::int4[]`, ...), so a driver binds
/// each variant as the matching PostgreSQL type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// `text`.
    Text(String),
    /// `text` or `NULL`.
    OptText(Option<String>),
    /// `int4`.
    Int4(i32),
    /// `int8`.
    Int8(i64),
    /// `int8` or `NULL`.
    OptInt8(Option<i64>),
    /// `text[]`.
    TextArray(Vec<String>),
    /// `int2[]`.
    Int2Array(Vec<i16>),
    /// `int4[]`.
    Int4Array(Vec<i32>),
    /// `int8[]`.
    Int8Array(Vec<i64>),
}

/// A column value of a result row. The engine's statements return only
/// `bool`, `int2`/`int4`/`int8`, `text` and `text[]` columns (times come back
/// as `int8` microseconds), so a driver decodes by column type into one of
/// these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// `bool`.
    Bool(bool),
    /// `int2`, `int4` or `int8`.
    Int(i64),
    /// `text` (or `name`, `varchar`).
    Text(String),
    /// `text[]`.
    TextArray(Vec<String>),
}

/// One result row: column names and values, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    columns: Vec<(String, Value)>,
}

/// A column missing or of another type than the engine expects: a bug or a
/// table changed by hand; reported, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column `{column}`: {problem}")]
pub struct ColumnError {
    /// The column asked for.
    pub column: String,
    /// What was wrong with it.
    pub problem: String,
}

impl Row {
    /// A row of `columns`.
    pub fn new(columns: Vec<(String, Value)>) -> Self {
        Self { columns }
    }

    /// The values, in column order.
    pub fn into_values(self) -> impl Iterator<Item = Value> {
        self.columns.into_iter().map(|(_, v)| v)
    }

    /// The value of `column`.
    pub fn value(&self, column: &str) -> Result<&Value, ColumnError> {
        self.columns
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, v)| v)
            .ok_or_else(|| ColumnError {
                column: column.to_owned(),
                problem: "not in the result".to_owned(),
            })
    }

    fn wrong(column: &str, want: &str, got: &Value) -> ColumnError {
        ColumnError {
            column: column.to_owned(),
            problem: format!("expected {want}, got {got:?}"),
        }
    }

    /// An integer column that may be `NULL`.
    pub fn opt_int(&self, column: &str) -> Result<Option<i64>, ColumnError> {
        match self.value(column)? {
            Value::Null => Ok(None),
            Value::Int(i) => Ok(Some(*i)),
            other => Err(Self::wrong(column, "an integer", other)),
        }
    }

    /// A non-`NULL` integer column.
    pub fn int(&self, column: &str) -> Result<i64, ColumnError> {
        self.opt_int(column)?
            .ok_or_else(|| Self::wrong(column, "an integer", &Value::Null))
    }

    /// A text column that may be `NULL`.
    pub fn opt_text(&self, column: &str) -> Result<Option<String>, ColumnError> {
        match self.value(column)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.clone())),
            other => Err(Self::wrong(column, "text", other)),
        }
    }

    /// A non-`NULL` text column.
    pub fn text(&self, column: &str) -> Result<String, ColumnError> {
        self.opt_text(column)?
            .ok_or_else(|| Self::wrong(column, "text", &Value::Null))
    }

    /// A non-`NULL` `bool` column.
    pub fn bool(&self, column: &str) -> Result<bool, ColumnError> {
        match self.value(column)? {
            Value::Bool(b) => Ok(*b),
            other => Err(Self::wrong(column, "a bool", other)),
        }
    }

    /// A non-`NULL` `text[]` column.
    pub fn text_array(&self, column: &str) -> Result<Vec<String>, ColumnError> {
        match self.value(column)? {
            Value::TextArray(v) => Ok(v.clone()),
            other => Err(Self::wrong(column, "text[]", other)),
        }
    }
}

/// A database or connection error, as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DbError {
    /// The SQLSTATE, when the server answered with an error.
    pub sqlstate: Option<String>,
    /// A description for logs and error messages.
    pub message: String,
    /// Whether the connection is known to be unusable now (closed, reset,
    /// an IO or protocol error). A server error answer leaves it `false`.
    pub connection_lost: bool,
}

impl DbError {
    /// An error answered by the server with `sqlstate`; the connection is
    /// still usable.
    pub fn server(sqlstate: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            sqlstate: Some(sqlstate.into()),
            message: message.into(),
            connection_lost: false,
        }
    }

    /// The connection broke (IO, protocol, closed).
    pub fn lost(message: impl Into<String>) -> Self {
        Self {
            sqlstate: None,
            message: message.into(),
            connection_lost: true,
        }
    }

    /// Any other client-side failure (pool exhausted, decoding, timeout in
    /// the driver): no SQLSTATE, connection state unknown but not known
    /// broken.
    pub fn other(message: impl Into<String>) -> Self {
        Self {
            sqlstate: None,
            message: message.into(),
            connection_lost: false,
        }
    }
}

impl From<ColumnError> for DbError {
    fn from(e: ColumnError) -> Self {
        DbError::other(format!("unreadable row: {e}"))
    }
}

/// How the engine wants a dedicated connection opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSpec {
    /// `application_name` of the connection.
    pub application_name: String,
    /// Server settings to pass as startup options (`-c name=value`). Empty
    /// when the engine applies them with `SET` after connecting.
    pub startup_gucs: Vec<(&'static str, String)>,
    /// Client-side TCP keepalive: idle time, interval, probes. A driver that
    /// cannot set them on its sockets ignores them (the server-side
    /// settings among `startup_gucs` still apply).
    pub keepalives: Option<(Duration, Duration, u32)>,
    /// Upper bound for establishing the connection.
    pub connect_timeout: Duration,
    /// Connect to this URL instead of the driver's own connection settings
    /// (lease mode's direct listener, past the pooler; see
    /// [`Settings::listener_url`](crate::Settings::listener_url)). The
    /// driver's TLS setup still applies.
    pub url: Option<String>,
}

/// Called by a driver at most once, when it sees a dedicated connection end
/// by itself (the server closed it, the socket broke), with the reason. A
/// driver that cannot see this never calls it; the engine then finds the
/// loss at its next statement.
pub type CloseHook = Box<dyn FnOnce(String) + Send>;

/// A dedicated connection, used by one call at a time.
#[async_trait]
pub trait Conn: Send + 'static {
    /// Runs `sql` (possibly several statements) with the simple query
    /// protocol and returns every row of every statement, values as text.
    async fn simple(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, DbError>;

    /// Runs one statement with the extended protocol. A driver may prepare
    /// and cache it per connection.
    async fn query(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Row>, DbError>;

    /// Whether the driver already knows the connection is closed.
    fn is_closed(&self) -> bool;

    /// Closes the connection (telling the server, within a short bound).
    async fn close(self);
}

/// What a [`Listener`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A notification on the channel, with its payload.
    Payload(String),
    /// The driver reconnected and listens again by itself; notifications
    /// sent meanwhile are lost.
    Reconnected,
}

/// A connection listening on one channel.
#[async_trait]
pub trait Listener: Send + 'static {
    /// The next notification. `Err` means the connection is gone; the engine
    /// opens a new listener.
    async fn recv(&mut self) -> Result<Heard, DbError>;
}

/// A PostgreSQL client library, as the engine uses it.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// A dedicated connection.
    type Conn: Conn;
    /// A listening connection.
    type Listener: Listener;

    /// Opens a dedicated connection outside any pool. `on_close` is called
    /// if the driver sees the connection end by itself.
    async fn open(&self, spec: &OpenSpec, on_close: CloseHook) -> Result<Self::Conn, DbError>;

    /// Runs one statement (one autocommit transaction) on a pooled
    /// connection. A driver may prepare and cache it per connection.
    async fn pool_query(&self, sql: &str, params: &[Param]) -> Result<Vec<Row>, DbError>;

    /// Runs one statement as one transaction on a pooled connection, in a
    /// way that is safe behind a transaction pooler (PgBouncer
    /// `pool_mode=transaction`), which hands each transaction — and each
    /// round trip outside one — whatever server connection is free: no
    /// named prepared statement, and nothing split across round trips
    /// outside a transaction (an unnamed statement parsed in one round trip
    /// and bound in the next can land on another server connection). For
    /// example: Parse, Bind, Describe, Execute and Sync in one round trip
    /// (tokio-postgres' `query_typed`), or the statement inside an
    /// explicit `BEGIN` … `COMMIT`. Lease mode runs every statement with it.
    async fn pool_query_pooler_safe(
        &self,
        sql: &str,
        params: &[Param],
    ) -> Result<Vec<Row>, DbError>;

    /// Opens a dedicated connection with `spec` and runs `LISTEN` for
    /// `channel` on it (`listen_sql` is the statement to run).
    async fn listen(
        &self,
        spec: &OpenSpec,
        channel: &str,
        listen_sql: &str,
    ) -> Result<Self::Listener, DbError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_decode_by_name_and_type() {
        let row = Row::new(vec![
            ("a".into(), Value::Int(3)),
            ("b".into(), Value::Null),
            ("c".into(), Value::Text("x".into())),
            ("d".into(), Value::Bool(true)),
            ("e".into(), Value::TextArray(vec!["r".into()])),
        ]);
        assert_eq!(row.int("a"), Ok(3));
        assert_eq!(row.opt_int("b"), Ok(None));
        assert!(row.int("b").is_err());
        assert_eq!(row.text("c").as_deref(), Ok("x"));
        assert!(
            row.text("a")
                .unwrap_err()
                .to_string()
                .contains("expected text")
        );
        assert_eq!(row.bool("d"), Ok(true));
        assert_eq!(row.text_array("e"), Ok(vec!["r".to_owned()]));
        assert!(
            row.value("zz")
                .unwrap_err()
                .to_string()
                .contains("not in the result")
        );
    }
}
