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
//! [`deadpool_postgres::Pool`]. The SQL text and advisory-key derivation
//! live in [`regent_postgres`], shared with the sqlx backend.
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
//! [`BackendError::SessionLost`] from the next call. A session closed by the
//! backend itself (`reset`, an error) is reported by the call that closed it,
//! never by `session_closed`. [`TokioPgBackend::session_pid`] shows the
//! current session's backend pid.
//!
//! # Failure handling
//!
//! Any error on the session — including a call abandoned mid-statement
//! because its future was dropped — closes it, so no lock can leak, and is
//! reported as [`BackendError::SessionLost`] (a missing table or privilege
//! as `Misconfigured`). The next call opens a new session. A
//! `pg_backend_pid()` that changes between two round trips at session start
//! means a transaction pooler, refused with `Misconfigured`, as does a short-lived probe connection (same connect options, so
//! through the same pooler), opened between those round trips, being handed
//! the session's own backend (see
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
mod error;
mod fenced;
mod lease;
mod lock;
mod notify;
mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use deadpool_postgres::{Pool, PoolError};
use regent_core::BackendError;
use regent_postgres::{self as postgres, Statements, TableName};
use tokio::sync::{Mutex, watch};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Config, Row};

pub use builder::{SessionSettings, TokioPgBackendBuilder};
pub use error::{FencedError, SetupError};
pub use fenced::FencedTransaction;
pub use notify::TokioPgSubscription;

use connect::Connector;
use error::{pool_error, pool_get_error};
use regent_postgres::Settings;
use session::{Health, Slot};

/// The regent backend over PostgreSQL through tokio-postgres and
/// deadpool-postgres: implements [`Lock`](regent_core::Lock),
/// [`Lease`](regent_core::Lease) and [`Notify`](regent_core::Notify).
/// Cheap to clone; clones share the node's session.
#[derive(Clone)]
pub struct TokioPgBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pool: Pool,
    settings: Settings,
    sql: Statements,
    session_config: Config,
    listen_config: Config,
    connector: Connector,
    slot: Mutex<Slot>,
    health: watch::Sender<Health>,
    next_generation: AtomicU64,
    warned_not_permitted: AtomicBool,
}

/// A failed statement on the pool, before mapping.
pub(crate) enum PoolCallError {
    Db(tokio_postgres::Error),
    Pool(PoolError),
    Timeout(Duration),
}

impl std::fmt::Debug for TokioPgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioPgBackend")
            .field("table", &self.inner.settings.table)
            .field("application_name", &self.inner.settings.application_name)
            .field("session_pid", &self.session_pid())
            .finish_non_exhaustive()
    }
}

impl TokioPgBackend {
    /// A builder for the options: schema, table, `application_name`,
    /// statement timeout, TCP keepalives, TLS.
    pub fn builder() -> TokioPgBackendBuilder {
        TokioPgBackendBuilder::new()
    }

    /// Connects to `url` (without TLS) with every option at its default:
    /// creates a pool (see [`TokioPgBackendBuilder::connect`]) and checks the
    /// server answers. The lock session opens on first use.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), regent_tokio_postgres::SetupError> {
    /// let backend = regent_tokio_postgres::TokioPgBackend::connect(
    ///     "postgres://postgres@127.0.0.1/app",
    /// )
    /// .await?;
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
        let (health, _) = watch::channel(Health::default());
        Self {
            inner: Arc::new(Inner {
                sql: Statements::new(&settings.table),
                session_config: builder::session_config(&settings, config),
                listen_config: builder::listen_config(&settings, config),
                pool,
                settings,
                connector,
                slot: Mutex::new(Slot::default()),
                health,
                next_generation: AtomicU64::new(0),
                warned_not_permitted: AtomicBool::new(false),
            }),
        }
    }

    /// The shared pool (not the lock session).
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The lease table this backend uses.
    pub fn table(&self) -> &TableName {
        &self.inner.settings.table
    }

    /// `pg_backend_pid()` of the lock session while one is open, for
    /// operators and tests (it is the `backend_pid` of this node's lease
    /// rows, and the pid shown in `pg_stat_activity`).
    pub fn session_pid(&self) -> Option<i32> {
        let h = self.inner.health.borrow();
        if h.open { h.pid } else { None }
    }

    /// Creates the lease table (and its schema, unless `public`) if missing.
    /// Idempotent, and safe when many processes run it at once: it runs in
    /// one transaction under `pg_advisory_xact_lock`. The same DDL ships as
    /// `postgres/sql/regent_leases.sql` of regent-postgres and as
    /// [`regent_postgres::ddl_script`].
    pub async fn migrate(&self) -> Result<(), SetupError> {
        let table = &self.inner.settings.table;
        let fail = |source: Box<dyn std::error::Error + Send + Sync>| SetupError::Migrate {
            table: table.clone(),
            source,
        };
        let mut client = self.inner.pool.get().await.map_err(|e| fail(Box::new(e)))?;
        let tx = client.transaction().await.map_err(|e| fail(Box::new(e)))?;
        tx.execute(
            &self.inner.sql.migrate_lock,
            &[&postgres::migrate_lock_key(table)],
        )
        .await
        .map_err(|e| fail(Box::new(e)))?;
        for stmt in postgres::ddl_statements(table) {
            tx.batch_execute(&stmt)
                .await
                .map_err(|e| fail(Box::new(e)))?;
        }
        tx.commit().await.map_err(|e| fail(Box::new(e)))
    }
}

impl Inner {
    /// Runs one statement on a pooled connection (prepared and cached per
    /// connection), bounded by the call timeout.
    pub(crate) async fn pool_query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, PoolCallError> {
        let limit = self.settings.call_timeout();
        let fut = async {
            let client = self.pool.get().await.map_err(PoolCallError::Pool)?;
            let statement = client
                .prepare_cached(sql)
                .await
                .map_err(PoolCallError::Db)?;
            client
                .query(&statement, params)
                .await
                .map_err(PoolCallError::Db)
        };
        match tokio::time::timeout(limit, fut).await {
            Ok(result) => result,
            Err(_) => Err(PoolCallError::Timeout(limit)),
        }
    }

    /// Maps a [`PoolCallError`] to a [`BackendError`].
    pub(crate) fn pool_call_error(&self, e: PoolCallError) -> BackendError {
        match e {
            PoolCallError::Db(e) => pool_error(&e, &self.settings.table),
            PoolCallError::Pool(e) => pool_get_error(&e, &self.settings.table),
            PoolCallError::Timeout(d) => BackendError::Timeout(d),
        }
    }
}
