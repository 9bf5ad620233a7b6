//! [`PgBackend`]: the one PostgreSQL engine, generic over a [`Driver`],
//! implementing regent's [`Lock`], [`Lease`] and [`Notify`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use regent_core::{
    Backend, BackendError, ClaimOutcome, DbTimestamp, Depose, Fence, HeldLease, Lease, LeaseRecord,
    Lock, Namespace, NodeId, Notify, PreemptOutcome, Released, RenewOutcome, Role, Subscription,
    Term, TryLockOutcome,
};

use crate::driver::{Conn, DbError, Driver, Param};
use crate::listen::PgSubscription;
use crate::ops::{Op, Out, mismatch};
use crate::session::Engine;
use crate::{Incarnation, Mode, Settings, TableName};

/// The PostgreSQL backend of regent over the client library `D`.
///
/// In [lease mode](Mode::Lease) it holds no connection of its own: every
/// call is one autocommit statement on the driver's pool (see
/// [`Mode`]). The rest of this paragraph describes session mode, the
/// default.
///
/// One value is one *node*: it owns one dedicated session connection
/// (outside any pool) that carries the advisory locks of all of the node's
/// roles, and runs claim, renew, expire and lock validation on it with the
/// server's `now()`. `read`, `list`, preemption and notifications use the
/// driver's pool; each subscription has a listening connection of its own.
/// Cloning gives another handle to the *same* node (same session).
///
/// Users name it through their driver's adapter: `regent_sqlx::SqlxBackend`
/// or `regent_tokio_postgres::TokioPgBackend`.
pub struct PgBackend<D: Driver> {
    pub(crate) engine: Arc<Engine<D>>,
}

impl<D: Driver> Clone for PgBackend<D> {
    fn clone(&self) -> Self {
        Self {
            engine: Arc::clone(&self.engine),
        }
    }
}

impl<D: Driver> std::fmt::Debug for PgBackend<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("table", &self.engine.settings.table)
            .field("application_name", &self.engine.settings.application_name)
            .field("session_pid", &self.engine.session_pid())
            .finish_non_exhaustive()
    }
}

/// Why [`PgBackend::migrate`] failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "creating the lease table {table} failed: {source}; the connecting role needs CREATE on \
     the schema (or apply postgres/sql/regent_leases.sql from the regent sources as a \
     privileged user)"
)]
pub struct MigrateError {
    /// The table.
    pub table: TableName,
    /// What the database said.
    #[source]
    pub source: DbError,
}

impl<D: Driver> PgBackend<D> {
    /// A backend over `driver` with validated `settings`. Adapters call
    /// this from their constructors; no connection is opened yet.
    pub fn from_driver(driver: D, settings: Settings) -> Self {
        Self {
            engine: Arc::new(Engine::new(driver, settings)),
        }
    }

    /// The driver (and through it the adapter's pool).
    pub fn driver(&self) -> &D {
        &self.engine.driver
    }

    /// The settings this backend was built with.
    pub fn settings(&self) -> &Settings {
        &self.engine.settings
    }

    /// The lease table this backend uses.
    pub fn table(&self) -> &TableName {
        &self.engine.settings.table
    }

    /// `pg_backend_pid()` of the lock session while one is open. For
    /// operators and fault tests: this is the backend to
    /// `pg_terminate_backend` to take this node's locks away.
    pub fn session_pid(&self) -> Option<i32> {
        self.engine.session_pid()
    }

