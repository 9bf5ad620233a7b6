//! [`regent_postgres::driver::Driver`] on sqlx: connections, parameter
//! binding, row decoding and errors. No protocol logic lives here.

use async_trait::async_trait;
use regent_postgres::TxExec;
use regent_postgres::driver::{
    CloseHook, Conn, DbError, Driver, Heard, Listener, OpenSpec, Param, Row, Value,
};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgListener, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Column, Connection, PgConnection, PgPool, Postgres, Row as _, TypeInfo};

/// The sqlx driver: the shared pool and the connect options it was built
/// from (for the dedicated session and listener connections).
#[derive(Debug, Clone)]
pub struct SqlxDriver {
    pub(crate) pool: PgPool,
}

impl SqlxDriver {
    fn options(&self, spec: &OpenSpec) -> Result<PgConnectOptions, DbError> {
        let base = match &spec.url {
            Some(url) => listener_options(url)?,
            None => self.pool.connect_options().as_ref().clone(),
        };
        let opts = base.application_name(&spec.application_name);
        // Appended to any `options` the URL already has.
        Ok(opts.options(spec.startup_gucs.iter().map(|(k, v)| (*k, v.as_str()))))
    }
}

/// The connect options of a listener URL (checked when the backend is
/// built, so this fails only for a URL changed since).
pub(crate) fn listener_options(url: &str) -> Result<PgConnectOptions, DbError> {
    use std::str::FromStr;
    PgConnectOptions::from_str(url)
        .map_err(|e| DbError::other(format!("invalid listener URL: {e}")))
}

/// Maps a sqlx error to the engine's [`DbError`].
pub(crate) fn db_error(e: sqlx::Error) -> DbError {
    match &e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => DbError::server(code.into_owned(), e.to_string()),
            None => DbError::other(e.to_string()),
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::PoolClosed => DbError::lost(e.to_string()),
        _ => DbError::other(e.to_string()),
    }
}

fn bind<'q>(
    mut q: Query<'q, Postgres, PgArguments>,
    params: &[Param],
) -> Query<'q, Postgres, PgArguments> {
    for p in params {
        q = match p.clone() {
            Param::Text(v) => q.bind(v),
            Param::OptText(v) => q.bind(v),
            Param::Int4(v) => q.bind(v),
            Param::Int8(v) => q.bind(v),
            Param::OptInt8(v) => q.bind(v),
            Param::TextArray(v) => q.bind(v),
            Param::Int2Array(v) => q.bind(v),
            Param::Int4Array(v) => q.bind(v),
            Param::Int8Array(v) => q.bind(v),
        };
    }
    q
}

/// Decodes a row by column type into the engine's [`Row`].
fn decode(row: &PgRow) -> Result<Row, DbError> {
    let mut columns = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let ty = col.type_info().name().to_owned();
        let bad = |e: sqlx::Error| DbError::other(format!("column {}: {e}", col.name()));
        let value = match ty.as_str() {
            "BOOL" => row
                .try_get::<Option<bool>, _>(i)
                .map_err(bad)?
                .map(Value::Bool),
            "INT2" => row
                .try_get::<Option<i16>, _>(i)
                .map_err(bad)?
                .map(|v| Value::Int(v.into())),
            "INT4" => row
                .try_get::<Option<i32>, _>(i)
                .map_err(bad)?
                .map(|v| Value::Int(v.into())),
            "INT8" => row
                .try_get::<Option<i64>, _>(i)
                .map_err(bad)?
                .map(Value::Int),
            "TEXT" | "VARCHAR" | "NAME" | "BPCHAR" => row
                .try_get::<Option<String>, _>(i)
                .map_err(bad)?
                .map(Value::Text),
            "TEXT[]" | "VARCHAR[]" | "NAME[]" => row
                .try_get::<Option<Vec<String>>, _>(i)
                .map_err(bad)?
                .map(Value::TextArray),
            // Anything else (`void` of `pg_notify`, ...) is not read.
            _ => None,
        };
        columns.push((col.name().to_owned(), value.unwrap_or(Value::Null)));
    }
    Ok(Row::new(columns))
}

/// A row's values as text (for simple-protocol results).
fn as_text(row: Row) -> Vec<Option<String>> {
    row.into_values()
        .map(|v| match v {
            Value::Null => None,
            Value::Bool(b) => Some(if b { "t" } else { "f" }.to_owned()),
            Value::Int(i) => Some(i.to_string()),
            Value::Text(s) => Some(s),
            Value::TextArray(a) => Some(format!("{{{}}}", a.join(","))),
        })
        .collect()
}

