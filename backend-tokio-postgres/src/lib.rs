//! regent-tokio-postgres: the PostgreSQL backend of regent, on
//! [tokio-postgres](tokio_postgres) and [deadpool-postgres](deadpool_postgres).
//!
//! A [`TokioPgBackend`] is one *node*. It owns one dedicated **session**
//! connection — a raw [`tokio_postgres::Client`] opened from a
//! [`tokio_postgres::Config`], never taken from (or returned to) the pool —
//! that carries the advisory locks of all of the node's roles, and runs
//! claim, renew, expire and lock validation on it with the server's `now()`.
//! The backend drives that connection's future itself, in a task of its own,
//! so the moment it ends (backend terminated, server restart, TCP reset)
//! [`Lock::session_closed`](regent_core::Lock::session_closed) completes and
//! the engine steps down at once. Everything else (`list`, `read`,
//! notifications, preemption, fenced transactions, `migrate`) uses a shared
//! [`deadpool_postgres::Pool`]. Every statement and every protocol
//! decision is [`regent_postgres`]'s engine, shared with the sqlx backend;
//! this crate connects, binds and decodes.
//!
//! Cloning a backend gives another handle to the *same* node (same
//! session). For several nodes in one process, build one backend each:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use regent_core::{Lock, Namespace, Role};
//! use regent_tokio_postgres::TokioPgBackend;
//!
//! let url = "postgres://postgres@127.0.0.1:5432/app";
//! let node_a = TokioPgBackend::connect(url).await?;
//! node_a.migrate().await?;
//! let node_b = TokioPgBackend::connect(url).await?; // another node, another session
//!
//! let ns = Namespace::default();
//! let role = Role::new("scheduler")?;
//! node_a.connect().await?; // refuses a transaction pooler, checks the table
//! let a = node_a.try_lock(&ns, &[role.clone()]).await?;
//! let b = node_b.try_lock(&ns, &[role.clone()]).await?;
//! assert!(a.attempts[0].granted && !b.attempts[0].granted);
//! # Ok(()) }
//! ```
//!
//! Or over a pool and config of your own (any TLS via
//! [`TokioPgBackendBuilder::tls`]):
//!
//! ```no_run
//! # fn demo(pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
//! use regent_tokio_postgres::TokioPgBackend;
//! let config: tokio_postgres::Config = "host=127.0.0.1 user=postgres dbname=app".parse()?;
//! let backend = TokioPgBackend::builder()
//!     .application_name("billing-worker")
//!     .build(pool, config)?;
//! # Ok(()) }
//! ```
//!
//! # Lock loss, at once
//!
//! The session's connection future is polled by a task of the backend
//! (`Connection::poll_message`). When it ends by itself — `pg_terminate_backend`,
//! a server restart, a TCP reset, keepalives giving up —
//! [`Lock::session_closed`](regent_core::Lock::session_closed) completes
//! within milliseconds. Each such end is reported once: to every
//! `session_closed` call waiting for a session that was open when it was
//! made (or opened since), or, if nobody was waiting, as
//! [`BackendError::SessionLost`](regent_core::BackendError::SessionLost) from the next call. A session closed by the
//! backend itself (`reset`, an error) is reported by the call that closed it,
//! never by `session_closed`. [`PgBackend::session_pid`](regent_postgres::PgBackend::session_pid) shows the
//! current session's backend pid.
//!
//! # Failure handling
//!
//! One rule for every driver, from [`regent_postgres`]: a call given up on
//! (the elector's attempt timeout) still runs to completion in the
//! background and its effects are recorded, so dropping a call never costs
//! the session; the session is closed only when an advisory-lock statement
//! fails, a connection breaks, or no reply comes within the call timeout.
//! A failed claim, renewal or expiry rolls back and leaves the session — and
//! the node's other roles — alone. A transaction pooler in front of the
//! database is refused at session start with `Misconfigured` (see
//! [`pooler_probe_error`](regent_postgres::pooler_probe_error)).
//!
//! # Pool recycling
//!
//! The session never comes from the pool, and nothing this backend runs on
//! pooled connections takes a session-level lock (`migrate` uses a
//! transaction-scoped one), so any `RecyclingMethod` of a pool you pass in
//! is safe. The pool [`TokioPgBackend::connect`] creates uses
//! [`RecyclingMethod::Clean`](deadpool_postgres::RecyclingMethod::Clean),
//! which runs `pg_advisory_unlock_all()` whenever a connection returns, as a
//! second line of defence.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod builder;
mod connect;
mod driver;
mod error;
mod fenced;

use deadpool_postgres::Pool;
use regent_postgres::{PgBackend, Settings};
use tokio_postgres::Config;

pub use builder::{Mode, SessionSettings, TokioPgBackendBuilder};
/// The deadpool-postgres this backend is built with (its `Pool` is what
/// [`TokioPgBackend::pool`] returns).
pub use deadpool_postgres;
pub use driver::{TokioPgConn, TokioPgDriver, TokioPgListener};
pub use error::SetupError;
pub use fenced::FencedTransaction;
pub use regent_postgres::{FencedError, PgSubscription};
/// The tokio-postgres this backend is built with, for the statements you
/// run inside [`TokioPgBackend::fenced`] without adding it at a matching
/// version yourself (`regent::tokio_postgres::tokio_postgres` through the
/// facade).
pub use tokio_postgres;

use connect::Connector;

/// The regent backend over PostgreSQL through tokio-postgres and
/// deadpool-postgres: implements [`Lock`](regent_core::Lock),
/// [`Lease`](regent_core::Lease) and [`Notify`](regent_core::Notify) with
/// [`regent_postgres`]'s engine. Cheap to clone; clones share the node's
/// session.
#[derive(Clone, Debug)]
pub struct TokioPgBackend {
    inner: PgBackend<TokioPgDriver>,
}

regent_postgres::forward_backend!(TokioPgBackend, inner);

impl std::ops::Deref for TokioPgBackend {
    type Target = PgBackend<TokioPgDriver>;

    /// The engine: `migrate()`, `session_pid()`, `table()`, `settings()`.
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl TokioPgBackend {
    /// A builder for the options: schema, table, `application_name`,
    /// statement timeout, TCP keepalives, TLS, pool size.
    pub fn builder() -> TokioPgBackendBuilder {
        TokioPgBackendBuilder::new()
    }

    /// Connects to `url` (a `postgres://` URL or a `key=value` string) with
    /// every option at its default and no TLS.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), regent_tokio_postgres::SetupError> {
    /// let backend =
    ///     regent_tokio_postgres::TokioPgBackend::connect("postgres://postgres@127.0.0.1/app").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, SetupError> {
        TokioPgBackendBuilder::new().connect(url).await
    }

    pub(crate) fn from_parts(
        pool: Pool,
        config: &Config,
        settings: Settings,
        connector: Connector,
    ) -> Self {
        let driver = TokioPgDriver {
            pool,
            config: config.clone(),
            connector,
        };
        Self {
            inner: PgBackend::from_driver(driver, settings),
        }
    }

    /// The shared pool (not the lock session).
    pub fn pool(&self) -> &Pool {
        &self.inner.driver().pool
    }
}