    /// Creates the lease table (and its schema, unless `public`) if missing,
    /// or brings a table of an older version up to date (adds the
    /// `incarnation` column, see [`crate::upgrade_statements`]).
    ///
    /// Idempotent, and safe when many processes run it at once: it runs in
    /// one transaction, on a connection of its own, under
    /// `pg_advisory_xact_lock`. When the table already exists it does
    /// nothing, so it also works for a role without the `CREATE` privilege.
    /// It uses the simple query protocol only, so it also runs through a
    /// transaction pooler.
    /// The same DDL ships as `postgres/sql/regent_leases.sql`.
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        let e = &self.engine;
        let table = &e.settings.table;
        let fail = |source: DbError| MigrateError {
            table: table.clone(),
            source,
        };
        let spec = e.spec(e.settings.application_name.clone(), &[]);
        let mut conn = e.driver.open(&spec, Box::new(|_| {})).await.map_err(fail)?;
        let result = async {
            // Simple protocol only: no prepared statement is left behind on
            // a server connection, so this also works through a
            // transaction pooler (the transaction keeps one server
            // connection throughout).
            conn.simple(crate::BEGIN).await?;
            let rows = conn
                .simple(&crate::migrate_check(table, crate::migrate_lock_key(table)))
                .await?;
            // Skip the DDL when the table exists: `CREATE ... IF NOT EXISTS`
            // still needs the CREATE privilege, which an application role
            // that only uses a table created by someone else may lack.
            let flag = |i: usize| {
                rows.iter()
                    .rev()
                    .find_map(|r| r.get(i).cloned().flatten())
                    .is_some_and(|v| v == "t")
            };
            let (present, current) = (flag(0), flag(1));
            let todo = match (present, current) {
                (false, _) => crate::ddl_statements(table),
                // A table of an older version: add what is missing.
                (true, false) => crate::upgrade_statements(table),
                (true, true) => Vec::new(),
            };
            for stmt in todo {
                conn.simple(&stmt).await?;
            }
            conn.simple(crate::COMMIT).await?;
            Ok::<(), DbError>(())
        }
        .await;
        conn.close().await;
        result.map_err(fail)
    }

    async fn submit(&self, op: Op) -> Result<Out, BackendError> {
        self.engine.submit(op).await
    }

    /// The random id this backend writes into every row it claims; "its
    /// own lease" is one naming its holder **and** this incarnation.
    pub fn incarnation(&self) -> &Incarnation {
        &self.engine.incarnation
    }

    /// Whether this backend runs in lease mode (see [`Mode`]).
    pub fn is_lease_mode(&self) -> bool {
        self.engine.settings.mode == Mode::Lease
    }
}

#[async_trait]
impl<D: Driver> Lock for PgBackend<D> {
    async fn connect(&self) -> Result<(), BackendError> {
        if self.is_lease_mode() {
            return self.engine.lm_connect().await;
        }
        match self.submit(Op::Connect).await? {
            Out::Unit => Ok(()),
            other => Err(mismatch(other)),
        }
    }

    async fn try_lock(
        &self,
        namespace: &Namespace,
        roles: &[Role],
    ) -> Result<TryLockOutcome, BackendError> {
        if self.is_lease_mode() {
            return self.engine.lm_try_lock(namespace, roles).await;
        }
        let op = Op::TryLock {
            ns: namespace.clone(),
            roles: roles.to_vec(),
        };
        match self.submit(op).await? {
            Out::TryLock(outcome) => Ok(outcome),
            other => Err(mismatch(other)),
        }
    }

    async fn unlock(&self, namespace: &Namespace, role: &Role) -> Result<(), BackendError> {
        if self.is_lease_mode() {
            self.engine.lm_unlock(namespace, role);
            return Ok(());
        }
        let op = Op::Unlock {
            ns: namespace.clone(),
            role: role.clone(),
        };
        match self.submit(op).await? {
            Out::Unit => Ok(()),
            other => Err(mismatch(other)),
        }
    }

    async fn held(&self, namespace: &Namespace, roles: &[Role]) -> Result<Vec<Role>, BackendError> {
        if self.is_lease_mode() {
            return self.engine.lm_held(namespace, roles).await;
        }
        let op = Op::Held {
            ns: namespace.clone(),
            roles: roles.to_vec(),
        };
        match self.submit(op).await? {
            Out::Roles(roles) => Ok(roles),
            other => Err(mismatch(other)),
        }
    }

    async fn ping(&self) -> Result<(), BackendError> {
        if self.is_lease_mode() {
            return self.engine.lm_ping().await;
        }
        match self.submit(Op::Ping).await? {
            Out::Unit => Ok(()),
            other => Err(mismatch(other)),
        }
    }

    async fn reset(&self) {
        if self.is_lease_mode() {
            self.engine.lm_reset();
            return;
        }
        self.engine.close_session().await;
    }

    async fn session_closed(&self) {
        self.engine.session_closed().await;
    }
}

