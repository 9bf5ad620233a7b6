//! The lock session's settings shared by both backends: the options a
//! builder collects, their validation, and the GUCs they become.

use std::time::Duration;

use thiserror::Error;

use crate::{DEFAULT_SCHEMA, DEFAULT_TABLE, IdentError, TableName};

/// How the session's settings (`statement_timeout`, server-side TCP
/// keepalives) reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionSettings {
    /// As `-c name=value` startup options (the `options` connection
    /// parameter, appended to any the connection options already have): no
    /// extra round trip. PgBouncer rejects the `options` parameter unless it
    /// is listed in its `ignore_startup_parameters` (and then ignores it);
    /// use [`SessionSettings::SetCommands`] there.
    #[default]
    StartupOptions,
    /// As `SET` commands right after the session connects. Works through
    /// PgBouncer in session mode.
    SetCommands,
}

/// How the engine keeps two nodes from leading the same role at once.
///
/// | | [`Mode::Session`] (default) | [`Mode::Lease`] |
/// |---|---|---|
/// | mutual exclusion | advisory lock on one session per node, plus the lease row | compare-and-set on the lease row in database time |
/// | server connections per node | session + listener + pool | pool only (no connection held between statements) |
/// | transaction pooler (PgBouncer `pool_mode=transaction`) | refused at start | works |
/// | handover after a resign | at once (`LISTEN`/`NOTIFY`) | at the standbys' next retry round |
/// | crashed leader replaced after | its lease (`WaitForLease`), at once (`Immediate`) | its lease, under either policy |
/// | deposing zombies, lock-loss detection | yes | nothing to depose, no session to lose |
///
/// Under [`TakeoverPolicy::WaitForLease`](regent_core::TakeoverPolicy) both
/// modes give the same guarantee: a new leader's claim commits only after
/// the old lease ended in database time, by when the old leader stepped
/// down at its local deadline. In lease mode a claim *cannot* succeed any
/// earlier — without a lock, a crashed holder cannot be told apart from a
/// paused one — so `Immediate` leads no sooner there than `WaitForLease`.
/// Every node of one namespace must use the same mode. `preempt_zombies`
/// has nothing to do in lease mode (no lock outlives its lease, and the
/// backend offers no deposer); release notifications need a direct
/// [`listener_url`](Settings::listener_url) there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Session-level advisory locks on one dedicated connection per node
    /// (DESIGN §4). Needs a direct connection or a pooler in session mode.
    #[default]
    Session,
    /// Lease rows only: every statement is one autocommit transaction on
    /// the pool, so it works through transaction poolers (PgBouncer
    /// `pool_mode=transaction`, RDS Proxy, Supavisor).
    Lease,
}

/// A direct (unpooled) connection URL for lease mode's release listener;
/// its `Debug` hides everything after the scheme (it may hold a password).
#[derive(Clone, PartialEq, Eq)]
pub struct ListenerUrl(String);

impl ListenerUrl {
    /// Wraps `url` (parsed by the driver when the backend is built).
    pub fn new(url: &str) -> Self {
        Self(url.to_owned())
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ListenerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.0.split("://").next().unwrap_or("");
        write!(f, "ListenerUrl({scheme}://…)")
    }
}

/// A builder option out of range: which option, and the rule it broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("invalid option `{field}`: {rule}")]
pub struct OptionError {
    /// The builder method / option name.
    pub field: &'static str,
    /// The rule it broke.
    pub rule: &'static str,
}

/// The settings shared by every clone of a backend: where the lease table
/// is and how the lock session (and the listeners) are set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The lease table.
    pub table: TableName,
    /// `application_name` of the lock session (listeners append `:listen`).
    pub application_name: String,
    /// `statement_timeout` of the lock session.
    pub statement_timeout: Duration,
    /// `tcp_keepalives_idle` (whole seconds).
    pub keepalives_idle: Duration,
    /// `tcp_keepalives_interval` (whole seconds).
    pub keepalives_interval: Duration,
    /// `tcp_keepalives_count`.
    pub keepalives_count: u32,
    /// How the settings reach the server.
    pub session_settings: SessionSettings,
    /// How long a fenced transaction may sit idle (and how long any one
    /// statement in it may run) before the server ends it: its
    /// `SET LOCAL idle_in_transaction_session_timeout` and
    /// `statement_timeout` ([`Settings::fenced_gucs`]).
    pub fenced_idle_timeout: Duration,
    /// Session mode (advisory locks) or lease mode (lease rows only).
    pub mode: Mode,
    /// Lease mode only: where release listeners connect directly (past the
    /// pooler), which brings `LISTEN`/`NOTIFY`-speed handover back. `None`:
    /// lease mode has no notifications and standbys poll.
    pub listener_url: Option<ListenerUrl>,
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
            fenced_idle_timeout: Duration::from_secs(10),
            mode: Mode::Session,
            listener_url: None,
        }
    }
}

