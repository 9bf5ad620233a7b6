//! [`regent_postgres::driver::Driver`] on tokio-postgres + deadpool:
//! connections (each driven by a task of its own, so a connection that ends
//! by itself is seen at once), parameter binding, row decoding and errors.
//! No protocol logic lives here.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use futures_util::StreamExt;
use regent_postgres::TxExec;
use regent_postgres::driver::{
    CloseHook, Conn, DbError, Driver, Heard, Listener, OpenSpec, Param, Row, Value,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, Config, GenericClient, SimpleQueryMessage, Statement};

use crate::connect::{Connector, MessageStream};
use crate::error::describe;

/// The tokio-postgres driver: the deadpool pool, the connection config it
/// was built from, and how to connect (TLS included).
#[derive(Clone)]
pub struct TokioPgDriver {
    pub(crate) pool: Pool,
    pub(crate) config: Config,
    pub(crate) connector: Connector,
}

impl std::fmt::Debug for TokioPgDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioPgDriver").finish_non_exhaustive()
    }
}

impl TokioPgDriver {
    async fn connect(&self, spec: &OpenSpec) -> Result<(Client, MessageStream), DbError> {
        let base = match &spec.url {
            // Lease mode's direct listener (checked when the backend was built).
            Some(url) => url
                .parse::<Config>()
                .map_err(|e| DbError::other(format!("invalid listener URL: {}", describe(&e))))?,
            None => self.config.clone(),
        };
        (self.connector)(connect_config(&base, spec))
            .await
            .map_err(|e| db_error(&e))
    }
}

/// The config of a dedicated connection: `base` with the spec's
/// application name, client-side keepalives, connect timeout (unless
/// `base` has one) and startup options (appended to `base`'s).
fn connect_config(base: &Config, spec: &OpenSpec) -> Config {
    {
        let mut config = base.clone();
        config.application_name(&spec.application_name);
        if let Some((idle, interval, count)) = spec.keepalives {
            // Client side: notice a vanished server within seconds.
            config
                .keepalives(true)
                .keepalives_idle(idle)
                .keepalives_interval(interval)
                .keepalives_retries(count);
        }
        if base.get_connect_timeout().is_none() {
            config.connect_timeout(spec.connect_timeout);
        }
        if !spec.startup_gucs.is_empty() {
            config.options(regent_postgres::startup_options(
                base.get_options(),
                &spec.startup_gucs,
            ));
        }
        config
    }
}

/// Maps a tokio-postgres error to the engine's [`DbError`].
pub(crate) fn db_error(e: &tokio_postgres::Error) -> DbError {
    let message = describe(e);
    match e.code() {
        Some(code) => DbError::server(code.code(), message),
        None if e.is_closed() || io_failure(e) => DbError::lost(message),
        None => DbError::other(message),
    }
}

/// Whether an IO error is among `e`'s causes (the socket broke).
fn io_failure(e: &tokio_postgres::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

fn params_of(params: &[Param]) -> Vec<Box<dyn ToSql + Sync + Send>> {
    params
        .iter()
        .map(|p| -> Box<dyn ToSql + Sync + Send> {
            match p.clone() {
                Param::Text(v) => Box::new(v),
                Param::OptText(v) => Box::new(v),
                Param::Int4(v) => Box::new(v),
                Param::Int8(v) => Box::new(v),
                Param::OptInt8(v) => Box::new(v),
                Param::TextArray(v) => Box::new(v),
                Param::Int2Array(v) => Box::new(v),
                Param::Int4Array(v) => Box::new(v),
                Param::Int8Array(v) => Box::new(v),
            }
        })
        .collect()
}

/// Each parameter with the PostgreSQL type the engine's statements cast it
/// to, for `query_typed` (which sends no separate Prepare round trip).
fn typed_params(params: &[Param]) -> Vec<(Box<dyn ToSql + Sync + Send>, Type)> {
    params_of(params)
        .into_iter()
        .zip(params.iter().map(param_type))
        .collect()
}

/// The PostgreSQL type of a [`Param`] (as each statement casts it).
fn param_type(p: &Param) -> Type {
    match p {
        Param::Text(_) | Param::OptText(_) => Type::TEXT,
        Param::Int4(_) => Type::INT4,
        Param::Int8(_) | Param::OptInt8(_) => Type::INT8,
        Param::TextArray(_) => Type::TEXT_ARRAY,
        Param::Int2Array(_) => Type::INT2_ARRAY,
        Param::Int4Array(_) => Type::INT4_ARRAY,
        Param::Int8Array(_) => Type::INT8_ARRAY,
    }
}

/// Decodes a row by column type into the engine's [`Row`].
fn decode(row: &tokio_postgres::Row) -> Result<Row, DbError> {
    let mut columns = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let bad = |e: tokio_postgres::Error| DbError::other(format!("column {}: {e}", col.name()));
        let ty = col.type_();
        let value = if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)
                .map_err(bad)?
                .map(Value::Bool)
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)
                .map_err(bad)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)
                .map_err(bad)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)
                .map_err(bad)?
                .map(Value::Int)
        } else if [Type::TEXT, Type::VARCHAR, Type::NAME, Type::BPCHAR].contains(ty) {
            row.try_get::<_, Option<String>>(i)
                .map_err(bad)?
                .map(Value::Text)
        } else if [Type::TEXT_ARRAY, Type::VARCHAR_ARRAY, Type::NAME_ARRAY].contains(ty) {
            row.try_get::<_, Option<Vec<String>>>(i)
                .map_err(bad)?
                .map(Value::TextArray)
        } else {
            // Anything else (`void` of `pg_notify`, ...) is not read.
            None
        };
        columns.push((col.name().to_owned(), value.unwrap_or(Value::Null)));
    }
    Ok(Row::new(columns))
}

