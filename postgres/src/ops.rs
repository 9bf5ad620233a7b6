//! The calls that run on the lock session, as owned values so that a
//! session task can run each to completion even if its caller gives up,
//! and the error rule of each.

use std::time::Duration;

use regent_core::{
    BackendError, ClaimOutcome, DbTimestamp, HeldLease, Namespace, NodeId, RenewOutcome, Role,
    Term, TryLockOutcome,
};

use crate::driver::{Conn, DbError, Driver, Param, Row};
use crate::lease::lease_from_row;
use crate::session::{BoundedError, Engine, Session};
use crate::{AdvisoryKey, Planned, TryLockParams};

/// SQLSTATE `55P03`: lock_not_available (`NOWAIT` found the row locked).
pub const SQLSTATE_LOCK_NOT_AVAILABLE: &str = "55P03";

/// A call on the session.
#[derive(Debug)]
pub(crate) enum Op {
    Connect,
    TryLock {
        ns: Namespace,
        roles: Vec<Role>,
    },
    Unlock {
        ns: Namespace,
        role: Role,
    },
    Held {
        ns: Namespace,
        roles: Vec<Role>,
    },
    Ping,
    Claim {
        ns: Namespace,
        role: Role,
        holder: NodeId,
        lease: Duration,
    },
    Renew {
        ns: Namespace,
        holder: NodeId,
        held: Vec<HeldLease>,
        lease: Duration,
    },
    Expire {
        ns: Namespace,
        role: Role,
        holder: NodeId,
        term: Term,
    },
    Release {
        ns: Namespace,
        role: Role,
        holder: NodeId,
        term: Option<Term>,
    },
}

impl Op {
    /// Calls that have nothing to do without an open session (nothing can
    /// be held): they never open one.
    pub(crate) fn needs_no_session(&self) -> bool {
        matches!(self, Op::Unlock { .. } | Op::Release { term: None, .. })
    }

    /// Statements that may change or reveal the session's advisory locks:
    /// if one fails, nobody knows which locks the session holds (a session
    /// lock taken by a statement that then failed stays held), so the
    /// session is closed. DML (claim, renew, expire) and the table check
    /// roll back by themselves and leave the session alone.
    pub(crate) fn touches_locks(&self) -> bool {
        matches!(
            self,
            Op::TryLock { .. }
                | Op::Unlock { .. }
                | Op::Held { .. }
                | Op::Ping
                | Op::Release { .. }
        )
    }
}

/// The result of an [`Op`].
#[derive(Debug)]
pub(crate) enum Out {
    Unit,
    TryLock(TryLockOutcome),
    Roles(Vec<Role>),
    Claim(ClaimOutcome),
    Renew(RenewOutcome),
    /// Whether the release notification went out with the release.
    Released(bool),
}

/// An [`Out`] of the wrong kind: a bug, reported rather than panicking.
pub(crate) fn mismatch(out: Out) -> BackendError {
    BackendError::Transient(format!("internal error: unexpected session result {out:?}"))
}

/// Reads the `db_now_us` column.
pub(crate) fn db_now(row: &Row) -> Result<DbTimestamp, DbError> {
    Ok(DbTimestamp::from_micros(row.int("db_now_us")?))
}

impl<D: Driver> Engine<D> {
    /// This backend's incarnation as a statement parameter.
    pub(crate) fn incarnation_param(&self) -> Param {
        Param::Text(self.incarnation.as_str().to_owned())
    }

    /// Maps an error of a statement that touches locks: the session goes.
    fn lock_error(&self, e: BoundedError) -> BackendError {
        match e {
            BoundedError::Db(e) => {
                crate::session_error(e.sqlstate.as_deref(), &self.settings.table, e.message)
            }
            BoundedError::NoReply(e) => e,
        }
    }

    /// Maps an error of a DML statement on the session: the statement
    /// rolled back; the session stays unless its connection broke.
    pub(crate) fn dml_error(&self, e: BoundedError) -> BackendError {
        match e {
            BoundedError::NoReply(e) => e,
            BoundedError::Db(e) if e.connection_lost => {
                BackendError::SessionLost { reason: e.message }
            }
            BoundedError::Db(e) if e.sqlstate.as_deref() == Some(SQLSTATE_LOCK_NOT_AVAILABLE) => {
                BackendError::Busy(format!(
                    "the lease row is locked by a fenced transaction still in flight ({}); \
                     retrying later",
                    e.message
                ))
            }
            BoundedError::Db(e) => {
                crate::pool_error(e.sqlstate.as_deref(), &self.settings.table, e.message)
            }
        }
    }