/// The largest value of a millisecond GUC (`INT_MAX` ms, about 24.8 days).
const MAX_GUC_MS: u64 = i32::MAX as u64;

/// `Err(OptionError)` unless `ok`.
pub fn require(ok: bool, field: &'static str, rule: &'static str) -> Result<(), OptionError> {
    if ok {
        Ok(())
    } else {
        Err(OptionError { field, rule })
    }
}

/// What every adapter's builder collects before it connects: where the
/// lease table is (schema and table, validated only at build time, so a
/// builder chain never fails half-way) and the [`Settings`]. The shared
/// builder methods ([`settings_setters!`](crate::settings_setters)) write
/// here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Schema of the lease table.
    pub schema: String,
    /// Name of the lease table.
    pub table: String,
    /// Everything else.
    pub settings: Settings,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            schema: DEFAULT_SCHEMA.to_owned(),
            table: DEFAULT_TABLE.to_owned(),
            settings: Settings::default(),
        }
    }
}

impl Options {
    /// Validates the table name and every option; the settings to build
    /// a backend with.
    pub fn validate(&self) -> Result<Settings, InvalidOptions> {
        let mut settings = self.settings.clone();
        settings.table = TableName::new(&self.schema, &self.table)?;
        settings.validate()?;
        Ok(settings)
    }
}

