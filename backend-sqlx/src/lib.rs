//! regent-sqlx: the PostgreSQL backend of regent, on sqlx.
//!
//! A [`SqlxBackend`] is one *node*: it owns one dedicated session
//! connection (outside any pool) that carries the advisory locks of all of
//! the node's roles, and runs claim, renew, expire and lock validation on
//! it with the server's `now()`. Everything else (`list`, `read`,
//! notifications, preemption, fenced transactions) uses a shared
//! [`sqlx::PgPool`]. The SQL text and advisory-key derivation live in
//! [`regent_postgres`], shared with the other Postgres backend.
//!
//! Cloning a backend gives another handle to the *same* node (same
//! session). For several nodes in one process, build one backend each:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use regent_core::{Lock, Namespace, Role};
//! use regent_sqlx::SqlxBackend;
//!
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/app").await?;
//! let node_a = SqlxBackend::new(pool.clone());
//! node_a.migrate().await?;
//! let node_b = SqlxBackend::new(pool.clone()); // another node, another session
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
//! # Failure handling
//!
//! Calls on the session run one at a time, each in a task of its own, so a
//! caller that gives up (the driver's per-attempt timeout) never interrupts
//! a statement half-way: a call already running completes and its effects
//! (a granted lock, say) are recorded, and a call that has not started yet
//! is skipped. Any error on the session — a failed statement, the server's
//! `statement_timeout`, no reply within that timeout plus 2 s — closes the
//! session, so no lock can leak, and is reported as
//! [`BackendError::SessionLost`](regent_core::BackendError) (a missing
//! table or privilege as `Misconfigured`); the next call opens a new
//! session. A `pg_backend_pid()` that changes between two round trips at
//! session start means a transaction pooler, refused with `Misconfigured`, as does a short-lived probe connection (same connect options, so
//! through the same pooler), opened between those round trips, being handed
//! the session's own backend (see
//! [`pooler_probe_error`](regent_postgres::pooler_probe_error)).
//!
//! # Isolation
//!
//! Advisory locks belong to the whole database, not to a schema or table:
//! two deployments sharing a database must use different *namespaces*, even
//! if they use different lease tables.
//!
//! The session needs PostgreSQL 14 or later (it sets
//! `client_connection_check_interval`, so a statement whose client has gone
//! is cancelled promptly).

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod builder;
mod error;
mod lease;
mod lock;
mod notify;
mod ops;
mod session;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use regent_postgres::{self as postgres, Statements, TableName};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::Mutex;

pub use builder::{SessionSettings, SqlxBackendBuilder};
pub use error::{FencedError, SetupError};
pub use notify::SqlxSubscription;

use regent_postgres::Settings;
use session::Slot;

/// The regent backend over PostgreSQL through sqlx: implements
/// [`Lock`](regent_core::Lock), [`Lease`](regent_core::Lease) and
/// [`Notify`](regent_core::Notify). Cheap to clone; clones share the node's
/// session.
#[derive(Clone)]
pub struct SqlxBackend {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    settings: Settings,
    sql: Statements,
    session_options: PgConnectOptions,
    listen_options: PgConnectOptions,
    slot: Mutex<Slot>,
    warned_not_permitted: AtomicBool,
}

impl std::fmt::Debug for SqlxBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlxBackend")
            .field("table", &self.inner.settings.table)
            .field("application_name", &self.inner.settings.application_name)
            .finish_non_exhaustive()
    }
}

impl SqlxBackend {
    /// A backend over `pool` with every option at its default (table
    /// `public.regent_leases`, `application_name` `regent`). No connection is
    /// opened yet.
    pub fn new(pool: PgPool) -> Self {
        Self::from_parts(pool, Settings::default())
    }

    /// A builder for the options: schema, table, `application_name`,
    /// statement timeout, TCP keepalives.
    pub fn builder() -> SqlxBackendBuilder {
        SqlxBackendBuilder::new()
    }

    /// Connects a pool to `url` and returns a backend with default options.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), regent_sqlx::SetupError> {
    /// let backend = regent_sqlx::SqlxBackend::connect("postgres://postgres@127.0.0.1/app").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Self, SetupError> {
        SqlxBackendBuilder::new().connect(url).await
    }

    pub(crate) fn from_parts(pool: PgPool, settings: Settings) -> Self {
        let base = pool.connect_options();
        let session_options = builder::session_options(&settings, &base);
        let listen_options = builder::listen_options(&settings, &base);
        Self {
            inner: Arc::new(Inner {
                sql: Statements::new(&settings.table),
                pool,
                settings,
                session_options,
                listen_options,
                slot: Mutex::new(Slot::default()),
                warned_not_permitted: AtomicBool::new(false),
            }),
        }
    }

    /// The shared pool (not the lock session).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// `pg_backend_pid()` of the lock session, if one is open (waits for
    /// the call in flight, if any). For operators and fault tests: this is
    /// the backend to `pg_terminate_backend` to take this node's locks away.
    pub async fn session_pid(&self) -> Option<i32> {
        self.inner.session_pid().await
    }

    /// The lease table this backend uses.
    pub fn table(&self) -> &TableName {
        &self.inner.settings.table
    }

    /// Creates the lease table (and its schema, unless `public`) if missing.
    /// Idempotent, and safe when many processes run it at once: it runs in
    /// one transaction under `pg_advisory_xact_lock`. When the table already
    /// exists it does nothing, so it also works for a role without the
    /// `CREATE` privilege. The same DDL ships as `postgres/sql/regent_leases.sql` (regent-postgres).
    pub async fn migrate(&self) -> Result<(), SetupError> {
        let table = &self.inner.settings.table;
        let fail = |source| SetupError::Migrate {
            table: table.clone(),
            source,
        };
        let mut tx = self.inner.pool.begin().await.map_err(fail)?;
        sqlx::query(AssertSqlSafe(self.inner.sql.migrate_lock.clone()))
            .bind(postgres::migrate_lock_key(table))
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        // Skip the DDL when the table exists: `CREATE ... IF NOT EXISTS`
        // still needs the CREATE privilege, which an application role that
        // only uses a table created by someone else may lack.
        let present: bool = sqlx::query_scalar(AssertSqlSafe(self.inner.sql.table_exists.clone()))
            .bind(table.qualified())
            .fetch_one(&mut *tx)
            .await
            .map_err(fail)?;
        if present {
            return tx.commit().await.map_err(fail);
        }
        for stmt in postgres::ddl_statements(table) {
            sqlx::raw_sql(AssertSqlSafe(stmt))
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
        }
        tx.commit().await.map_err(fail)
    }
}
