//! The node's dedicated session connection: opening it, lending it to one
//! call at a time, and closing it on any error so no lock can leak.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use regent_core::{BackendError, DbTimestamp, Role};
use regent_postgres::{self as postgres, AdvisoryKey};
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Connection, Row};
use tokio::sync::{MutexGuard, oneshot};

use crate::Inner;
use crate::builder::{SessionSettings, session_gucs};
use crate::error::{connect_error, session_error};
use crate::ops::{Op, Out};

/// What the mutex guards: the open session, if any, and the reason a
/// session was lost without any caller having been told yet.
#[derive(Default)]
pub(crate) struct Slot {
    session: Option<Session>,
    unreported_loss: Option<String>,
}

/// One open session and the advisory locks this backend took on it.
pub(crate) struct Session {
    pub(crate) conn: PgConnection,
    /// `pg_backend_pid()` of the session.
    pub(crate) pid: i32,
    /// Keys held on this session and the role each was taken for. A key is
    /// never locked twice: advisory locks are re-entrant, and one unlock
    /// would leave a doubly-taken lock held.
    pub(crate) held: HashMap<AdvisoryKey, Role>,
}

/// Exclusive use of the open session by the task running one call.
///
/// Ends with [`Checkout::end`]: on `Ok` the session stays open, on `Err` it
/// is closed (releasing every lock on it). If the task is dropped before
/// that (the runtime shut down), the session is closed on drop and the next
/// call reports [`BackendError::SessionLost`].
struct Checkout<'a> {
    slot: MutexGuard<'a, Slot>,
    session: Option<Session>,
}

type Reply = oneshot::Sender<Result<Out, BackendError>>;

impl Checkout<'_> {
    /// Ends the call with `result` and hands it to the caller. A session
    /// error nobody receives is kept for the next call to report.
    fn end(mut self, result: Result<Out, BackendError>, reply: Reply) {
        match &result {
            Ok(_) => self.slot.session = self.session.take(),
            Err(err) => {
                if let Some(session) = self.session.take() {
                    tracing::warn!(
                        pid = session.pid,
                        locks = session.held.len(),
                        error = %err,
                        "closing the regent lock session after an error; its locks are released"
                    );
                }
            }
        }
        if let Err(Err(err)) = reply.send(result) {
            self.slot.unreported_loss = Some(format!("{err} (while no caller was waiting)"));
        }
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.slot.unreported_loss = Some(format!(
                "a call on session {} was abandoned mid-statement, so the session was closed",
                session.pid
            ));
        }
    }
}

impl Inner {
    /// Runs `op` on the session in a task of its own and waits for the
    /// result. Calls run one at a time, in order. A caller that gives up
    /// (its future is dropped) does not interrupt a call already running —
    /// it completes and its effects, such as a granted lock, are recorded —
    /// and a call that has not started yet is skipped.
    pub(crate) async fn submit(self: &Arc<Self>, op: Op) -> Result<Out, BackendError> {
        let (reply, result) = oneshot::channel();
        let inner = Arc::clone(self);
        tokio::spawn(async move { inner.run(op, reply).await });
        result.await.unwrap_or_else(|_| {
            Err(BackendError::SessionLost {
                reason: "the session task ended without a result".to_owned(),
            })
        })
    }

    async fn run(&self, op: Op, reply: Reply) {
        let mut slot = self.slot.lock().await;
        if reply.is_closed() {
            return; // the caller gave up before the call started
        }
        if matches!(op, Op::Unlock { .. }) && slot.session.is_none() {
            let _ = reply.send(Ok(Out::Unit)); // no session: nothing held
            return;
        }
        if let Some(reason) = slot.unreported_loss.take() {
            if let Err(Err(BackendError::SessionLost { reason })) =
                reply.send(Err(BackendError::SessionLost { reason }))
            {
                slot.unreported_loss = Some(reason);
            }
            return;
        }
        let session = match slot.session.take() {
            Some(session) => session,
            None => match self.open().await {
                Ok(session) => session,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            },
        };
        if reply.is_closed() {
            slot.session = Some(session); // the caller gave up while we connected
            return;
        }
        let mut co = Checkout {
            slot,
            session: Some(session),
        };
        let result = match co.session.as_mut() {
            Some(session) => self.execute(session, op).await,
            None => Ok(Out::Unit),
        };
        co.end(result, reply);
    }

    /// The backend pid of the open session, if any.
    pub(crate) async fn session_pid(&self) -> Option<i32> {
        self.slot.lock().await.session.as_ref().map(|s| s.pid)
    }

