//! The node's dedicated session connection: opening it, driving its
//! connection future in a task of its own, lending it to one call at a
//! time, closing it on any error so no lock can leak, and telling
//! [`Lock::session_closed`](regent_core::Lock::session_closed) the moment
//! its connection ends.
//!
//! # Health
//!
//! A `tokio::sync::watch` channel carries [`Health`]: the generation of the
//! newest session, whether it is open, and — when its connection ended by
//! itself rather than being closed by us — why, and who has been told. A
//! waiter in `session_closed` only completes for a session that was open
//! when it was called (or opened later), and a session that closed by itself
//! is reported once: to the `session_closed` waiters if there are any, else
//! to the next call as [`BackendError::SessionLost`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use regent_core::{BackendError, DbTimestamp, Role};
use regent_postgres::{self as postgres, AdvisoryKey};
use tokio::sync::{MutexGuard, watch};
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Row, SimpleQueryMessage, Statement};

use crate::Inner;
use crate::builder::SessionSettings;
use crate::connect::MessageStream;
use crate::error::{connect_error, describe, session_error};

/// Who learned that a session closed by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reporter {
    /// `session_closed` waiters completed for it.
    Watchers,
    /// A call returned [`BackendError::SessionLost`] for it.
    Call,
}

/// The state published on the health channel.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health {
    /// Generation of the newest session published (0: none yet).
    pub(crate) generation: u64,
    /// Whether that session is open.
    pub(crate) open: bool,
    /// Its `pg_backend_pid()`, while open.
    pub(crate) pid: Option<i32>,
    /// Why its connection ended, if it ended by itself.
    pub(crate) closed_itself: Option<String>,
    /// Who has been told about `closed_itself`.
    pub(crate) reported: Option<Reporter>,
}

/// What the mutex guards: the open session, if any, and the reason a call
/// was abandoned without any caller having been told yet.
#[derive(Default)]
pub(crate) struct Slot {
    session: Option<Session>,
    abandoned: Option<String>,
}

/// The statements prepared on a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    TryLock,
    Claim,
    Renew,
    Expire,
    Held,
    Unlock,
    Now,
    TableExists,
}

/// One open session and the advisory locks this backend took on it.
pub(crate) struct Session {
    client: Client,
    /// `pg_backend_pid()` of the session.
    pub(crate) pid: i32,
    generation: u64,
    /// Keys held on this session and the role each was taken for. A key is
    /// never locked twice: advisory locks are re-entrant, and one unlock
    /// would leave a doubly-taken lock held.
    pub(crate) held: HashMap<AdvisoryKey, Role>,
    prepared: HashMap<Kind, Statement>,
    driver: JoinHandle<()>,
}

impl Session {
    /// Closes the connection and waits (at most one second) until its
    /// driver has finished, so the server has been told; then gives up on
    /// it hard (dropping the socket, which the server sees as EOF).
    async fn close(self) {
        let Session {
            client,
            mut driver,
            pid,
            ..
        } = self;
        drop(client); // ends the connection future: Terminate, then close
        if tokio::time::timeout(Duration::from_secs(1), &mut driver)
            .await
            .is_err()
        {
            tracing::warn!(
                pid,
                "regent lock session did not close within 1 s; dropping it"
            );
            driver.abort();
        }
    }

    /// [`Session::close`] without waiting for it.
    fn close_in_background(self) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(self.close());
            }
            Err(_) => self.driver.abort(),
        }
    }
}

/// Exclusive use of the session for one call.
///
/// The call ends with [`Checkout::finish`] (the session stays open) or
/// [`Checkout::fail`] (the session is closed). If the call's future is
/// dropped before either — a caller's timeout, a cancelled task — the
/// session is closed on drop, because the server may have run part of the
/// call (granted a lock, say) that nobody recorded; the next call reports
/// that as [`BackendError::SessionLost`].
pub(crate) struct Checkout<'a> {
    inner: &'a Inner,
    slot: MutexGuard<'a, Slot>,
    session: Option<Session>,
}