/// Runs one statement on `conn`: a named statement cached on the
/// connection when `persistent`, else an unnamed one (safe inside a
/// transaction behind a transaction pooler, which keeps the transaction on
/// one server connection but not the connection's named statements).
async fn query_on(
    conn: &mut PgConnection,
    sql: &str,
    params: &[Param],
    persistent: bool,
) -> Result<Vec<Row>, DbError> {
    let q = bind(
        sqlx::query(AssertSqlSafe(sql.to_owned())).persistent(persistent),
        params,
    );
    let rows = q.fetch_all(conn).await.map_err(db_error)?;
    rows.iter().map(decode).collect()
}

async fn simple_on(
    conn: &mut PgConnection,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, DbError> {
    let rows = sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .fetch_all(conn)
        .await
        .map_err(db_error)?;
    rows.iter().map(|r| decode(r).map(as_text)).collect()
}

/// A dedicated sqlx connection.
#[derive(Debug)]
pub struct SqlxConn(PgConnection);

#[async_trait]
impl Conn for SqlxConn {
    async fn simple(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, DbError> {
        simple_on(&mut self.0, sql).await
    }

    async fn query(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Row>, DbError> {
        query_on(&mut self.0, sql, params, true).await
    }

    fn is_closed(&self) -> bool {
        // sqlx cannot tell without a round trip; the next statement finds out.
        false
    }

    async fn close(self) {
        let _ = self.0.close().await;
    }
}

/// A sqlx `PgListener` on one channel.
pub struct SqlxListener(PgListener);

impl std::fmt::Debug for SqlxListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlxListener").finish_non_exhaustive()
    }
}

#[async_trait]
impl Listener for SqlxListener {
    async fn recv(&mut self) -> Result<Heard, DbError> {
        match self.0.try_recv().await {
            Ok(Some(n)) => Ok(Heard::Payload(n.payload().to_owned())),
            // The connection dropped and PgListener reconnected (it re-ran
            // LISTEN).
            Ok(None) => Ok(Heard::Reconnected),
            Err(e) => Err(db_error(e)),
        }
    }
}

#[async_trait]
impl Driver for SqlxDriver {
    type Conn = SqlxConn;
    type Listener = SqlxListener;

    async fn open(&self, spec: &OpenSpec, _on_close: CloseHook) -> Result<SqlxConn, DbError> {
        // sqlx gives no signal when a connection closes by itself; the
        // engine finds out at the next statement (lock validation).
        let conn = PgConnection::connect_with(&self.options(spec)?)
            .await
            .map_err(db_error)?;
        Ok(SqlxConn(conn))
    }

    async fn pool_query(&self, sql: &str, params: &[Param]) -> Result<Vec<Row>, DbError> {
        let q = bind(sqlx::query(AssertSqlSafe(sql.to_owned())), params);
        let rows = q.fetch_all(&self.pool).await.map_err(db_error)?;
        rows.iter().map(decode).collect()
    }

    /// The statement inside an explicit transaction, unnamed
    /// (`persistent(false)`). sqlx sends even an unnamed statement in two
    /// round trips — Parse/Describe/Sync, then Bind/Execute/Sync (see
    /// `prepare` in sqlx-postgres 0.9's `connection/executor.rs`) — and a
    /// transaction pooler may hand the second to another server connection,
    /// where the statement does not exist (or, worse, another client's
    /// unnamed statement does). Inside `BEGIN` … `COMMIT` the pooler keeps
    /// one server connection throughout; `persistent(false)` leaves no named
    /// statement behind on it. (sqlx looks up its per-connection statement
    /// cache by text even for an unnamed query: the engine never runs these
    /// statements through the persistent path, so nothing is cached.)
    async fn pool_query_pooler_safe(
        &self,
        sql: &str,
        params: &[Param],
    ) -> Result<Vec<Row>, DbError> {
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let q = bind(
            sqlx::query(AssertSqlSafe(sql.to_owned())).persistent(false),
            params,
        );
        let rows = q.fetch_all(&mut *tx).await.map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        rows.iter().map(decode).collect()
    }

    async fn listen(
        &self,
        spec: &OpenSpec,
        channel: &str,
        _listen_sql: &str,
    ) -> Result<SqlxListener, DbError> {
        // A pool of one connection, used by PgListener only to reconnect
        // (PgListener runs LISTEN itself, again after each reconnect).
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(self.options(spec)?);
        let mut listener = PgListener::connect_with(&pool).await.map_err(db_error)?;
        listener.ignore_pool_close_event(true);
        listener.listen(channel).await.map_err(db_error)?;
        Ok(SqlxListener(listener))
    }
}

/// A sqlx connection (a transaction derefs to one) that a fence check runs
/// on.
pub(crate) struct OnConn<'a>(pub(crate) &'a mut PgConnection);

#[async_trait]
impl TxExec for OnConn<'_> {
    async fn tx_simple(&mut self, sql: &str) -> Result<(), DbError> {
        simple_on(self.0, sql).await.map(|_| ())
    }

    async fn tx_query(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Row>, DbError> {
        // Unnamed: the fence check also works behind a transaction pooler.
        query_on(self.0, sql, params, false).await
    }
}