    /// Runs one statement on the session, bounded by the call timeout.
    async fn q(
        &self,
        s: &mut Session<D::Conn>,
        sql: &str,
        params: &[Param],
    ) -> Result<Vec<Row>, BoundedError> {
        self.bounded(s.conn.query(sql, params)).await
    }

    /// Runs `op` on `session`.
    pub(crate) async fn execute(
        &self,
        s: &mut Session<D::Conn>,
        op: Op,
    ) -> Result<Out, BackendError> {
        let touches_locks = op.touches_locks();
        let result = match op {
            Op::Connect => self.check_table(s).await.map(|()| Out::Unit),
            Op::TryLock { ns, roles } => {
                let planned = plan(&ns, &roles, &s.held);
                self.try_lock(s, &ns, &planned).await.map(Out::TryLock)
            }
            Op::Unlock { ns, role } => self.unlock(s, &ns, &role).await.map(|()| Out::Unit),
            Op::Held { ns, roles } => self.held(s, &ns, &roles).await.map(Out::Roles),
            Op::Ping => {
                let sql = self.sql.now.clone();
                self.q(s, &sql, &[])
                    .await
                    .map(|_| Out::Unit)
                    .map_err(|e| self.lock_error(e))
            }
            Op::Claim {
                ns,
                role,
                holder,
                lease,
            } => self
                .claim(s, &ns, &role, &holder, lease)
                .await
                .map(Out::Claim),
            Op::Renew {
                ns,
                holder,
                held,
                lease,
            } => self
                .renew(s, &ns, &holder, &held, lease)
                .await
                .map(Out::Renew),
            Op::Release {
                ns,
                role,
                holder,
                term,
            } => self
                .release(s, &ns, &role, &holder, term)
                .await
                .map(Out::Released),
            Op::Expire {
                ns,
                role,
                holder,
                term,
            } => self
                .expire(s, &ns, &role, &holder, term)
                .await
                .map(|()| Out::Unit),
        };
        match result {
            // A failed lock statement leaves the locks unknown: the session
            // must go, whatever the error was.
            Err(e) if touches_locks && !e.is_session_lost() => Err(match e {
                BackendError::Misconfigured(_) => e,
                other => BackendError::SessionLost {
                    reason: other.to_string(),
                },
            }),
            other => other,
        }
    }

    /// Ends the lease, unlocks and notifies in one statement (see
    /// [`crate::Statements::release`]). Returns whether the notification
    /// went out: not when this session did not hold the lock (then only
    /// the lease is ended), and not for a lock held without a claim (the
    /// machine does not announce that either).
    ///
    /// With `term`, the lease ends now. Without one — the caller gave up on
    /// a claim that may have committed, or releases before its wait for
    /// the predecessor's lease was over — a claim this session committed
    /// is shortened to the end of the lease it replaced, never earlier: a
    /// claim nobody led then costs the next holder nothing, and a
    /// predecessor that may still act until its lease ends is still waited
    /// for (DESIGN §2 rule 3).
    async fn release(
        &self,
        s: &mut Session<D::Conn>,
        ns: &Namespace,
        role: &Role,
        holder: &NodeId,
        term: Option<Term>,
    ) -> Result<bool, BackendError> {
        let key = AdvisoryKey::derive(ns, role);
        let claimed = s.claims.remove(&key);
        let (term, floor_us) = match (term, claimed) {
            (Some(t), _) => (Some(t), None),
            // No unexpired predecessor: `greatest(now(), NULL)` is now().
            (None, Some((t, prev_until))) => (Some(t), prev_until),
            (None, None) => (None, None),
        };
        if s.held.get(&key) != Some(role) {
            if let Some(term) = term {
                self.expire(s, ns, role, holder, term).await?;
            }
            return Ok(false);
        }
        let sql = self.sql.release.clone();
        let params = [
            Param::Text(ns.as_str().to_owned()),
            Param::Text(role.as_str().to_owned()),
            Param::Text(holder.as_str().to_owned()),
            // `term = NULL` matches no row: nothing is expired.
            Param::OptInt8(term.map(crate::term_to_db)),
            Param::Int4(key.ns),
            Param::Int4(key.role),
            Param::Text(crate::notify_channel(ns)),
            Param::OptInt8(floor_us),
            self.incarnation_param(),
        ];
        let rows = self
            .q(s, &sql, &params)
            .await
            .map_err(|e| self.lock_error(e))?;
        s.held.remove(&key);
        let row = rows.first();
        if !matches!(row.map(|r| r.bool("unlocked")), Some(Ok(true))) {
            tracing::warn!(%ns, %role, "advisory lock was not held at release");
        }
        Ok(matches!(row.map(|r| r.int("notified")), Some(Ok(1))))
    }

