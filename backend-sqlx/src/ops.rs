//! The calls that run on the lock session, as owned values so that a
//! session task can run each to completion even if its caller gives up.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use regent_core::{
    BackendError, ClaimOutcome, HeldLease, Namespace, NodeId, RenewOutcome, Role, Term,
    TryLockOutcome,
};
use regent_postgres::{self as postgres, AdvisoryKey, Planned, TryLockParams};
use sqlx::{AssertSqlSafe, Row};

use crate::Inner;
use crate::lease::lease_from_row;
use crate::session::{Session, db_now};

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
}

/// The result of an [`Op`].
#[derive(Debug)]
pub(crate) enum Out {
    Unit,
    TryLock(TryLockOutcome),
    Roles(Vec<Role>),
    Claim(ClaimOutcome),
    Renew(RenewOutcome),
}

/// An [`Out`] of the wrong kind: a bug, reported rather than panicking.
pub(crate) fn mismatch(out: Out) -> BackendError {
    BackendError::Transient(format!("internal error: unexpected session result {out:?}"))
}

/// Plans a `try_lock` batch with the shared [`postgres::plan`], logging
/// every key collision it found.
pub(crate) fn plan(
    namespace: &Namespace,
    roles: &[Role],
    held: &HashMap<AdvisoryKey, Role>,
) -> Vec<Planned> {
    let plan = postgres::plan(namespace, roles, held);
    for c in &plan.collisions {
        tracing::warn!(
            namespace = %c.namespace, role = %c.role, other = %c.other,
            "{}", postgres::KEY_COLLISION_WARNING
        );
    }
    plan.planned
}

