//! [`SqlxBackendBuilder`]: options that do not depend on a namespace.

use std::str::FromStr;
use std::time::Duration;

use regent_core::postgres::{DEFAULT_SCHEMA, DEFAULT_TABLE, TableName};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::SqlxBackend;
use crate::error::SetupError;

/// How the session's settings (`statement_timeout`, TCP keepalives) reach
/// the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionSettings {
    /// As `-c name=value` startup options (the `options` connection
    /// parameter): no extra round trip. PgBouncer rejects the `options`
    /// parameter unless it is listed in its `ignore_startup_parameters`
    /// (and then ignores it); use [`SessionSettings::SetCommands`] there.
    #[default]
    StartupOptions,
    /// As `SET` commands right after the session connects. Works through
    /// PgBouncer in session mode.
    SetCommands,
}

/// The validated settings shared by every clone of a backend.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) table: TableName,
    pub(crate) application_name: String,
    pub(crate) statement_timeout: Duration,
    pub(crate) keepalives_idle: Duration,
    pub(crate) keepalives_interval: Duration,
    pub(crate) keepalives_count: u32,
    pub(crate) session_settings: SessionSettings,
}

impl Settings {
    /// The GUCs of the session, as `(name, value)` pairs in server units.
    pub(crate) fn session_gucs(&self) -> Vec<(&'static str, String)> {
        let mut gucs = vec![
            (
                "statement_timeout",
                self.statement_timeout.as_millis().to_string(),
            ),
            // PostgreSQL 14+: abort a running statement (a claim waiting on
            // a row lock, say) soon after the client has gone away.
            ("client_connection_check_interval", "1000".to_owned()),
        ];
        gucs.extend(self.keepalive_gucs());
        gucs
    }

    /// The TCP keepalive GUCs (seconds / count).
    pub(crate) fn keepalive_gucs(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "tcp_keepalives_idle",
                self.keepalives_idle.as_secs().to_string(),
            ),
            (
                "tcp_keepalives_interval",
                self.keepalives_interval.as_secs().to_string(),
            ),
            ("tcp_keepalives_count", self.keepalives_count.to_string()),
        ]
    }

    /// How long the client waits for any one call on the session before it
    /// gives the session up: the statement timeout plus slack for the
    /// network, so the server's timeout normally fires first.
    pub(crate) fn call_timeout(&self) -> Duration {
        self.statement_timeout + Duration::from_secs(2)
    }

    /// Connect options of the lock session.
    pub(crate) fn session_options(&self, base: &PgConnectOptions) -> PgConnectOptions {
        let opts = base.clone().application_name(&self.application_name);
        match self.session_settings {
            SessionSettings::StartupOptions => opts.options(self.session_gucs()),
            SessionSettings::SetCommands => opts,
        }
    }

    /// Connect options of the notification listener.
    pub(crate) fn listen_options(&self, base: &PgConnectOptions) -> PgConnectOptions {
        let mut name = format!("{}:listen", self.application_name);
        while name.len() > 63 {
            name.pop();
        }
        let opts = base.clone().application_name(&name);
        match self.session_settings {
            SessionSettings::StartupOptions => opts.options(self.keepalive_gucs()),
            SessionSettings::SetCommands => opts,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            table: TableName::default(),
            application_name: "regent".to_owned(),
            statement_timeout: Duration::from_secs(5),
            keepalives_idle: Duration::from_secs(5),
            keepalives_interval: Duration::from_secs(2),
            keepalives_count: 3,
            session_settings: SessionSettings::StartupOptions,
        }
    }
}

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
    schema: String,
    table: String,
    settings: Settings,
    max_pool_connections: u32,
    connect_timeout: Duration,
}

impl Default for SqlxBackendBuilder {
    fn default() -> Self {
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
            table: DEFAULT_TABLE.to_owned(),
            settings: Settings::default(),
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

    /// Schema of the lease table. Default `public`.
    pub fn schema(mut self, schema: &str) -> Self {
        schema.clone_into(&mut self.schema);
        self
    }

    /// Name of the lease table. Default `regent_leases`.
    pub fn table(mut self, table: &str) -> Self {
        table.clone_into(&mut self.table);
        self
    }

    /// `application_name` of the lock session, shown in `pg_stat_activity`
    /// (the listener uses the same name with `:listen` appended). Default
    /// `regent`.
    pub fn application_name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.settings.application_name);
        self
    }

    /// `statement_timeout` of the lock session. Default 5 s, at least 1 ms.
    /// A claim waits at most this long for in-flight fenced transactions.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.settings.statement_timeout = timeout;
        self
    }

    /// Server-side TCP keepalives of the session and listener
    /// (`tcp_keepalives_idle`, `_interval` in whole seconds, `_count`), so the
    /// server drops a vanished client, and its locks, within about
    /// `idle + interval × count`. Default 5 s, 2 s, 3.
    pub fn tcp_keepalives(mut self, idle: Duration, interval: Duration, count: u32) -> Self {
        self.settings.keepalives_idle = idle;
        self.settings.keepalives_interval = interval;
        self.settings.keepalives_count = count;
        self
    }

    /// How session settings are sent; see [`SessionSettings`].
    pub fn session_settings(mut self, how: SessionSettings) -> Self {
        self.settings.session_settings = how;
        self
    }

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
        let mut settings = self.settings;
        settings.table = TableName::new(&self.schema, &self.table)?;
        let s = &settings;
        if s.statement_timeout < Duration::from_millis(1) {
            return Err(SetupError::Option {
                field: "statement_timeout",
                rule: "must be at least 1 ms",
            });
        }
        if s.keepalives_idle.as_secs() < 1 || s.keepalives_interval.as_secs() < 1 {
            return Err(SetupError::Option {
                field: "tcp_keepalives",
                rule: "idle and interval must be at least 1 s",
            });
        }
        if s.keepalives_count < 1 {
            return Err(SetupError::Option {
                field: "tcp_keepalives",
                rule: "count must be at least 1",
            });
        }
        let name_ok = !s.application_name.is_empty()
            && s.application_name.len() <= 63
            && s.application_name
                .chars()
                .all(|c| c.is_ascii_graphic() || c == ' ');
        if !name_ok {
            return Err(SetupError::Option {
                field: "application_name",
                rule: "must be 1 to 63 printable ASCII characters",
            });
        }
        if self.connect_timeout < Duration::from_millis(1) {
            return Err(SetupError::Option {
                field: "connect_timeout",
                rule: "must be at least 1 ms",
            });
        }
        if self.max_pool_connections < 1 {
            return Err(SetupError::Option {
                field: "max_pool_connections",
                rule: "must be at least 1",
            });
        }
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
    }

    #[test]
    fn gucs_are_in_server_units() {
        let s = Settings::default();
        let gucs = s.session_gucs();
        assert_eq!(gucs[0], ("statement_timeout", "5000".to_owned()));
        assert_eq!(gucs[2], ("tcp_keepalives_idle", "5".to_owned()));
        assert_eq!(gucs[4], ("tcp_keepalives_count", "3".to_owned()));
        let base = PgConnectOptions::new();
        let opts = s.session_options(&base);
        assert_eq!(opts.get_application_name(), Some("regent"));
        let o = opts.get_options().unwrap_or_default();
        assert!(o.contains("-c statement_timeout=5000"), "{o}");
        assert!(o.contains("-c tcp_keepalives_count=3"), "{o}");
        let listen = s.listen_options(&base);
        assert_eq!(listen.get_application_name(), Some("regent:listen"));
    }
}