async fn query_on(
    client: &Client,
    statement: &Statement,
    ps: &[Param],
) -> Result<Vec<Row>, DbError> {
    let owned = params_of(ps);
    let refs: Vec<&(dyn ToSql + Sync)> = owned
        .iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client
        .query(statement, &refs)
        .await
        .map_err(|e| db_error(&e))?;
    rows.iter().map(decode).collect()
}

async fn simple_on(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, DbError> {
    let messages = client.simple_query(sql).await.map_err(|e| db_error(&e))?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// A dedicated tokio-postgres connection and the task driving it.
pub struct TokioPgConn {
    client: Client,
    driver: JoinHandle<()>,
    prepared: HashMap<String, Statement>,
}

impl std::fmt::Debug for TokioPgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioPgConn")
            .field("closed", &self.client.is_closed())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Conn for TokioPgConn {
    async fn simple(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, DbError> {
        simple_on(&self.client, sql).await
    }

    async fn query(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Row>, DbError> {
        let statement = match self.prepared.get(sql) {
            Some(s) => s.clone(),
            None => {
                let s = self.client.prepare(sql).await.map_err(|e| db_error(&e))?;
                self.prepared.insert(sql.to_owned(), s.clone());
                s
            }
        };
        query_on(&self.client, &statement, params).await
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    async fn close(self) {
        let TokioPgConn {
            client, mut driver, ..
        } = self;
        drop(client); // ends the connection future: Terminate, then close
        if tokio::time::timeout(Duration::from_secs(1), &mut driver)
            .await
            .is_err()
        {
            driver.abort();
        }
    }
}

/// Drives a connection until it ends, then tells `on_close` why.
async fn drive(mut stream: MessageStream, on_close: CloseHook) {
    let reason = loop {
        match stream.next().await {
            Some(Ok(AsyncMessage::Notice(notice))) => {
                tracing::debug!(
                    severity = notice.severity(),
                    message = notice.message(),
                    "notice on a regent connection"
                );
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("the session's connection failed: {}", describe(&e)),
            None => break "the server closed the session's connection".to_owned(),
        }
    };
    drop(stream);
    on_close(reason);
}

enum Incoming {
    Payload(String),
    Closed(String),
}

/// A listening connection: the client (kept so the connection stays open)
/// and the notifications its driving task forwards.
pub struct TokioPgListener {
    _client: Client,
    rx: mpsc::UnboundedReceiver<Incoming>,
}

impl std::fmt::Debug for TokioPgListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioPgListener").finish_non_exhaustive()
    }
}

#[async_trait]
impl Listener for TokioPgListener {
    async fn recv(&mut self) -> Result<Heard, DbError> {
        match self.rx.recv().await {
            Some(Incoming::Payload(p)) => Ok(Heard::Payload(p)),
            Some(Incoming::Closed(reason)) => Err(DbError::lost(reason)),
            None => Err(DbError::lost("the release listener's task ended")),
        }
    }
}

async fn forward(mut stream: MessageStream, channel: String, tx: mpsc::UnboundedSender<Incoming>) {
    let reason = loop {
        match stream.next().await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if n.channel() == channel
                    && tx.send(Incoming::Payload(n.payload().to_owned())).is_err()
                {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                break format!("the release listener's connection failed: {}", describe(&e));
            }
            None => break "the server closed the release listener's connection".to_owned(),
        }
    };
    let _ = tx.send(Incoming::Closed(reason));
}

#[async_trait]
impl Driver for TokioPgDriver {
    type Conn = TokioPgConn;
    type Listener = TokioPgListener;

    async fn open(&self, spec: &OpenSpec, on_close: CloseHook) -> Result<TokioPgConn, DbError> {
        let (client, stream) = self.connect(spec).await?;
        let driver = tokio::spawn(drive(stream, on_close));
        Ok(TokioPgConn {
            client,
            driver,
            prepared: HashMap::new(),
        })
    }

    async fn pool_query(&self, sql: &str, params: &[Param]) -> Result<Vec<Row>, DbError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| DbError::other(format!("no pooled connection: {}", describe(&e))))?;
        let statement = client.prepare_cached(sql).await.map_err(|e| db_error(&e))?;
        query_on(&client, &statement, params).await
    }

    /// `query_typed`: an unnamed statement with explicit parameter types,
    /// Parse/Bind/Describe/Execute/Sync in one round trip, so a transaction
    /// pooler cannot move it between server connections half-way and no
    /// named statement is left on a server connection. (deadpool's
    /// `prepare_cached` would be unsafe there: its named statements live on
    /// one server connection, while the pooler hands out any.)
    async fn pool_query_pooler_safe(
        &self,
        sql: &str,
        params: &[Param],
    ) -> Result<Vec<Row>, DbError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| DbError::other(format!("no pooled connection: {}", describe(&e))))?;
        let owned = typed_params(params);
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = owned
            .iter()
            .map(|(b, t)| (b.as_ref() as &(dyn ToSql + Sync), t.clone()))
            .collect();
        let rows = client
            .query_typed(sql, &typed)
            .await
            .map_err(|e| db_error(&e))?;
        rows.iter().map(decode).collect()
    }

    async fn listen(
        &self,
        spec: &OpenSpec,
        channel: &str,
        listen_sql: &str,
    ) -> Result<TokioPgListener, DbError> {
        let (client, stream) = self.connect(spec).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(forward(stream, channel.to_owned(), tx));
        client
            .batch_execute(listen_sql)
            .await
            .map_err(|e| db_error(&e))?;
        Ok(TokioPgListener {
            _client: client,
            rx,
        })
    }
}