impl Checkout<'_> {
    /// The session.
    pub(crate) fn session(&mut self) -> Result<&mut Session, BackendError> {
        self.session
            .as_mut()
            .ok_or_else(|| BackendError::SessionLost {
                reason: "the session was already closed".to_owned(),
            })
    }

    /// Ends the call; the session stays open for the next one.
    pub(crate) fn finish(mut self) {
        self.slot.session = self.session.take();
    }

    /// Ends the call with an error: closes the session (releasing every lock
    /// on it) and returns `err`.
    pub(crate) fn fail(mut self, err: BackendError) -> BackendError {
        if let Some(session) = self.session.take() {
            tracing::warn!(
                pid = session.pid,
                locks = session.held.len(),
                error = %err,
                "closing the regent lock session after an error; its locks are released"
            );
            let generation = session.generation;
            self.inner.retire(session).close_in_background();
            // This error is the report: `session_closed` must not repeat it.
            self.inner.mark_reported(generation);
        }
        err
    }

    /// Ends the call with `result`: [`Checkout::finish`] on `Ok`,
    /// [`Checkout::fail`] on `Err`.
    pub(crate) fn end<T>(self, result: Result<T, BackendError>) -> Result<T, BackendError> {
        match result {
            Ok(v) => {
                self.finish();
                Ok(v)
            }
            Err(e) => Err(self.fail(e)),
        }
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            tracing::warn!(
                pid = session.pid,
                locks = session.held.len(),
                "a call on the regent lock session was abandoned mid-statement; closing the session"
            );
            self.slot.abandoned = Some(format!(
                "a call on session {} was abandoned mid-statement (timed out or cancelled), so \
                 the session was closed",
                session.pid
            ));
            let generation = session.generation;
            self.inner.retire(session).close_in_background();
            // The next call reports it.
            self.inner.mark_reported(generation);
        }
    }
}