/// A builder's options cannot work: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidOptions {
    /// A schema or table name is not a plain identifier.
    #[error(transparent)]
    Identifier(#[from] IdentError),
    /// An option is out of range.
    #[error(transparent)]
    Option(#[from] OptionError),
}

impl Settings {
    /// Checks every option except the table name (validated by
    /// [`TableName::new`]).
    pub fn validate(&self) -> Result<(), OptionError> {
        require(
            self.statement_timeout >= Duration::from_millis(1),
            "statement_timeout",
            "must be at least 1 ms",
        )?;
        require(
            self.keepalives_idle.as_secs() >= 1 && self.keepalives_interval.as_secs() >= 1,
            "tcp_keepalives",
            "idle and interval must be at least 1 s",
        )?;
        require(
            self.keepalives_count >= 1,
            "tcp_keepalives",
            "count must be at least 1",
        )?;
        require(
            self.fenced_idle_timeout >= Duration::from_millis(1)
                && self.fenced_idle_timeout <= Duration::from_millis(MAX_GUC_MS),
            "fenced_idle_timeout",
            "must be at least 1 ms and at most 2147483647 ms",
        )?;
        require(
            self.listener_url.is_none() || self.mode == Mode::Lease,
            "listener_url",
            "applies to lease mode only (session mode already listens on a direct connection \
             of its own); add `.lease_mode()` or drop the listener URL",
        )?;
        let name = &self.application_name;
        require(
            !name.is_empty()
                && name.len() <= 63
                && name.chars().all(|c| c.is_ascii_graphic() || c == ' '),
            "application_name",
            "must be 1 to 63 printable ASCII characters",
        )
    }

    /// The GUCs of the lock session, as `(name, value)` pairs in server
    /// units: `statement_timeout` (ms), `client_connection_check_interval`
    /// (1000 ms: a statement whose client has gone is cancelled promptly;
    /// PostgreSQL 14 or later), then [`Settings::keepalive_gucs`].
    pub fn session_gucs(&self) -> Vec<(&'static str, String)> {
        let mut gucs = vec![
            (
                "statement_timeout",
                self.statement_timeout.as_millis().to_string(),
            ),
            ("client_connection_check_interval", "1000".to_owned()),
        ];
        gucs.extend(self.keepalive_gucs());
        gucs
    }

    /// The server-side TCP keepalive GUCs (seconds / count).
    pub fn keepalive_gucs(&self) -> Vec<(&'static str, String)> {
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

    /// The GUCs a fenced transaction sets with `SET LOCAL` right after
    /// `BEGIN` (ms): `idle_in_transaction_session_timeout` — a fenced
    /// transaction left idle that long (its leader frozen, say) is ended by
    /// the server, which closes its connection, so a takeover's claim waits
    /// for it at most that long — and `statement_timeout`, the same bound on
    /// each statement in it.
    pub fn fenced_gucs(&self) -> Vec<(&'static str, String)> {
        let ms = self.fenced_idle_timeout.as_millis().to_string();
        vec![
            ("idle_in_transaction_session_timeout", ms.clone()),
            ("statement_timeout", ms),
        ]
    }

    /// `application_name` of the short-lived probe connection of the
    /// transaction-pooling check ([`pooler_probe_error`](super::pooler_probe_error)):
    /// the session's name with `:probe` appended, cut to 63 bytes.
    pub fn probe_application_name(&self) -> String {
        suffixed(&self.application_name, ":probe")
    }

    /// How long the client waits for any one call on the session before it
    /// gives the session up: the statement timeout plus slack for the
    /// network, so the server's timeout normally fires first.
    pub fn call_timeout(&self) -> Duration {
        self.statement_timeout + Duration::from_secs(2)
    }

    /// `application_name` of a notification listener: the session's name
    /// with `:listen` appended, cut to PostgreSQL's 63 bytes.
    pub fn listen_application_name(&self) -> String {
        suffixed(&self.application_name, ":listen")
    }
}

/// `name` + `suffix`, cut to PostgreSQL's 63 bytes.
fn suffixed(name: &str, suffix: &str) -> String {
    let mut name = format!("{name}{suffix}");
    while name.len() > 63 {
        name.pop();
    }
    name
}

/// `options` connection parameter text: `-c name=value` for each GUC,
/// appended to `existing` options (if any).
pub fn startup_options(existing: Option<&str>, gucs: &[(&'static str, String)]) -> String {
    let ours: Vec<String> = gucs.iter().map(|(k, v)| format!("-c {k}={v}")).collect();
    match existing {
        Some(existing) if !existing.trim().is_empty() => {
            format!("{existing} {}", ours.join(" "))
        }
        _ => ours.join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_options_do_not() {
        let ok = Settings::default();
        assert_eq!(ok.validate(), Ok(()));
        let field = |s: Settings| s.validate().unwrap_err().field;
        let s = |f: fn(&mut Settings)| {
            let mut s = Settings::default();
            f(&mut s);
            s
        };
        assert_eq!(
            field(s(|s| s.statement_timeout = Duration::ZERO)),
            "statement_timeout"
        );
        assert_eq!(
            field(s(|s| s.keepalives_idle = Duration::ZERO)),
            "tcp_keepalives"
        );
        assert_eq!(field(s(|s| s.keepalives_count = 0)), "tcp_keepalives");
        assert_eq!(
            field(s(|s| s.application_name = String::new())),
            "application_name"
        );
        assert_eq!(
            field(s(|s| s.application_name = "é".to_owned())),
            "application_name"
        );
        for bad in [
            Duration::ZERO,
            Duration::from_micros(999),
            Duration::from_millis(MAX_GUC_MS + 1),
        ] {
            let st = Settings {
                fenced_idle_timeout: bad,
                ..Settings::default()
            };
            assert_eq!(field(st), "fenced_idle_timeout");
        }
        let listener = |mode| Settings {
            listener_url: Some(ListenerUrl::new("postgres://u:secret@h/db")),
            mode,
            ..Settings::default()
        };
        assert_eq!(field(listener(Mode::Session)), "listener_url");
        assert_eq!(listener(Mode::Lease).validate(), Ok(()));
        let shown = format!("{:?}", listener(Mode::Lease).listener_url);
        assert!(!shown.contains("secret"), "{shown}");
        let e = OptionError {
            field: "x",
            rule: "y",
        };
        assert_eq!(e.to_string(), "invalid option `x`: y");
    }

    #[test]
    fn gucs_and_names() {
        let s = Settings::default();
        let gucs = s.session_gucs();
        assert_eq!(gucs[0], ("statement_timeout", "5000".to_owned()));
        assert_eq!(
            gucs[1],
            ("client_connection_check_interval", "1000".to_owned())
        );
        assert_eq!(gucs[2], ("tcp_keepalives_idle", "5".to_owned()));
        assert_eq!(gucs[4], ("tcp_keepalives_count", "3".to_owned()));
        assert_eq!(s.keepalive_gucs().len(), 3);
        assert_eq!(s.call_timeout(), Duration::from_secs(7));
        assert_eq!(s.listen_application_name(), "regent:listen");
        let long = Settings {
            application_name: "a".repeat(63),
            ..Settings::default()
        };
        assert_eq!(long.listen_application_name().len(), 63);
        assert_eq!(long.probe_application_name().len(), 63);
        assert_eq!(s.probe_application_name(), "regent:probe");
        assert_eq!(s.fenced_idle_timeout, Duration::from_secs(10));
        let f = Settings {
            fenced_idle_timeout: Duration::from_millis(300),
            ..Settings::default()
        };
        assert_eq!(
            f.fenced_gucs(),
            vec![
                ("idle_in_transaction_session_timeout", "300".to_owned()),
                ("statement_timeout", "300".to_owned())
            ]
        );
        let g = [("a", "1".to_owned()), ("b", "2".to_owned())];
        assert_eq!(startup_options(None, &g), "-c a=1 -c b=2");
        assert_eq!(startup_options(Some(" "), &g), "-c a=1 -c b=2");
        assert_eq!(startup_options(Some("-c x=y"), &g), "-c x=y -c a=1 -c b=2");
    }
}
