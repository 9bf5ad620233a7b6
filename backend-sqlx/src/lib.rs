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
//! Everything that decides — statements, the session and its cancellation
//! rule, error classification, the transaction-pooler check — is
//! [`regent_postgres`]'s engine, shared with `regent-tokio-postgres`; this
//! crate only connects, binds and decodes (see
//! [`regent_postgres::PgBackend`] for the rules). sqlx cannot see a
//! connection close by itself, so a terminated session is noticed at the
//! next lock validation (`validate_interval`).
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
mod driver;
mod error;

use regent_core::Fence;
use regent_postgres::{PgBackend, Settings};
use sqlx::{PgPool, Postgres, Transaction};

pub use builder::{Mode, SessionSettings, SqlxBackendBuilder};
pub use driver::{SqlxConn, SqlxDriver, SqlxListener};
pub use error::SetupError;
pub use regent_postgres::{FencedError, PgSubscription};
/// The sqlx this backend is built with, for the statements you run inside
/// [`SqlxBackend::fenced`] without adding sqlx at a matching version
/// yourself (`regent::sqlx::sqlx` through the facade).
pub use sqlx;

/// The regent backend over PostgreSQL through sqlx: implements
/// [`Lock`](regent_core::Lock), [`Lease`](regent_core::Lease) and
/// [`Notify`](regent_core::Notify) with [`regent_postgres`]'s engine. Cheap
/// to clone; clones share the node's session.
#[derive(Clone, Debug)]
pub struct SqlxBackend {
    inner: PgBackend<SqlxDriver>,
}

regent_postgres::forward_backend!(SqlxBackend, inner);

impl std::ops::Deref for SqlxBackend {
    type Target = PgBackend<SqlxDriver>;

    /// The engine: `migrate()`, `session_pid()`, `table()`, `settings()`.
    fn deref(&self) -> &Self::Target {
        &self.inner
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
        Self {
            inner: PgBackend::from_driver(SqlxDriver { pool }, settings),
        }
    }

    /// The shared pool (not the lock session).
    pub fn pool(&self) -> &PgPool {
        &self.inner.driver().pool
    }

    /// Opens a transaction on the pool that commits only while `fence`
    /// still holds (see [`PgBackend::fence`]): a deposed leader's write
    /// fails with [`FencedError::Stale`], and a takeover cannot claim the
    /// role until this transaction ends.
    ///
    /// ```no_run
    /// # async fn demo(backend: regent_sqlx::SqlxBackend, fence: regent_core::Fence)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = backend.fenced(&fence).await?;
    /// sqlx::query("INSERT INTO jobs_done (term) VALUES ($1)")
    ///     .bind(fence.term()) // a Term is a bigint parameter
    ///     .execute(&mut *tx)
    ///     .await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn fenced(
        &self,
        fence: &Fence,
    ) -> Result<Transaction<'static, Postgres>, FencedError> {
        let mut tx = self.pool().begin().await.map_err(|e| self.fence_db(e))?;
        self.check_fence(&mut tx, fence).await?;
        Ok(tx)
    }

    /// Fences a transaction you opened yourself (on any pool or connection
    /// to this database): after this returns `Ok`, `tx` commits only while
    /// `fence` holds. Run it first in the transaction.
    ///
    /// ```no_run
    /// # async fn demo(backend: regent_sqlx::SqlxBackend, pool: sqlx::PgPool, fence: regent_core::Fence)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = pool.begin().await?;
    /// backend.check_fence(&mut tx, &fence).await?;
    /// // ... leader-only writes on `tx` ...
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn check_fence(
        &self,
        tx: &mut sqlx::PgConnection,
        fence: &Fence,
    ) -> Result<(), FencedError> {
        self.inner.fence(&mut driver::OnConn(tx), fence).await
    }

    fn fence_db(&self, e: sqlx::Error) -> FencedError {
        let e = driver::db_error(e);
        match regent_postgres::misconfiguration(e.sqlstate.as_deref(), self.table(), &e.message) {
            Some(msg) => FencedError::Misconfigured(msg),
            None => FencedError::Database(e),
        }
    }
}