impl Inner {
    /// Takes the session for one call, opening one if none is open. A loss
    /// not yet reported to anyone is reported now, once.
    pub(crate) async fn checkout(&self) -> Result<Checkout<'_>, BackendError> {
        let mut slot = self.slot.lock().await;
        if let Some(reason) = slot.abandoned.take() {
            return Err(BackendError::SessionLost { reason });
        }
        self.reap(&mut slot)?;
        let session = match slot.session.take() {
            Some(session) => session,
            None => self.open().await?,
        };
        Ok(Checkout {
            inner: self,
            slot,
            session: Some(session),
        })
    }

    /// Like [`Inner::checkout`], but `None` when no live session is open
    /// (and so no lock is held).
    pub(crate) async fn checkout_open(&self) -> Result<Option<Checkout<'_>>, BackendError> {
        let mut slot = self.slot.lock().await;
        if let Some(reason) = slot.abandoned.take() {
            return Err(BackendError::SessionLost { reason });
        }
        self.reap(&mut slot)?;
        let Some(session) = slot.session.take() else {
            return Ok(None);
        };
        Ok(Some(Checkout {
            inner: self,
            slot,
            session: Some(session),
        }))
    }

    /// Removes a session whose connection has ended from the slot. If its
    /// end has not been reported to anyone, reports it now (as the error).
    fn reap(&self, slot: &mut Slot) -> Result<(), BackendError> {
        let Some(session) = slot.session.as_ref() else {
            return Ok(());
        };
        let (alive, closed_reason) = {
            let h = self.health.borrow();
            let current = h.generation == session.generation && h.open;
            (
                current && !session.client.is_closed(),
                h.closed_itself.clone(),
            )
        };
        if alive {
            return Ok(());
        }
        let Some(session) = slot.session.take() else {
            return Ok(());
        };
        let pid = session.pid;
        let generation = session.generation;
        self.retire(session).close_in_background();
        if self.mark_reported(generation) {
            let reason =
                closed_reason.unwrap_or_else(|| format!("the connection of session {pid} closed"));
            return Err(BackendError::SessionLost { reason });
        }
        Ok(())
    }

    /// Records that a call reports (or will report) the end of session
    /// `generation`, unless someone already did; returns whether it marked.
    fn mark_reported(&self, generation: u64) -> bool {
        let mut marked = false;
        self.health.send_if_modified(|h| {
            if h.generation == generation && h.reported.is_none() {
                h.reported = Some(Reporter::Call);
                marked = true;
            }
            false
        });
        marked
    }

    /// Marks `session` as closed by us (so `session_closed` waiters do not
    /// fire for it) and hands it back for closing.
    fn retire(&self, session: Session) -> Session {
        self.health.send_if_modified(|h| {
            if h.generation == session.generation && h.open {
                h.open = false;
                h.pid = None;
            }
            false
        });
        session
    }

    /// Closes the session, if any, waits until its connection has ended, and
    /// forgets any unreported loss: the caller assumes nothing is held.
    pub(crate) async fn close_session(&self) {
        let mut slot = self.slot.lock().await;
        slot.abandoned = None;
        self.health.send_if_modified(|h| {
            h.reported.get_or_insert(Reporter::Call);
            false
        });
        if let Some(session) = slot.session.take() {
            tracing::debug!(pid = session.pid, "closing the regent lock session");
            self.retire(session).close().await;
        }
    }

    /// Completes when a session open at the time of the call (or opened
    /// later) has its connection end by itself, unless a call already
    /// reported that end.
    pub(crate) async fn session_closed(&self) {
        let mut rx = self.health.subscribe();
        let min_generation = {
            let h = rx.borrow_and_update();
            if h.open {
                h.generation
            } else {
                h.generation + 1
            }
        };
        loop {
            if rx.changed().await.is_err() {
                // Cannot happen while `self` (which owns the sender) lives.
                std::future::pending::<()>().await;
            }
            let mut fire = false;
            self.health.send_if_modified(|h| {
                if h.generation >= min_generation
                    && h.closed_itself.is_some()
                    && h.reported != Some(Reporter::Call)
                {
                    h.reported = Some(Reporter::Watchers);
                    fire = true;
                }
                false
            });
            if fire {
                return;
            }
        }
    }

    /// Runs one prepared statement of `kind` on the session, bounded by the
    /// call timeout, mapping errors to session errors.
    pub(crate) async fn run(
        &self,
        session: &mut Session,
        kind: Kind,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, BackendError> {
        let limit = self.settings.call_timeout();
        let sql = &self.sql;
        let fut = async {
            let statement = match session.prepared.get(&kind) {
                Some(s) => s.clone(),
                None => {
                    let text = match kind {
                        Kind::TryLock => &sql.try_lock,
                        Kind::Claim => &sql.claim,
                        Kind::Renew => &sql.renew,
                        Kind::Expire => &sql.expire,
                        Kind::Held => &sql.held,
                        Kind::Unlock => &sql.unlock,
                        Kind::Now => &sql.now,
                        Kind::TableExists => &sql.table_exists,
                    };
                    let s = session.client.prepare(text).await?;
                    session.prepared.insert(kind, s.clone());
                    s
                }
            };
            session.client.query(&statement, params).await
        };
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(session_error(&e, &self.settings.table)),
            Err(_) => Err(postgres::no_reply_error(limit)),
        }
    }

    /// Maps a decoding error of a session row like a statement error.
    pub(crate) fn decoded<T>(
        &self,
        r: Result<T, tokio_postgres::Error>,
    ) -> Result<T, BackendError> {
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
        let (client, stream) = (self.connector)(self.session_config.clone())
            .await
            .map_err(|e| connect_error(&e, table))?;
        // Never reused, even if this open is abandoned halfway.
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
        let ended = Arc::new(AtomicBool::new(false));
        let driver = tokio::spawn(drive(
            stream,
            generation,
            self.health.clone(),
            Arc::clone(&ended),
        ));
        // From here on, dropping `client` (on any error) closes the
        // connection and ends the driver.
        if self.settings.session_settings == SessionSettings::SetCommands {
            client
                .batch_execute(&postgres::set_commands(&self.settings.session_gucs()))
                .await
                .map_err(|e| connect_error(&e, table))?;
        }
        // Two separate round trips (simple protocol, so a transaction pooler
        // cannot break them first with a missing prepared statement), with a
        // probe connection holding a transaction in between: see
        // `postgres::pooler_probe_error`.
        let first = self.simple_pid(&client, postgres::BACKEND_PID).await?;
        let opened = self.open_probe().await?;
        let probe_pid = match self.simple_pid(&opened.client, postgres::PROBE_BEGIN).await {
            Ok(pid) => pid,
            Err(e) => {
                opened.end().await;
                return Err(e);
            }
        };
        let mut probe = Some(opened);
        let second = {
            let second = self.simple_pid(&client, postgres::BACKEND_PID);
            tokio::pin!(second);
            tokio::select! {
                r = &mut second => r,
                () = tokio::time::sleep(postgres::PROBE_PATIENCE) => {
                    // No other server connection is free behind the pooler:
                    // let go of the probe's, so the query can go on.
                    if let Some(p) = probe.take() {
                        p.end().await;
                    }
                    second.await
                }
            }
        };
        if let Some(p) = probe.take() {
            p.end().await;
        }
        let second = second?;
        if let Some(msg) = postgres::pooler_probe_error(first, second, probe_pid) {
            return Err(BackendError::Misconfigured(msg));
        }
        self.health.send_modify(|h| {
            *h = Health {
                generation,
                open: true,
                pid: Some(first),
                closed_itself: None,
                reported: None,
            };
        });
        let session = Session {
            client,
            pid: first,
            generation,
            held: HashMap::new(),
            prepared: HashMap::new(),
            driver,
        };
        if ended.load(Ordering::SeqCst) {
            // The connection ended before we published it: nobody can have
            // been told, and nothing is held on it.
            self.retire(session).close_in_background();
            return Err(BackendError::Transient(
                "the database session closed right after it opened".to_owned(),
            ));
        }
        tracing::debug!(pid = first, generation, "opened the regent lock session");
        Ok(session)
    }

    /// Opens the short-lived probe connection of the transaction-pooling
    /// check, with the session's config (so through the same pooler).
    async fn open_probe(&self) -> Result<Probe, BackendError> {
        let mut config = self.session_config.clone();
        config.application_name(self.settings.probe_application_name());
        let (client, mut stream) = (self.connector)(config)
            .await
            .map_err(|e| connect_error(&e, &self.settings.table))?;
        let driver = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
        Ok(Probe { client, driver })
    }

    /// Runs `sql` (simple protocol) and reads the pid in its first row.
    async fn simple_pid(&self, client: &Client, sql: &str) -> Result<i32, BackendError> {
        let table = &self.settings.table;
        let messages = client
            .simple_query(sql)
            .await
            .map_err(|e| connect_error(&e, table))?;
        messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse::<i32>().ok()),
                _ => None,
            })
            .ok_or_else(|| {
                BackendError::Transient("pg_backend_pid() returned no usable row".to_owned())
            })
    }
}