    /// Ends the lease of `role` now if the row still names this holder,
    /// incarnation and `term` (DML: a failure leaves the session alone).
    async fn expire(
        &self,
        s: &mut Session<D::Conn>,
        ns: &Namespace,
        role: &Role,
        holder: &NodeId,
        term: Term,
    ) -> Result<(), BackendError> {
        let sql = self.sql.expire.clone();
        let params = [
            Param::Text(ns.as_str().to_owned()),
            Param::Text(role.as_str().to_owned()),
            Param::Text(holder.as_str().to_owned()),
            Param::Int8(crate::term_to_db(term)),
            self.incarnation_param(),
        ];
        self.q(s, &sql, &params)
            .await
            .map(|_| ())
            .map_err(|e| self.dml_error(e))
    }

    async fn check_table(&self, s: &mut Session<D::Conn>) -> Result<(), BackendError> {
        let sql = self.sql.table_exists.clone();
        let rows = self
            .q(s, &sql, &[Param::Text(self.settings.table.qualified())])
            .await
            .map_err(|e| self.dml_error(e))?;
        crate::lease_mode::table_state(&rows, &self.settings.table)
    }

    async fn try_lock(
        &self,
        s: &mut Session<D::Conn>,
        ns: &Namespace,
        planned: &[Planned],
    ) -> Result<TryLockOutcome, BackendError> {
        let bad = |e: DbError| crate::unreadable_row(&e.message);
        if planned.is_empty() {
            let sql = self.sql.now.clone();
            let rows = self.q(s, &sql, &[]).await.map_err(|e| self.lock_error(e))?;
            let row = rows.first().ok_or_else(|| bad(DbError::other("no row")))?;
            return Ok(TryLockOutcome {
                db_now: db_now(row).map_err(bad)?,
                attempts: Vec::new(),
            });
        }
        let params = TryLockParams::new(planned);
        let sql = self.sql.try_lock.clone();
        let rows = self
            .q(
                s,
                &sql,
                &[
                    Param::Text(ns.as_str().to_owned()),
                    Param::TextArray(params.roles),
                    Param::Int4Array(params.ns_keys),
                    Param::Int4Array(params.role_keys),
                    Param::Int2Array(params.modes),
                ],
            )
            .await
            .map_err(|e| self.lock_error(e))?;
        crate::check_try_lock_rows(rows.len(), planned.len())?;
        let granted = rows
            .iter()
            .map(|row| row.bool("granted"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| crate::unreadable_row(&e.to_string()))?;
        crate::record_granted(&mut s.held, planned, &granted);
        let leases = planned
            .iter()
            .zip(&rows)
            .map(|(p, row)| lease_from_row(row, ns, &p.role))
            .collect::<Result<Vec<_>, _>>()?;
        let attempts = crate::lock_attempts(planned, granted, leases);
        Ok(TryLockOutcome {
            db_now: db_now(&rows[0]).map_err(bad)?,
            attempts,
        })
    }

    async fn unlock(
        &self,
        s: &mut Session<D::Conn>,
        ns: &Namespace,
        role: &Role,
    ) -> Result<(), BackendError> {
        let key = AdvisoryKey::derive(ns, role);
        if s.held.get(&key) != Some(role) {
            return Ok(());
        }
        let sql = self.sql.unlock.clone();
        let rows = self
            .q(s, &sql, &[Param::Int4(key.ns), Param::Int4(key.role)])
            .await
            .map_err(|e| self.lock_error(e))?;
        s.held.remove(&key);
        s.claims.remove(&key);
        let unlocked = rows.first().map(|r| r.bool("unlocked"));
        if !matches!(unlocked, Some(Ok(true))) {
            tracing::warn!(%ns, %role, "advisory lock was not held at unlock");
        }
        Ok(())
    }

    /// Lock validation: one round trip proves the session is alive and is
    /// still the backend it was (a changed pid means something in between
    /// moved it, and its locks with it); which roles it holds is then known
    /// from the record (see [`held_roles`](crate::held_roles)).
    async fn held(
        &self,
        s: &mut Session<D::Conn>,
        ns: &Namespace,
        roles: &[Role],
    ) -> Result<Vec<Role>, BackendError> {
        let sql = self.sql.session_pid.clone();
        let rows = self.q(s, &sql, &[]).await.map_err(|e| self.lock_error(e))?;
        let pid = rows
            .first()
            .map(|r| r.int("pid"))
            .transpose()
            .map_err(|e| crate::unreadable_row(&e.to_string()))?;
        if pid != Some(i64::from(s.pid)) {
            return Err(BackendError::SessionLost {
                reason: format!(
                    "the session's backend changed (pid {} then {pid:?}): a connection pooler \
                     moved it, and its locks stayed behind",
                    s.pid
                ),
            });
        }
        Ok(crate::held_roles(ns, roles, &s.held))
    }

    async fn claim(
        &self,
        s: &mut Session<D::Conn>,
        ns: &Namespace,
        role: &Role,
        holder: &NodeId,
        lease: Duration,
    ) -> Result<ClaimOutcome, BackendError> {
        crate::check_claim(&s.held, ns, role)?;
        let sql = self.sql.claim.clone();
        let rows = self
            .q(
                s,
                &sql,
                &[
                    Param::Text(ns.as_str().to_owned()),
                    Param::Text(role.as_str().to_owned()),
                    Param::Text(holder.as_str().to_owned()),
                    Param::Int8(crate::micros(lease)),
                    self.incarnation_param(),
                ],
            )
            .await
            .map_err(|e| self.dml_error(e))?;
        let bad = |e: DbError| crate::unreadable_row(&e.message);
        let row = rows.first().ok_or_else(|| bad(DbError::other("no row")))?;
        let new_term = row.int("new_term").map_err(|e| bad(e.into()))?;
        let outcome = ClaimOutcome {
            term: crate::term_from_db(new_term)?,
            previous: lease_from_row(row, ns, role)?,
            db_now: db_now(row).map_err(bad)?,
        };
        // Remembered even if the caller has given up on this claim: a
        // release without a term then shortens it (see `release`).
        let prev_until = outcome
            .previous
            .as_ref()
            .filter(|p| !p.expired_at(outcome.db_now))
            .map(|p| p.lease_until.as_micros());
        s.claims
            .insert(AdvisoryKey::derive(ns, role), (outcome.term, prev_until));
        Ok(outcome)
    }

    async fn renew(
        &self,
        s: &mut Session<D::Conn>,
        ns: &Namespace,
        holder: &NodeId,
        held: &[HeldLease],
        lease: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        let roles: Vec<String> = held.iter().map(|h| h.role.as_str().to_owned()).collect();
        let terms: Vec<i64> = held.iter().map(|h| crate::term_to_db(h.term)).collect();
        let sql = self.sql.renew.clone();
        let rows = self
            .q(
                s,
                &sql,
                &[
                    Param::Text(ns.as_str().to_owned()),
                    Param::Text(holder.as_str().to_owned()),
                    Param::TextArray(roles),
                    Param::Int8Array(terms),
                    Param::Int8(crate::micros(lease)),
                    self.incarnation_param(),
                ],
            )
            .await
            .map_err(|e| self.dml_error(e))?;
        let bad = |e: DbError| crate::unreadable_row(&e.message);
        let row = rows.first().ok_or_else(|| bad(DbError::other("no row")))?;
        let renewed = row.text_array("renewed").map_err(|e| bad(e.into()))?;
        Ok(RenewOutcome {
            db_now: db_now(row).map_err(bad)?,
            renewed: crate::renewed_roles(held, &renewed),
        })
    }
}

/// Plans a `try_lock` batch with [`crate::plan`], logging every key
/// collision it found.
fn plan(
    namespace: &Namespace,
    roles: &[Role],
    held: &std::collections::HashMap<AdvisoryKey, Role>,
) -> Vec<Planned> {
    let plan = crate::plan(namespace, roles, held);
    for c in &plan.collisions {
        tracing::warn!(
            namespace = %c.namespace, role = %c.role, other = %c.other,
            "{}", crate::KEY_COLLISION_WARNING
        );
    }
    plan.planned
}