    /// Closes the session, if any, once the call in flight (if any) is
    /// done, and forgets any unreported loss. Runs to completion even if
    /// the caller gives up.
    pub(crate) async fn close_session(self: &Arc<Self>) {
        let inner = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut slot = inner.slot.lock().await;
            slot.unreported_loss = None;
            if let Some(session) = slot.session.take() {
                tracing::debug!(pid = session.pid, "closing the regent lock session");
                let _ = tokio::time::timeout(Duration::from_secs(1), session.conn.close()).await;
            }
        });
        let _ = task.await;
    }

    /// Runs one statement future on the session, bounded by the call
    /// timeout, mapping errors to session errors.
    pub(crate) async fn bounded<T, F>(&self, fut: F) -> Result<T, BackendError>
    where
        F: Future<Output = Result<T, sqlx::Error>>,
    {
        let limit = self.settings.call_timeout();
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(session_error(&e, &self.settings.table)),
            Err(_) => Err(postgres::no_reply_error(limit)),
        }
    }

    /// Maps a decoding error of a session row like a statement error.
    pub(crate) fn decoded<T>(&self, r: Result<T, sqlx::Error>) -> Result<T, BackendError> {
        r.map_err(|e| session_error(&e, &self.settings.table))
    }

    async fn open(&self) -> Result<Session, BackendError> {
        let limit = self.settings.call_timeout();
        match tokio::time::timeout(limit, self.open_unbounded()).await {
            Ok(result) => result,
            Err(_) => Err(postgres::open_timeout_error(limit)),
        }
    }

    async fn open_unbounded(&self) -> Result<Session, BackendError> {
        let table = &self.settings.table;
        let mut conn = PgConnection::connect_with(&self.session_options)
            .await
            .map_err(|e| connect_error(&e, table))?;
        if self.settings.session_settings == SessionSettings::SetCommands {
            let sets = postgres::set_commands(&session_gucs(&self.settings));
            sqlx::raw_sql(sqlx::AssertSqlSafe(sets))
                .execute(&mut conn)
                .await
                .map_err(|e| connect_error(&e, table))?;
        }
        // Two separate round trips (simple protocol, so a transaction pooler
        // cannot break them first with a missing prepared statement), with a
        // probe connection holding a transaction in between: see
        // `postgres::pooler_probe_error`.
        let first = simple_pid(&mut conn)
            .await
            .map_err(|e| connect_error(&e, table))?;
        let probe_options = self
            .session_options
            .clone()
            .application_name(&self.settings.probe_application_name());
        let mut probe = PgConnection::connect_with(&probe_options)
            .await
            .map_err(|e| connect_error(&e, table))?;
        let probe_pid = match pid_of(&mut probe, postgres::PROBE_BEGIN).await {
            Ok(pid) => pid,
            Err(e) => {
                end_probe(probe).await;
                return Err(connect_error(&e, table));
            }
        };
        let mut probe = Some(probe);
        let second = {
            let second = simple_pid(&mut conn);
            tokio::pin!(second);
            tokio::select! {
                r = &mut second => r,
                () = tokio::time::sleep(postgres::PROBE_PATIENCE) => {
                    // No other server connection is free behind the pooler:
                    // let go of the probe's, so the query can go on.
                    if let Some(p) = probe.take() {
                        end_probe(p).await;
                    }
                    second.await
                }
            }
        };
        if let Some(p) = probe.take() {
            end_probe(p).await;
        }
        let second = second.map_err(|e| connect_error(&e, table))?;
        if let Some(msg) = postgres::pooler_probe_error(first, second, probe_pid) {
            return Err(BackendError::Misconfigured(msg));
        }
        tracing::debug!(pid = first, "opened the regent lock session");
        Ok(Session {
            conn,
            pid: first,
            held: HashMap::new(),
        })
    }
}

async fn simple_pid(conn: &mut PgConnection) -> Result<i32, sqlx::Error> {
    pid_of(conn, postgres::BACKEND_PID).await
}

/// Runs `sql` (simple protocol) and reads the `pid` column of its row.
async fn pid_of(conn: &mut PgConnection, sql: &'static str) -> Result<i32, sqlx::Error> {
    let row = sqlx::raw_sql(sql).fetch_one(&mut *conn).await?;
    row.try_get::<i32, _>("pid")
}

/// Rolls back the probe's transaction and closes the probe, each bounded
/// by a second; errors are only logged (the probe holds nothing).
async fn end_probe(mut probe: PgConnection) {
    let limit = Duration::from_secs(1);
    let rolled_back =
        tokio::time::timeout(limit, sqlx::raw_sql(postgres::ROLLBACK).execute(&mut probe)).await;
    if !matches!(rolled_back, Ok(Ok(_))) {
        tracing::debug!("the pooler probe connection did not roll back; closing it");
    }
    let _ = tokio::time::timeout(limit, probe.close()).await;
}

/// Reads the `db_now_us` column.
pub(crate) fn db_now(row: &PgRow) -> Result<DbTimestamp, sqlx::Error> {
    Ok(DbTimestamp::from_micros(row.try_get("db_now_us")?))
}