/// The probe connection of the transaction-pooling check and the task
/// driving it.
struct Probe {
    client: Client,
    driver: JoinHandle<()>,
}

impl Probe {
    /// Rolls back the probe's transaction and closes it, each bounded by a
    /// second; errors are only logged (the probe holds nothing).
    async fn end(self) {
        let Probe { client, mut driver } = self;
        let limit = Duration::from_secs(1);
        let rolled_back =
            tokio::time::timeout(limit, client.batch_execute(postgres::ROLLBACK)).await;
        if !matches!(rolled_back, Ok(Ok(()))) {
            tracing::debug!("the pooler probe connection did not roll back; closing it");
        }
        drop(client);
        if tokio::time::timeout(limit, &mut driver).await.is_err() {
            driver.abort();
        }
    }
}

/// Drives the session's connection until it ends, then publishes the end
/// (if the session is still the current one and was not closed by us).
async fn drive(
    mut stream: MessageStream,
    generation: u64,
    health: watch::Sender<Health>,
    ended: Arc<AtomicBool>,
) {
    let reason = loop {
        match stream.next().await {
            Some(Ok(AsyncMessage::Notice(notice))) => {
                tracing::debug!(
                    severity = notice.severity(),
                    message = notice.message(),
                    "notice on the regent lock session"
                );
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break format!("the session's connection failed: {}", describe(&e)),
            None => break "the server closed the session's connection".to_owned(),
        }
    };
    drop(stream);
    ended.store(true, Ordering::SeqCst);
    let fired = health.send_if_modified(|h| {
        if h.generation == generation && h.open {
            h.open = false;
            h.pid = None;
            h.closed_itself = Some(reason.clone());
            h.reported = None;
            true
        } else {
            false
        }
    });
    if fired {
        tracing::warn!(generation, %reason, "the regent lock session closed; its locks are gone");
    }
}

/// Reads the `db_now_us` column.
pub(crate) fn db_now(row: &Row) -> Result<DbTimestamp, tokio_postgres::Error> {
    Ok(DbTimestamp::from_micros(row.try_get("db_now_us")?))
}
