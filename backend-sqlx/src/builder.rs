//! [`SqlxBackendBuilder`]: options that do not depend on a namespace.

use std::str::FromStr;
use std::time::Duration;

use regent_postgres::{InvalidOptions, Options, Settings, require};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::SqlxBackend;
use crate::error::SetupError;

pub use regent_postgres::{Mode, SessionSettings};

/// Builds a [`SqlxBackend`]. Every option has a default; none depends on a
/// namespace, so one backend (one node) serves any number of namespaces and
/// roles.
///
/// ```no_run
/// # async fn demo() -> Result<(), regent_sqlx::SetupError> {
/// use std::time::Duration;
/// use regent_sqlx::SqlxBackend;
///
/// let backend = SqlxBackend::builder()
///     .schema("ops")
///     .table("leases")
///     .application_name("billing-worker")
///     .statement_timeout(Duration::from_secs(2))
///     .connect("postgres://postgres@127.0.0.1:5432/app")
///     .await?;
/// backend.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqlxBackendBuilder {
    options: Options,
    max_pool_connections: u32,
    connect_timeout: Duration,
}

impl Default for SqlxBackendBuilder {
    fn default() -> Self {
        Self {
            options: Options::default(),
            max_pool_connections: 4,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl SqlxBackendBuilder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    regent_postgres::settings_setters!();

    /// Size of the pool [`SqlxBackendBuilder::connect`] creates (used for
    /// `list`, `read`, notifications, preemption and fenced transactions; the
    /// lock session is separate). Default 4.
    pub fn max_pool_connections(mut self, n: u32) -> Self {
        self.max_pool_connections = n;
        self
    }

    /// How long [`SqlxBackendBuilder::connect`] waits for its first
    /// connection, and the pool for a free connection later. Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    fn validate(self) -> Result<(Settings, u32), SetupError> {
        let settings = self.options.validate()?;
        if let Some(url) = &settings.listener_url {
            PgConnectOptions::from_str(url.as_str()).map_err(SetupError::Url)?;
        }
        require(
            self.connect_timeout >= Duration::from_millis(1),
            "connect_timeout",
            "must be at least 1 ms",
        )
        .and_then(|()| {
            require(
                self.max_pool_connections >= 1,
                "max_pool_connections",
                "must be at least 1",
            )
        })
        .map_err(InvalidOptions::from)?;
        Ok((settings, self.max_pool_connections))
    }

    /// Builds a backend over an existing pool. The lock session is opened
    /// later (by [`Lock::connect`](regent_core::Lock::connect) or the first
    /// call) with the pool's connect options, outside the pool.
    pub fn build(self, pool: PgPool) -> Result<SqlxBackend, SetupError> {
        let (settings, _) = self.validate()?;
        Ok(SqlxBackend::from_parts(pool, settings))
    }

    /// Connects a new pool to `url` and builds a backend over it. One
    /// connection is made first, so an unreachable server or a bad URL is
    /// an error here, within [`SqlxBackendBuilder::connect_timeout`].
    pub async fn connect(self, url: &str) -> Result<SqlxBackend, SetupError> {
        let timeout = self.connect_timeout;
        let (settings, max) = self.validate()?;
        let options = PgConnectOptions::from_str(url).map_err(SetupError::Url)?;
        match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await {
            Ok(Ok(probe)) => {
                let _ = probe.close().await;
            }
            Ok(Err(e)) => return Err(SetupError::Connect(e)),
            Err(_) => return Err(SetupError::ConnectTimeout(timeout)),
        }
        let pool = PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(timeout)
            .connect_lazy_with(options);
        Ok(SqlxBackend::from_parts(pool, settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(b: SqlxBackendBuilder) -> String {
        match b.validate() {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn options_are_validated() {
        let b = SqlxBackendBuilder::new;
        assert!(b().validate().is_ok());
        assert!(err(b().table("a;b")).contains("table"));
        assert!(err(b().schema("")).contains("schema"));
        assert!(err(b().statement_timeout(Duration::ZERO)).contains("statement_timeout"));
        let z = Duration::ZERO;
        assert!(err(b().tcp_keepalives(z, z, 1)).contains("tcp_keepalives"));
        assert!(err(b().application_name("")).contains("application_name"));
        assert!(err(b().max_pool_connections(0)).contains("max_pool_connections"));
        assert!(err(b().connect_timeout(Duration::ZERO)).contains("connect_timeout"));
        assert!(err(b().fenced_idle_timeout(Duration::ZERO)).contains("fenced_idle_timeout"));
        // A listener URL is lease mode's; session mode refuses it.
        let direct = "postgres://u@127.0.0.1:5432/db";
        let e = err(b().listener_url(direct));
        assert!(
            e.contains("listener_url") && e.contains("lease_mode()"),
            "{e}"
        );
        assert!(b().lease_mode().listener_url(direct).validate().is_ok());
        assert!(
            err(b().lease_mode().listener_url("postgres://h:notaport/x"))
                .contains("invalid database URL")
        );
        assert_eq!(b().lease_mode().validate().unwrap().0.mode, Mode::Lease);
        assert!(
            b().fenced_idle_timeout(Duration::from_millis(300))
                .validate()
                .is_ok()
        );
    }
}
