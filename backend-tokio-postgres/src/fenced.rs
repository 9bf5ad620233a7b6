//! Fenced transactions: leader-only writes that a stale leader cannot make.

use deadpool_postgres::Object;
use regent_core::Fence;
use regent_postgres as postgres;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, ToStatement};

use regent_postgres::TxExec;
use regent_postgres::driver::DbError;

use crate::TokioPgBackend;
use crate::driver::OnClient;
use crate::error::describe;
use regent_postgres::FencedError;

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
    /// Opens a transaction on a pooled connection that commits only while
    /// `holder` still holds `role` at `token` (see
    /// [`PgBackend::fence`](regent_postgres::PgBackend::fence)): a deposed
    /// leader's write fails with [`FencedError::Stale`], and a takeover
    /// cannot claim the role until this transaction ends. The server ends
    /// it if it sits idle longer than `fenced_idle_timeout` (10 s by
    /// default), so a frozen caller cannot hold off a takeover forever.
    pub async fn fenced(&self, fence: &Fence) -> Result<FencedTransaction, FencedError> {
        let client = self.pool().get().await.map_err(|e| {
            FencedError::Database(DbError::other(format!(
                "no pooled connection: {}; enlarge the pool",
                describe(&e)
            )))
        })?;
        // From here on, dropping `tx` (an error, or this future cancelled
        // even while BEGIN is in flight) rolls back before the connection
        // returns to the pool.
        let tx = FencedTransaction {
            client: Some(client),
            done: false,
        };
        let client: &Client = tx.object();
        let mut on = OnClient(client);
        on.tx_simple(postgres::BEGIN)
            .await
            .map_err(FencedError::Database)?;
        // On a stale token, dropping `tx` rolls it back.
        self.fence(&mut on, fence).await?;
        Ok(tx)
    }

    /// Fences a transaction you opened yourself (on any pool or connection
    /// to this database, e.g. a `tokio_postgres::Transaction` or a client
    /// inside one): after this returns `Ok`, the transaction commits only
    /// while `fence` holds. Run it first in the transaction.
    ///
    /// ```no_run
    /// # async fn demo(backend: regent_tokio_postgres::TokioPgBackend, mut client: tokio_postgres::Client, fence: regent_core::Fence)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// let tx = client.transaction().await?;
    /// backend.check_fence(&tx, &fence).await?;
    /// tx.execute("INSERT INTO jobs_done (term) VALUES ($1)", &[&fence.term()]).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn check_fence<C>(&self, client: &C, fence: &Fence) -> Result<(), FencedError>
    where
        C: GenericClient + Sync,
    {
        self.fence(&mut OnClient(client), fence).await
    }
}