/// A client (a pooled connection, a transaction) that a fence check runs
/// on.
pub(crate) struct OnClient<'a, C>(pub(crate) &'a C);

#[async_trait]
impl<C: GenericClient + Sync> TxExec for OnClient<'_, C> {
    async fn tx_simple(&mut self, sql: &str) -> Result<(), DbError> {
        self.0.batch_execute(sql).await.map_err(|e| db_error(&e))
    }

    async fn tx_query(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Row>, DbError> {
        let owned = params_of(params);
        let refs: Vec<&(dyn ToSql + Sync)> = owned
            .iter()
            .map(|b| b.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = self.0.query(sql, &refs).await.map_err(|e| db_error(&e))?;
        rows.iter().map(decode).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_config_sets_name_keepalives_and_options() {
        let mut base = Config::new();
        base.options("-c search_path=x");
        let spec = OpenSpec {
            application_name: "regent".into(),
            startup_gucs: vec![
                ("statement_timeout", "5000".into()),
                ("tcp_keepalives_count", "3".into()),
            ],
            keepalives: Some((Duration::from_secs(5), Duration::from_secs(2), 3)),
            connect_timeout: Duration::from_secs(7),
            url: None,
        };
        let c = connect_config(&base, &spec);
        assert_eq!(c.get_application_name(), Some("regent"));
        let o = c.get_options().unwrap_or_default();
        assert!(
            o.starts_with("-c search_path=x -c statement_timeout=5000"),
            "{o}"
        );
        assert!(o.contains("-c tcp_keepalives_count=3"), "{o}");
        assert!(c.get_keepalives());
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(5));
        assert_eq!(c.get_keepalives_retries(), Some(3));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(7)));
        let bare = OpenSpec {
            startup_gucs: Vec::new(),
            ..spec
        };
        assert_eq!(connect_config(&Config::new(), &bare).get_options(), None);
    }
}