impl Inner {
    /// Runs `op` on `session`. Any `Err` makes the caller close the session.
    pub(crate) async fn execute(&self, s: &mut Session, op: Op) -> Result<Out, BackendError> {
        match op {
            Op::Connect => self.check_table(s).await.map(|()| Out::Unit),
            Op::TryLock { ns, roles } => {
                let planned = plan(&ns, &roles, &s.held);
                self.try_lock(s, &ns, &planned).await.map(Out::TryLock)
            }
            Op::Unlock { ns, role } => self.unlock(s, &ns, &role).await.map(|()| Out::Unit),
            Op::Held { ns, roles } => self.held(s, &ns, &roles).await.map(Out::Roles),
            Op::Ping => {
                let ping = sqlx::query("SELECT 1").execute(&mut s.conn);
                self.bounded(ping).await.map(|_| Out::Unit)
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
            Op::Expire {
                ns,
                role,
                holder,
                term,
            } => {
                let expire = sqlx::query(AssertSqlSafe(self.sql.expire.clone()))
                    .bind(ns.as_str())
                    .bind(role.as_str())
                    .bind(holder.as_str())
                    .bind(postgres::term_to_db(term))
                    .execute(&mut s.conn);
                self.bounded(expire).await.map(|_| Out::Unit)
            }
        }
    }

    async fn check_table(&self, s: &mut Session) -> Result<(), BackendError> {
        let query = sqlx::query(AssertSqlSafe(self.sql.table_exists.clone()))
            .bind(self.settings.table.qualified())
            .fetch_one(&mut s.conn);
        let row = self.bounded(query).await?;
        if self.decoded(row.try_get::<bool, _>("present"))? {
            Ok(())
        } else {
            Err(BackendError::Misconfigured(postgres::missing_table_error(
                &self.settings.table,
            )))
        }
    }

    async fn try_lock(
        &self,
        s: &mut Session,
        ns: &Namespace,
        planned: &[Planned],
    ) -> Result<TryLockOutcome, BackendError> {
        if planned.is_empty() {
            let query = sqlx::query(AssertSqlSafe(self.sql.now.clone())).fetch_one(&mut s.conn);
            let row = self.bounded(query).await?;
            return Ok(TryLockOutcome {
                db_now: self.decoded(db_now(&row))?,
                attempts: Vec::new(),
            });
        }
        let params = TryLockParams::new(planned);
        let query = sqlx::query(AssertSqlSafe(self.sql.try_lock.clone()))
            .bind(ns.as_str())
            .bind(params.roles)
            .bind(params.ns_keys)
            .bind(params.role_keys)
            .bind(params.modes)
            .fetch_all(&mut s.conn);
        let rows = self.bounded(query).await?;
        postgres::check_try_lock_rows(rows.len(), planned.len())?;
        let granted = rows
            .iter()
            .map(|row| self.decoded(row.try_get::<bool, _>("granted")))
            .collect::<Result<Vec<_>, _>>()?;
        postgres::record_granted(&mut s.held, planned, &granted);
        let leases = planned
            .iter()
            .zip(&rows)
            .map(|(p, row)| lease_from_row(row, ns, &p.role))
            .collect::<Result<Vec<_>, _>>()?;
        let attempts = postgres::lock_attempts(planned, granted, leases);
        Ok(TryLockOutcome {
            db_now: self.decoded(db_now(&rows[0]))?,
            attempts,
        })
    }

    async fn unlock(
        &self,
        s: &mut Session,
        ns: &Namespace,
        role: &Role,
    ) -> Result<(), BackendError> {
        let key = AdvisoryKey::derive(ns, role);
        if s.held.get(&key) != Some(role) {
            return Ok(());
        }
        let query = sqlx::query(AssertSqlSafe(self.sql.unlock.clone()))
            .bind(key.ns)
            .bind(key.role)
            .fetch_one(&mut s.conn);
        let row = self.bounded(query).await?;
        s.held.remove(&key);
        if !self.decoded(row.try_get::<bool, _>("unlocked"))? {
            tracing::warn!(%ns, %role, "advisory lock was not held at unlock");
        }
        Ok(())
    }

    async fn held(
        &self,
        s: &mut Session,
        ns: &Namespace,
        roles: &[Role],
    ) -> Result<Vec<Role>, BackendError> {
        let query = sqlx::query(AssertSqlSafe(self.sql.held.clone())).fetch_all(&mut s.conn);
        let rows = self.bounded(query).await?;
        let mut in_db = HashSet::with_capacity(rows.len());
        for row in &rows {
            let classid: i64 = self.decoded(row.try_get("classid"))?;
            let objid: i64 = self.decoded(row.try_get("objid"))?;
            in_db.insert(AdvisoryKey::from_pg_locks(classid, objid));
        }
        Ok(postgres::reconcile_held(ns, roles, &mut s.held, &in_db))
    }

    async fn claim(
        &self,
        s: &mut Session,
        ns: &Namespace,
        role: &Role,
        holder: &NodeId,
        lease: Duration,
    ) -> Result<ClaimOutcome, BackendError> {
        postgres::check_claim(&s.held, ns, role)?;
        let query = sqlx::query(AssertSqlSafe(self.sql.claim.clone()))
            .bind(ns.as_str())
            .bind(role.as_str())
            .bind(holder.as_str())
            .bind(postgres::micros(lease))
            .fetch_one(&mut s.conn);
        let row = self.bounded(query).await?;
        let new_term: i64 = self.decoded(row.try_get("new_term"))?;
        Ok(ClaimOutcome {
            term: postgres::term_from_db(new_term)?,
            previous: lease_from_row(&row, ns, role)?,
            db_now: self.decoded(db_now(&row))?,
        })
    }

    async fn renew(
        &self,
        s: &mut Session,
        ns: &Namespace,
        holder: &NodeId,
        held: &[HeldLease],
        lease: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        let roles: Vec<String> = held.iter().map(|h| h.role.as_str().to_owned()).collect();
        let terms: Vec<i64> = held.iter().map(|h| postgres::term_to_db(h.term)).collect();
        let query = sqlx::query(AssertSqlSafe(self.sql.renew.clone()))
            .bind(ns.as_str())
            .bind(holder.as_str())
            .bind(roles)
            .bind(terms)
            .bind(postgres::micros(lease))
            .fetch_one(&mut s.conn);
        let row = self.bounded(query).await?;
        let renewed: Vec<String> = self.decoded(row.try_get("renewed"))?;
        Ok(RenewOutcome {
            db_now: self.decoded(db_now(&row))?,
            renewed: postgres::renewed_roles(held, &renewed),
        })
    }
}
