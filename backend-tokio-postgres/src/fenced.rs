//! Fenced transactions: leader-only writes that a stale leader cannot make.

use deadpool_postgres::Object;
use regent_core::{Namespace, NodeId, Role, Term};
use regent_postgres as postgres;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, ToStatement};

use crate::TokioPgBackend;
use crate::error::{FencedError, misconfiguration};

/// An open transaction on a pooled connection that holds a role's lease row
/// `FOR SHARE` and has checked that it still names the caller's holder and
/// term. Made by [`TokioPgBackend::fenced`].
///
/// It owns the pooled connection (a `tokio_postgres::Transaction` would
/// borrow it). Run statements with [`FencedTransaction::execute`],
/// [`FencedTransaction::query`] or on [`FencedTransaction::client`], then
/// [`FencedTransaction::commit`]. Dropped without `commit` (or with an
/// unfinished `commit`), it is rolled back in the background before the
/// connection returns to the pool; without a tokio runtime the connection
/// is closed instead, which rolls it back too.
pub struct FencedTransaction {
    client: Option<Object>,
    done: bool,
}

impl std::fmt::Debug for FencedTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FencedTransaction")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl FencedTransaction {
    fn object(&self) -> &Object {
        match &self.client {
            Some(c) => c,
            // `client` is only taken in `drop`.
            None => unreachable!("FencedTransaction used after drop"),
        }
    }

    /// The connection, for anything [`execute`](Self::execute) and
    /// [`query`](Self::query) do not cover (prepared statements, `COPY`,
    /// ...). Do not end the transaction on it yourself: use
    /// [`commit`](Self::commit) or [`rollback`](Self::rollback).
    pub fn client(&self) -> &Client {
        self.object()
    }

    /// Runs a statement in the transaction; returns the number of rows
    /// changed.
    pub async fn execute<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        self.object().execute(statement, params).await
    }

    /// Runs a query in the transaction and returns its rows.
    pub async fn query<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error>
    where
        T: ?Sized + ToStatement,
    {
        self.object().query(statement, params).await
    }

    /// Commits. If this fails the writes did not happen (PostgreSQL rolls
    /// back a transaction whose commit fails). As with any PostgreSQL
    /// transaction, if a statement in it failed, `COMMIT` rolls back.
    pub async fn commit(mut self) -> Result<(), tokio_postgres::Error> {
        let result = self.object().batch_execute(postgres::COMMIT).await;
        self.done = true;
        result
    }

    /// Rolls back, discarding every write made in the transaction.
    pub async fn rollback(mut self) -> Result<(), tokio_postgres::Error> {
        let result = self.object().batch_execute(postgres::ROLLBACK).await;
        self.done = true;
        result
    }
}

impl Drop for FencedTransaction {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if self.done {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if client.batch_execute(postgres::ROLLBACK).await.is_err() {
                        // Never hand a connection in an unknown state back.
                        drop(Object::take(client));
                    }
                });
            }
            Err(_) => drop(Object::take(client)),
        }
    }
}

impl TokioPgBackend {
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
    /// [`TokioPgBackendBuilder::fenced_idle_timeout`](crate::TokioPgBackendBuilder::fenced_idle_timeout)
    /// (default 10 s). If the transaction sits idle that long — this process
    /// paused (`SIGSTOP`, a long stall) or simply slow between two
    /// statements — or any one statement in it runs that long, the server
    /// ends it: the transaction is rolled back and, for the idle case, its
    /// connection is closed, so the write does **not** happen and the next
    /// statement or [`FencedTransaction::commit`] fails (the pool drops the
    /// dead connection). This bounds how long a takeover (whose claim waits
    /// behind the `FOR SHARE` lock) waits for a frozen leader's fenced work:
    /// at most that long. Keep fenced work short, or raise the limit.
    ///
    /// ```no_run
    /// # async fn demo(backend: regent_tokio_postgres::TokioPgBackend) -> Result<(), Box<dyn std::error::Error>> {
    /// use regent_core::{Namespace, NodeId, Role, Term};
    /// let (ns, role) = (Namespace::default(), Role::new("billing")?);
    /// let me = NodeId::new("node-a")?;
    /// let token = Term(7); // from Leadership::Leader { token, .. }
    /// let tx = backend.fenced(&ns, &role, &me, token).await?;
    /// tx.execute("UPDATE invoices SET sent = true WHERE id = $1", &[&42_i64]).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn fenced(
        &self,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        token: Term,
    ) -> Result<FencedTransaction, FencedError> {
        let inner = &self.inner;
        let db = |e: tokio_postgres::Error| match misconfiguration(&e, &inner.settings.table) {
            Some(msg) => FencedError::Misconfigured(msg),
            None => FencedError::Database(e),
        };
        let client = inner.pool.get().await.map_err(FencedError::Pool)?;
        // From here on, dropping `tx` (an error, or this future cancelled
        // even while BEGIN is in flight) rolls back before the connection
        // returns to the pool.
        let tx = FencedTransaction {
            client: Some(client),
            done: false,
        };
        tx.object()
            .batch_execute(postgres::BEGIN)
            .await
            .map_err(db)?;
        // Bound the transaction, so a frozen caller cannot hold off a
        // takeover forever (see "Time limit").
        tx.object()
            .batch_execute(&postgres::set_local_commands(&inner.settings.fenced_gucs()))
            .await
            .map_err(db)?;
        let statement = tx
            .object()
            .prepare_cached(&inner.sql.fenced)
            .await
            .map_err(db)?;
        let row = tx
            .object()
            .query_opt(&statement, &[&namespace.as_str(), &role.as_str()])
            .await
            .map_err(db)?;
        let current = match row {
            Some(row) => Some((
                row.try_get::<_, String>("holder").map_err(db)?,
                row.try_get::<_, i64>("term").map_err(db)?,
            )),
            None => None,
        };
        // On a stale token, dropping `tx` rolls it back.
        postgres::check_fenced(namespace, role, holder, token, current)?;
        Ok(tx)
    }
}
