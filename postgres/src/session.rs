//! The node's dedicated session connection, once for every driver: opening
//! it (with the transaction-pooler probe), lending it to one call at a
//! time, the one cancellation rule, and telling
//! [`Lock::session_closed`](regent_core::Lock::session_closed) when its
//! connection ends by itself.
//!
//! # The cancellation rule
//!
//! Every call runs in a task of its own and the caller waits for its reply.
//! A caller that gives up (the driver's per-attempt timeout, a cancelled
//! task) never interrupts a statement half-way: a call already running
//! completes and its effects — a granted lock, a committed claim — are
//! recorded; a call that has not started yet is skipped. So dropping a call
//! never costs the session.
//!
//! The session is closed (and every lock on it released) exactly when a
//! call reports [`BackendError::SessionLost`]: an advisory-lock statement
//! (try-lock, unlock, validation, ping) that failed, any statement whose
//! connection broke, or no reply within the call timeout (the statement
//! timeout plus slack). A failed DML statement (claim, renew, expire) rolls
//! back by itself and leaves the session — and the node's other roles —
//! alone.
//!
//! # Health
//!
//! A `watch` channel carries [`Health`]: the generation of the newest
//! session, whether it is open, and — when its connection ended by itself
//! (a driver that can see it calls the [`CloseHook`]) — why, and who has
//! been told. A waiter in `session_closed` only completes for a session that
//! was open when it was called (or opened later), and such an end is
//! reported once: to the `session_closed` waiters if there are any, else to
//! the next call.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use regent_core::{BackendError, Role};
use tokio::sync::{Mutex, oneshot, watch};

use crate::driver::{CloseHook, Conn, DbError, Driver, OpenSpec};
use crate::ops::{Op, Out};
use crate::{AdvisoryKey, Incarnation, SessionSettings, Settings, Statements};

/// Who learned that a session closed by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reporter {
    /// `session_closed` waiters completed for it.
    Watchers,
    /// A call returned [`BackendError::SessionLost`] for it.
    Call,
}

/// The state published on the health channel.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health {
    /// Generation of the newest session published (0: none yet).
    generation: u64,
    /// Whether that session is open.
    open: bool,
    /// Its `pg_backend_pid()`, while open.
    pid: Option<i32>,
    /// Why its connection ended, if it ended by itself.
    closed_itself: Option<String>,
    /// Who has been told about `closed_itself`.
    reported: Option<Reporter>,
}

/// One open session and the advisory locks this backend took on it.
pub(crate) struct Session<C> {
    pub(crate) conn: C,
    /// `pg_backend_pid()` of the session.
    pub(crate) pid: i32,
    generation: u64,
    /// Keys held on this session and the role each was taken for. A key is
    /// never locked twice: advisory locks are re-entrant, and one unlock
    /// would leave a doubly-taken lock held.
    pub(crate) held: HashMap<AdvisoryKey, Role>,
    /// The claims this session committed, per key: the term and the end of
    /// the lease it replaced (epoch µs; `None` when that lease had already
    /// ended or there was none). A release that does not name a term — the
    /// machine's caller gave up on the claim, or released before it led —
    /// shortens such a claim to that end, so it never makes the next holder
    /// wait longer than the predecessor's own lease (see `Op::Release`).
    pub(crate) claims: HashMap<AdvisoryKey, (regent_core::Term, Option<i64>)>,
}

/// What the mutex guards: the open session, if any, and a loss no caller
/// has been told about yet.
struct Slot<C> {
    session: Option<Session<C>>,
    unreported_loss: Option<String>,
}

/// The engine's shared state: the driver, the settings, the statements and
/// the session.
pub(crate) struct Engine<D: Driver> {
    pub(crate) driver: D,
    pub(crate) settings: Settings,
    pub(crate) sql: Statements,
    /// Written into every row this backend claims (see [`Incarnation`]).
    pub(crate) incarnation: Incarnation,
    /// Lease mode: what stands in for the locks (see
    /// [`LeaseLock`](crate::lease_mode::LeaseLock)).
    pub(crate) lease_locks:
        std::sync::Mutex<HashMap<crate::lease_mode::LockKey, crate::lease_mode::LeaseLock>>,
    slot: Mutex<Slot<D::Conn>>,
    health: watch::Sender<Health>,
    next_generation: AtomicU64,
    pub(crate) warned_not_permitted: AtomicBool,
}

type Reply = oneshot::Sender<Result<Out, BackendError>>;

impl<D: Driver> Engine<D> {
    pub(crate) fn new(driver: D, settings: Settings) -> Self {
        let (health, _) = watch::channel(Health::default());
        Self {
            sql: Statements::new(&settings.table),
            incarnation: Incarnation::random(),
            lease_locks: std::sync::Mutex::new(HashMap::new()),
            driver,
            settings,
            slot: Mutex::new(Slot {
                session: None,
                unreported_loss: None,
            }),
            health,
            next_generation: AtomicU64::new(0),
            warned_not_permitted: AtomicBool::new(false),
        }
    }

