//! [`Lease`] for [`SqlxBackend`], and fenced transactions.

use std::time::Duration;

use async_trait::async_trait;
use regent_core::{
    BackendError, ClaimOutcome, DbTimestamp, HeldLease, Lease, LeaseRecord, Namespace, NodeId,
    RenewOutcome, Role, Term,
};
use regent_postgres::{self as postgres, LeaseRow};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};

use crate::SqlxBackend;
use crate::error::{FencedError, misconfiguration, pool_error};
use crate::ops::{Op, Out, mismatch};
use crate::session::db_now;

/// Reads the lease columns of `row` (`None` when the `LEFT JOIN` found no
/// row) for a known namespace and role.
pub(crate) fn lease_from_row(
    row: &PgRow,
    namespace: &Namespace,
    role: &Role,
) -> Result<Option<LeaseRecord>, BackendError> {
    let bad = |e: sqlx::Error| postgres::unreadable_row(&e.to_string());
    let Some(holder) = row.try_get::<Option<String>, _>("holder").map_err(bad)? else {
        return Ok(None);
    };
    let raw = LeaseRow {
        namespace: namespace.as_str().to_owned(),
        role: role.as_str().to_owned(),
        holder,
        term: row.try_get("term").map_err(bad)?,
        backend_pid: row.try_get("backend_pid").map_err(bad)?,
        acquired_us: row.try_get("acquired_us").map_err(bad)?,
        renewed_us: row.try_get("renewed_us").map_err(bad)?,
        until_us: row.try_get("until_us").map_err(bad)?,
    };
    Ok(Some(raw.into_record()?))
}

/// A row that carries its own `namespace` and `role` columns.
fn full_lease_from_row(row: &PgRow) -> Result<Option<LeaseRecord>, BackendError> {
    let bad = |e: sqlx::Error| postgres::unreadable_row(&e.to_string());
    let names = postgres::lease_names(
        row.try_get("namespace").map_err(bad)?,
        row.try_get("role").map_err(bad)?,
    )?;
    match names {
        Some((ns, role)) => lease_from_row(row, &ns, &role),
        None => Ok(None),
    }
}

#[async_trait]
impl Lease for SqlxBackend {
    async fn read(
        &self,
        namespace: &Namespace,
        roles: &[Role],
    ) -> Result<(DbTimestamp, Vec<LeaseRecord>), BackendError> {
        let inner = &self.inner;
        let names: Vec<String> = roles.iter().map(|r| r.as_str().to_owned()).collect();
        let rows = sqlx::query(AssertSqlSafe(inner.sql.read.clone()))
            .bind(namespace.as_str())
            .bind(names)
            .fetch_all(&inner.pool)
            .await
            .map_err(|e| pool_error(&e, &inner.settings.table))?;
        let mut now = DbTimestamp::default();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            now = db_now(row).map_err(|e| pool_error(&e, &inner.settings.table))?;
            let role: Option<String> = row
                .try_get("role")
                .map_err(|e| pool_error(&e, &inner.settings.table))?;
            if let Some(role) = role.and_then(|r| Role::new(r).ok()) {
                out.extend(lease_from_row(row, namespace, &role)?);
            }
        }
        Ok((now, out))
    }

    async fn claim(
        &self,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        lease: Duration,
    ) -> Result<ClaimOutcome, BackendError> {
        let op = Op::Claim {
            ns: namespace.clone(),
            role: role.clone(),
            holder: holder.clone(),
            lease,
        };
        match self.inner.submit(op).await? {
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
        let op = Op::Renew {
            ns: namespace.clone(),
            holder: holder.clone(),
            held: held.to_vec(),
            lease,
        };
        match self.inner.submit(op).await? {
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
        let op = Op::Expire {
            ns: namespace.clone(),
            role: role.clone(),
            holder: holder.clone(),
            term,
        };
        match self.inner.submit(op).await? {
            Out::Unit => Ok(()),
            other => Err(mismatch(other)),
        }
    }

    async fn list(&self, namespace: Option<&Namespace>) -> Result<Vec<LeaseRecord>, BackendError> {
        let inner = &self.inner;
        let rows = sqlx::query(AssertSqlSafe(inner.sql.list.clone()))
            .bind(namespace.map(|n| n.as_str().to_owned()))
            .fetch_all(&inner.pool)
            .await
            .map_err(|e| pool_error(&e, &inner.settings.table))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.extend(full_lease_from_row(row)?);
        }
        Ok(out)
    }
}

impl SqlxBackend {
    /// Opens a transaction on the pool that holds `role`'s lease row
    /// `FOR SHARE` and has checked that it still names `holder` at term
    /// `token`. Do the leader-only writes in it and commit: a deposed
    /// leader's write fails here with [`FencedError::Stale`], and a new
    /// leader's claim (which updates the row) waits until in-flight fenced
    /// transactions finish, so their writes land before the takeover.
    ///
    /// # Time limit
    ///
    /// Right after `BEGIN` the transaction sets (`SET LOCAL`)
    /// `idle_in_transaction_session_timeout` and `statement_timeout` to
    /// [`SqlxBackendBuilder::fenced_idle_timeout`](crate::SqlxBackendBuilder::fenced_idle_timeout)
    /// (default 10 s). If the transaction sits idle that long — this process
    /// paused (`SIGSTOP`, a long GC-like stall) or simply slow between two
    /// statements — or any one statement in it runs that long, the server
    /// ends it: the transaction is rolled back and, for the idle case, its
    /// connection is closed, so the write does **not** happen and the next
    /// statement or [`commit`](sqlx::Transaction::commit) fails (the pool
    /// drops the dead connection). This bounds how long a takeover (whose
    /// claim waits behind the `FOR SHARE` lock) waits for a frozen leader's
    /// fenced work: at most that long. Keep fenced work short, or raise the
    /// limit.
    ///
    /// ```no_run
    /// # async fn demo(backend: regent_sqlx::SqlxBackend) -> Result<(), Box<dyn std::error::Error>> {
    /// use regent_core::{Namespace, NodeId, Role, Term};
    /// let (ns, role) = (Namespace::default(), Role::new("billing")?);
    /// let me = NodeId::new("node-a")?;
    /// let token = Term(7); // from Leadership::Leader { token, .. }
    /// let mut tx = backend.fenced(&ns, &role, &me, token).await?;
    /// sqlx::query("UPDATE invoices SET sent = true WHERE id = $1")
    ///     .bind(42_i64)
    ///     .execute(&mut *tx)
    ///     .await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn fenced(
        &self,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        token: Term,
    ) -> Result<Transaction<'static, Postgres>, FencedError> {
        let inner = &self.inner;
        let db = |e: sqlx::Error| match misconfiguration(&e, &inner.settings.table) {
            Some(msg) => FencedError::Misconfigured(msg),
            None => FencedError::Database(e),
        };
        let mut tx = inner.pool.begin().await.map_err(db)?;
        // Bound the transaction, so a frozen caller cannot hold off a
        // takeover forever (see "Time limit").
        let limits = postgres::set_local_commands(&inner.settings.fenced_gucs());
        sqlx::raw_sql(AssertSqlSafe(limits))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let row = sqlx::query(AssertSqlSafe(inner.sql.fenced.clone()))
            .bind(namespace.as_str())
            .bind(role.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let current = match row {
            Some(row) => Some((
                row.try_get::<String, _>("holder").map_err(db)?,
                row.try_get::<i64, _>("term").map_err(db)?,
            )),
            None => None,
        };
        // On a stale token, dropping `tx` rolls it back.
        postgres::check_fenced(namespace, role, holder, token, current)?;
        Ok(tx)
    }
}
