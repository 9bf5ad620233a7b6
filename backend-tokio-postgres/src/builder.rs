//! [`TokioPgBackendBuilder`]: options that do not depend on a namespace,
//! and the TLS connector.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use regent_postgres::{InvalidOptions, Options, Settings, require};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Config, NoTls, Socket};

use crate::TokioPgBackend;
use crate::connect::connector;
use crate::error::SetupError;

pub use regent_postgres::{Mode, SessionSettings};

/// Builds a [`TokioPgBackend`]. Every option has a default; none depends
/// on a namespace, so one backend (one node) serves any number of namespaces
/// and roles. `T` is the TLS connector ([`NoTls`] unless
/// [`TokioPgBackendBuilder::tls`] is called).
///
/// ```no_run
/// # async fn demo() -> Result<(), regent_tokio_postgres::SetupError> {
/// use std::time::Duration;
/// use regent_tokio_postgres::TokioPgBackend;
///
/// let backend = TokioPgBackend::builder()
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
pub struct TokioPgBackendBuilder<T = NoTls> {
    options: Options,
    max_pool_connections: usize,
    tls: T,
}

impl Default for TokioPgBackendBuilder<NoTls> {
    fn default() -> Self {
        Self {
            options: Options::default(),
            max_pool_connections: 4,
            tls: NoTls,
        }
    }
}

impl TokioPgBackendBuilder<NoTls> {
    /// A builder with the defaults (no TLS).
    pub fn new() -> Self {
        Self::default()
    }
}

impl<T> TokioPgBackendBuilder<T> {
    /// Uses `tls` for every connection the backend opens (the session, the
    /// listeners, and the pool [`TokioPgBackendBuilder::connect`] creates):
    /// any `MakeTlsConnect<Socket>`, such as `postgres_native_tls::MakeTlsConnector`
    /// or `tokio_postgres_rustls::MakeRustlsConnect`. A pool passed to
    /// [`TokioPgBackendBuilder::build`] keeps its own TLS setting.
    pub fn tls<U>(self, tls: U) -> TokioPgBackendBuilder<U> {
        TokioPgBackendBuilder {
            options: self.options,
            max_pool_connections: self.max_pool_connections,
            tls,
        }
    }

    regent_postgres::settings_setters!();

    /// Size of the pool [`TokioPgBackendBuilder::connect`] creates (used for
    /// `list`, `read`, notifications, preemption and fenced transactions; the
    /// lock session is separate). Default 4.
    pub fn max_pool_connections(mut self, n: usize) -> Self {
        self.max_pool_connections = n;
        self
    }

    fn validate(&self) -> Result<Settings, SetupError> {
        let settings = self.options.validate()?;
        if let Some(url) = &settings.listener_url {
            url.as_str().parse::<Config>().map_err(SetupError::Url)?;
        }
        require(
            self.max_pool_connections >= 1,
            "max_pool_connections",
            "must be at least 1",
        )
        .map_err(InvalidOptions::from)?;
        Ok(settings)
    }
}

impl<T> TokioPgBackendBuilder<T>
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + Sync + 'static,
    T::TlsConnect: Send + Sync,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    /// Builds a backend over an existing `pool` (for statements that need no
    /// session) and `config`, from which the node's dedicated lock session
    /// and its notification listeners connect — outside the pool. No
    /// connection is opened yet.
    pub fn build(self, pool: Pool, config: Config) -> Result<TokioPgBackend, SetupError> {
        let settings = self.validate()?;
        Ok(TokioPgBackend::from_parts(
            pool,
            &config,
            settings,
            connector(self.tls),
        ))
    }

    /// Parses `url` (a `postgres://` URL or a `key=value` string), creates a
    /// pool over it with [`RecyclingMethod::Clean`] (which also runs
    /// `pg_advisory_unlock_all()` whenever a connection returns), checks that
    /// the server answers, and builds a backend.
    pub async fn connect(self, url: &str) -> Result<TokioPgBackend, SetupError> {
        let settings = self.validate()?;
        let config: Config = url.parse().map_err(SetupError::Url)?;
        let manager = Manager::from_config(
            config.clone(),
            self.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Clean,
            },
        );
        let wait = settings.call_timeout();
        let pool = Pool::builder(manager)
            .max_size(self.max_pool_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(wait))
            .create_timeout(Some(wait))
            .recycle_timeout(Some(wait))
            .build()
            .map_err(SetupError::Pool)?;
        drop(pool.get().await.map_err(SetupError::Connect)?);
        Ok(TokioPgBackend::from_parts(
            pool,
            &config,
            settings,
            connector(self.tls),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn err(b: TokioPgBackendBuilder) -> String {
        match b.validate() {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn options_are_validated() {
        let b = TokioPgBackendBuilder::new;
        assert!(b().validate().is_ok());
        assert!(err(b().table("a;b")).contains("table"));
        assert!(err(b().schema("")).contains("schema"));
        assert!(err(b().statement_timeout(Duration::ZERO)).contains("statement_timeout"));
        let z = Duration::ZERO;
        assert!(err(b().tcp_keepalives(z, z, 1)).contains("tcp_keepalives"));
        assert!(err(b().application_name("")).contains("application_name"));
        assert!(err(b().max_pool_connections(0)).contains("max_pool_connections"));
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
        assert_eq!(b().lease_mode().validate().unwrap().mode, Mode::Lease);
        assert!(
            b().fenced_idle_timeout(Duration::from_millis(300))
                .validate()
                .is_ok()
        );
    }
}