#[async_trait]
impl<D: Driver> Lease for PgBackend<D> {
    async fn read(
        &self,
        namespace: &Namespace,
        roles: &[Role],
    ) -> Result<(DbTimestamp, Vec<LeaseRecord>), BackendError> {
        self.engine.read(namespace, roles).await
    }

    async fn claim(
        &self,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        lease: Duration,
    ) -> Result<ClaimOutcome, BackendError> {
        if self.is_lease_mode() {
            return self.engine.lm_claim(namespace, role, holder, lease).await;
        }
        let op = Op::Claim {
            ns: namespace.clone(),
            role: role.clone(),
            holder: holder.clone(),
            lease,
        };
        match self.submit(op).await? {
            Out::Claim(outcome) => Ok(outcome),
            other => Err(mismatch(other)),
        }
    }

    async fn renew(
        &self,
        namespace: &Namespace,
        holder: &NodeId,
        held: &[HeldLease],
        lease: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        if self.is_lease_mode() {
            return self.engine.lm_renew(namespace, holder, held, lease).await;
        }
        let op = Op::Renew {
            ns: namespace.clone(),
            holder: holder.clone(),
            held: held.to_vec(),
            lease,
        };
        match self.submit(op).await? {
            Out::Renew(outcome) => Ok(outcome),
            other => Err(mismatch(other)),
        }
    }

    async fn expire(
        &self,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        term: Term,
    ) -> Result<(), BackendError> {
        if self.is_lease_mode() {
            return self.engine.lm_expire(namespace, role, holder, term).await;
        }
        let op = Op::Expire {
            ns: namespace.clone(),
            role: role.clone(),
            holder: holder.clone(),
            term,
        };
        match self.submit(op).await? {
            Out::Unit => Ok(()),
            other => Err(mismatch(other)),
        }
    }

    async fn list(&self, namespace: Option<&Namespace>) -> Result<Vec<LeaseRecord>, BackendError> {
        self.engine.list(namespace).await
    }
}

/// Deposes a zombie holder by terminating its backend
/// (`pg_terminate_backend`), only while that backend still holds the role's
/// advisory lock and the row still names it with a lease ended more than
/// the grace ago: a reused pid is never hit. Then it also ends the fenced
/// transactions that holder left open in that term (they carry a name
/// unique to it, see [`crate::fenced_application_name`]), so a holder
/// frozen inside fenced work no longer holds off the claim until
/// `fenced_idle_timeout`. Needs `pg_signal_backend`, or the same database
/// role as the holder (PostgreSQL lets a role signal its own backends).
#[async_trait]
impl<D: Driver> Depose for PgBackend<D> {
    async fn depose(
        &self,
        lease: &LeaseRecord,
        grace: Duration,
    ) -> Result<PreemptOutcome, BackendError> {
        self.engine.preempt(lease, grace).await
    }
}

#[async_trait]
impl<D: Driver> Backend for PgBackend<D> {
    /// Session mode: `LISTEN`/`NOTIFY`. Lease mode: only with a
    /// [listener URL](Settings::listener_url) — `LISTEN` needs a session,
    /// which a transaction pooler does not keep — else none, and standbys
    /// find a released role at their next retry round.
    fn notifier(&self) -> Option<&dyn Notify> {
        let listens = !self.is_lease_mode() || self.engine.settings.listener_url.is_some();
        listens.then_some(self as &dyn Notify)
    }

    /// Session mode: terminating a zombie's backend. Lease mode: none — no
    /// lock outlives its lease, so there is nobody to depose.
    fn deposer(&self) -> Option<&dyn Depose> {
        (!self.is_lease_mode()).then_some(self as &dyn Depose)
    }

    /// Session mode: ends the lease, unlocks and publishes the release in
    /// **one** statement on the session (see [`crate::Statements::release`]):
    /// one round trip instead of three, and the notification still reaches
    /// standbys only after the lock is free. Lease mode: ends the lease
    /// (with no term given, the claim this backend committed for the role
    /// and nobody led with).
    async fn release(
        &self,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        term: Option<Term>,
    ) -> Result<Released, BackendError> {
        if self.is_lease_mode() {
            return self.engine.lm_release(namespace, role, holder, term).await;
        }
        let op = Op::Release {
            ns: namespace.clone(),
            role: role.clone(),
            holder: holder.clone(),
            term,
        };
        match self.submit(op).await? {
            Out::Released(notified) => Ok(Released::new(notified)),
            Out::Unit => Ok(Released::new(false)),
            other => Err(mismatch(other)),
        }
    }
}