    /// Runs `op` on the session in a task of its own and waits for the
    /// result (see the module docs for what giving up does).
    pub(crate) async fn submit(self: &Arc<Self>, op: Op) -> Result<Out, BackendError> {
        let (reply, result) = oneshot::channel();
        let engine = Arc::clone(self);
        tokio::spawn(async move { engine.run(op, reply).await });
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
        if let Some(reason) = slot.unreported_loss.take() {
            if let Err(Err(BackendError::SessionLost { reason })) =
                reply.send(Err(BackendError::SessionLost { reason }))
            {
                slot.unreported_loss = Some(reason);
            }
            return;
        }
        if let Err(e) = self.reap(&mut slot) {
            let _ = reply.send(Err(e));
            return;
        }
        if op.needs_no_session() && slot.session.is_none() {
            let _ = reply.send(Ok(Out::Unit)); // no session: nothing held
            return;
        }
        let mut session = match slot.session.take() {
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
        let touches_locks = op.touches_locks();
        let result = self.execute(&mut session, op).await;
        match &result {
            Err(err) if err.is_session_lost() || touches_locks => {
                tracing::warn!(
                    pid = session.pid,
                    locks = session.held.len(),
                    error = %err,
                    "closing the regent lock session after an error; its locks are released"
                );
                let generation = session.generation;
                self.retire(session).close_in_background();
                self.mark_reported(generation);
            }
            _ => slot.session = Some(session),
        }
        if let Err(Err(err @ BackendError::SessionLost { .. })) = reply.send(result) {
            slot.unreported_loss = Some(format!("{err} (while no caller was waiting)"));
        }
    }

    /// Removes a session whose connection has ended from the slot. If its
    /// end has not been reported to anyone, reports it now (as the error).
    fn reap(&self, slot: &mut Slot<D::Conn>) -> Result<(), BackendError> {
        let Some(session) = slot.session.as_ref() else {
            return Ok(());
        };
        let (alive, closed_reason) = {
            let h = self.health.borrow();
            let current = h.generation == session.generation && h.open;
            (
                current && !session.conn.is_closed(),
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
    fn retire(&self, session: Session<D::Conn>) -> Retired<D::Conn> {
        self.health.send_if_modified(|h| {
            if h.generation == session.generation && h.open {
                h.open = false;
                h.pid = None;
            }
            false
        });
        Retired(session.conn)
    }

    /// Closes the session, if any, once the call in flight (if any) is
    /// done, and forgets any unreported loss: the caller assumes nothing is
    /// held. Runs to completion even if the caller gives up.
    pub(crate) async fn close_session(self: &Arc<Self>) {
        let engine = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut slot = engine.slot.lock().await;
            slot.unreported_loss = None;
            engine.health.send_if_modified(|h| {
                h.reported.get_or_insert(Reporter::Call);
                false
            });
            if let Some(session) = slot.session.take() {
                tracing::debug!(pid = session.pid, "closing the regent lock session");
                engine.retire(session).close().await;
            }
        });
        let _ = task.await;
    }

    /// `pg_backend_pid()` of the open session, if one is open.
    pub(crate) fn session_pid(&self) -> Option<i32> {
        let h = self.health.borrow();
        if h.open { h.pid } else { None }
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

    /// Runs one statement future on the session, bounded by the call
    /// timeout. A timeout is a lost session: the connection's state is
    /// unknown.
    pub(crate) async fn bounded<T, F>(&self, fut: F) -> Result<T, BoundedError>
    where
        F: Future<Output = Result<T, DbError>>,
    {
        let limit = self.settings.call_timeout();
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(BoundedError::Db(e)),
            Err(_) => Err(BoundedError::NoReply(crate::no_reply_error(limit))),
        }
    }

    /// The spec of a dedicated connection named `application_name` with
    /// `gucs` (as startup options unless the settings say `SET`).
    pub(crate) fn spec(
        &self,
        application_name: String,
        gucs: &[(&'static str, String)],
    ) -> OpenSpec {
        let s = &self.settings;
        OpenSpec {
            application_name,
            startup_gucs: match s.session_settings {
                SessionSettings::StartupOptions => gucs.to_vec(),
                SessionSettings::SetCommands => Vec::new(),
            },
            keepalives: Some((s.keepalives_idle, s.keepalives_interval, s.keepalives_count)),
            connect_timeout: s.call_timeout(),
            url: None,
        }
    }

    async fn open(&self) -> Result<Session<D::Conn>, BackendError> {
        let limit = self.settings.call_timeout();
        match tokio::time::timeout(limit, self.open_unbounded()).await {
            Ok(result) => result,
            Err(_) => Err(crate::open_timeout_error(limit)),
        }
    }

    fn connect_error(&self, e: &DbError) -> BackendError {
        crate::connect_error(e.sqlstate.as_deref(), &self.settings.table, &e.message)
    }

    async fn open_unbounded(&self) -> Result<Session<D::Conn>, BackendError> {
        let gucs = self.settings.session_gucs();
        let spec = self.spec(self.settings.application_name.clone(), &gucs);
        // Never reused, even if this open is abandoned halfway.
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
        let ended = Arc::new(AtomicBool::new(false));
        let hook = close_hook(self.health.clone(), generation, Arc::clone(&ended));
        let mut conn = self
            .driver
            .open(&spec, hook)
            .await
            .map_err(|e| self.connect_error(&e))?;
        if self.settings.session_settings == SessionSettings::SetCommands
            && let Err(e) = conn.simple(&crate::set_commands(&gucs)).await
        {
            conn.close().await;
            return Err(self.connect_error(&e));
        }
        match self.probe_pooler(&mut conn).await {
            Ok(pid) => {
                self.health.send_modify(|h| {
                    *h = Health {
                        generation,
                        open: true,
                        pid: Some(pid),
                        closed_itself: None,
                        reported: None,
                    };
                });
                let session = Session {
                    conn,
                    pid,
                    generation,
                    held: HashMap::new(),
                    claims: HashMap::new(),
                };
                if ended.load(Ordering::SeqCst) {
                    // The connection ended before we published it: nobody
                    // can have been told, and nothing is held on it.
                    self.retire(session).close_in_background();
                    return Err(BackendError::Transient(
                        "the database session closed right after it opened".to_owned(),
                    ));
                }
                tracing::debug!(pid, generation, "opened the regent lock session");
                Ok(session)
            }
            Err(e) => {
                conn.close().await;
                Err(e)
            }
        }
    }

    /// The transaction-pooler check: two separate `pg_backend_pid()` round
    /// trips (simple protocol, so a transaction pooler cannot break them
    /// first with a missing prepared statement), with a probe connection
    /// holding a transaction in between; see
    /// [`pooler_probe_error`](crate::pooler_probe_error). Returns the
    /// session's pid.
    async fn probe_pooler(&self, conn: &mut D::Conn) -> Result<i32, BackendError> {
        let first = self.simple_pid(conn, crate::BACKEND_PID).await?;
        let spec = self.spec(self.settings.probe_application_name(), &[]);
        let mut probe = self
            .driver
            .open(&spec, Box::new(|_| {}))
            .await
            .map_err(|e| self.connect_error(&e))?;
        let probe_pid = match self.simple_pid(&mut probe, crate::PROBE_BEGIN).await {
            Ok(pid) => pid,
            Err(e) => {
                end_probe(probe).await;
                return Err(e);
            }
        };
        let mut probe = Some(probe);
        let second = {
            let second = self.simple_pid(conn, crate::BACKEND_PID);
            tokio::pin!(second);
            tokio::select! {
                r = &mut second => r,
                () = tokio::time::sleep(crate::PROBE_PATIENCE) => {
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
        let second = second?;
        match crate::pooler_probe_error(first, second, probe_pid) {
            Some(msg) => Err(BackendError::Misconfigured(msg)),
            None => Ok(first),
        }
    }

    /// Runs `sql` (simple protocol) and reads the pid in its first row.
    async fn simple_pid(&self, conn: &mut D::Conn, sql: &str) -> Result<i32, BackendError> {
        let rows = conn.simple(sql).await.map_err(|e| self.connect_error(&e))?;
        rows.iter()
            .find_map(|row| row.first().cloned().flatten())
            .and_then(|v| v.parse::<i32>().ok())
            .ok_or_else(|| {
                BackendError::Transient("pg_backend_pid() returned no usable row".to_owned())
            })
    }
}

/// A statement on the session that failed: the database's answer, or no
/// answer at all.
pub(crate) enum BoundedError {
    /// The driver or the server reported an error.
    Db(DbError),
    /// No reply within the call timeout (already a `SessionLost`).
    NoReply(BackendError),
}

/// The hook a driver calls when the session's connection ends by itself:
/// publishes the end (if the session is still the current one and was not
/// closed by us).
fn close_hook(health: watch::Sender<Health>, generation: u64, ended: Arc<AtomicBool>) -> CloseHook {
    Box::new(move |reason: String| {
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
    })
}

/// A session's connection on its way to being closed.
struct Retired<C>(C);

impl<C: Conn> Retired<C> {
    async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.0.close()).await;
    }

    fn close_in_background(self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(self.close());
        }
    }
}

/// Rolls back the probe's transaction and closes the probe, each bounded
/// by a second; errors are only logged (the probe holds nothing).
async fn end_probe<C: Conn>(mut probe: C) {
    let limit = Duration::from_secs(1);
    let rolled_back = tokio::time::timeout(limit, probe.simple(crate::ROLLBACK)).await;
    if !matches!(rolled_back, Ok(Ok(_))) {
        tracing::debug!("the pooler probe connection did not roll back; closing it");
    }
    let _ = tokio::time::timeout(limit, probe.close()).await;
}