#[async_trait]
impl<D: Driver> Notify for PgBackend<D> {
    async fn publish_release(
        &self,
        namespace: &Namespace,
        role: &Role,
    ) -> Result<(), BackendError> {
        self.engine.publish_release(namespace, role).await
    }

    async fn subscribe(
        &self,
        namespace: &Namespace,
    ) -> Result<Box<dyn Subscription>, BackendError> {
        let sub = PgSubscription::open(Arc::clone(&self.engine), crate::notify_channel(namespace))
            .await?;
        Ok(Box::new(sub))
    }
}

/// A transaction (or connection) of the user's driver that a fence check
/// can run statements on. Adapters implement it for their own wrapper
/// types; users never do.
#[async_trait]
pub trait TxExec: Send {
    /// Runs `sql` (simple protocol, no rows wanted).
    async fn tx_simple(&mut self, sql: &str) -> Result<(), DbError>;
    /// Runs one statement with parameters.
    async fn tx_query(
        &mut self,
        sql: &str,
        params: &[Param],
    ) -> Result<Vec<crate::driver::Row>, DbError>;
}

/// Why a fenced transaction was refused or could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FencedError {
    /// The lease row no longer names this holder at this term: this node
    /// was deposed (or never led at that term). Nothing was written; stop
    /// the leader-only work.
    #[error(transparent)]
    Stale(#[from] crate::Stale),
    /// The table is missing or the role lacks privileges; the message says
    /// what to fix.
    #[error("{0}")]
    Misconfigured(String),
    /// The database failed; nothing was written, retry later.
    #[error("fenced transaction could not be opened: {0}; nothing was written, retry later")]
    Database(#[source] DbError),
}

impl<D: Driver> PgBackend<D> {
    /// Fences the transaction `tx` with `fence`: bounds its idle
    /// time and statements (`SET LOCAL`, see
    /// [`Settings::fenced_gucs`]), then reads the role's lease row
    /// `FOR KEY SHARE` and checks that it still names the fence's holder at
    /// its term.
    ///
    /// Holding that row lock until `tx` ends makes a takeover's claim
    /// (`FOR UPDATE`) wait for — or, being `NOWAIT`, retry after — the
    /// in-flight fenced work, while the leader's own renewal (an `UPDATE`
    /// of non-key columns, `FOR NO KEY UPDATE`) does not conflict with it.
    pub async fn fence<E: TxExec>(&self, tx: &mut E, fence: &Fence) -> Result<(), FencedError> {
        let (namespace, role) = (fence.namespace(), fence.role());
        let e = &self.engine;
        let db = |err: DbError| match crate::misconfiguration(
            err.sqlstate.as_deref(),
            &e.settings.table,
            &err.message,
        ) {
            Some(msg) => FencedError::Misconfigured(msg),
            None => FencedError::Database(err),
        };
        // Bound the transaction, and name it after this one term of this
        // holder: deposing the holder ends it (see `Depose`), and operators
        // can tell it apart in pg_stat_activity. The name is hex: no quoting
        // issue.
        let name =
            crate::fenced_application_name(namespace, role, fence.holder().as_str(), fence.term());
        let setup = format!(
            "{}SET LOCAL application_name = '{name}';",
            crate::set_local_commands(&e.settings.fenced_gucs())
        );
        tx.tx_simple(&setup).await.map_err(db)?;
        let rows = tx
            .tx_query(
                &e.sql.fenced,
                &[
                    Param::Text(namespace.as_str().to_owned()),
                    Param::Text(role.as_str().to_owned()),
                ],
            )
            .await
            .map_err(db)?;
        let current = match rows.first() {
            Some(row) => Some((
                row.text("holder").map_err(|c| db(c.into()))?,
                row.int("term").map_err(|c| db(c.into()))?,
            )),
            None => None,
        };
        crate::check_fenced(namespace, role, fence.holder(), fence.term(), current)?;
        Ok(())
    }
}
