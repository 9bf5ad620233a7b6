//! [`Lock`] for [`TokioPgBackend`]: session advisory locks.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use regent_core::{
    BackendError, LeaseRecord, Lock, Namespace, PreemptOutcome, Role, TryLockOutcome,
};
use regent_postgres::{
    self as postgres, AdvisoryKey, Planned, SQLSTATE_INSUFFICIENT_PRIVILEGE, TryLockParams,
};

use crate::error::sqlstate;
use crate::lease::lease_from_row;
use crate::session::{Kind, Session, db_now};
use crate::{PoolCallError, TokioPgBackend};

/// Plans a `try_lock` batch with the shared [`postgres::plan`], logging
/// every key collision it found.
fn plan(namespace: &Namespace, roles: &[Role], held: &HashMap<AdvisoryKey, Role>) -> Vec<Planned> {
    let plan = postgres::plan(namespace, roles, held);
    for c in &plan.collisions {
        tracing::warn!(
            namespace = %c.namespace, role = %c.role, other = %c.other,
            "{}", postgres::KEY_COLLISION_WARNING
        );
    }
    plan.planned
}

impl TokioPgBackend {
    async fn try_lock_on(
        &self,
        session: &mut Session,
        namespace: &Namespace,
        planned: &[Planned],
    ) -> Result<TryLockOutcome, BackendError> {
        let inner = &self.inner;
        if planned.is_empty() {
            let rows = inner.run(session, Kind::Now, &[]).await?;
            let row = rows.first().ok_or_else(|| BackendError::SessionLost {
                reason: "now() returned no row".to_owned(),
            })?;
            return Ok(TryLockOutcome {
                db_now: inner.decoded(db_now(row))?,
                attempts: Vec::new(),
            });
        }
        let ns = namespace.as_str();
        let p = TryLockParams::new(planned);
        let rows = inner
            .run(
                session,
                Kind::TryLock,
                &[&ns, &p.roles, &p.ns_keys, &p.role_keys, &p.modes],
            )
            .await?;
        postgres::check_try_lock_rows(rows.len(), planned.len())?;
        let granted = rows
            .iter()
            .map(|row| inner.decoded(row.try_get::<_, bool>("granted")))
            .collect::<Result<Vec<_>, _>>()?;
        postgres::record_granted(&mut session.held, planned, &granted);
        let mut now = None;
        let mut leases = Vec::with_capacity(rows.len());
        for (p, row) in planned.iter().zip(&rows) {
            now.get_or_insert(inner.decoded(db_now(row))?);
            leases.push(lease_from_row(row, namespace, &p.role)?);
        }
        let attempts = postgres::lock_attempts(planned, granted, leases);
        Ok(TryLockOutcome {
            db_now: now.unwrap_or_default(),
            attempts,
        })
    }

    async fn held_on(
        &self,
        session: &mut Session,
        namespace: &Namespace,
        roles: &[Role],
    ) -> Result<Vec<Role>, BackendError> {
        let inner = &self.inner;
        let rows = inner.run(session, Kind::Held, &[]).await?;
        let mut in_db = HashSet::with_capacity(rows.len());
        for row in &rows {
            let classid: i64 = inner.decoded(row.try_get("classid"))?;
            let objid: i64 = inner.decoded(row.try_get("objid"))?;
            in_db.insert(AdvisoryKey::from_pg_locks(classid, objid));
        }
        Ok(postgres::reconcile_held(
            namespace,
            roles,
            &mut session.held,
            &in_db,
        ))
    }
}

#[async_trait]
impl Lock for TokioPgBackend {
    async fn connect(&self) -> Result<(), BackendError> {
        let inner = &self.inner;
        let mut co = inner.checkout().await?;
        let result = async {
            let session = co.session()?;
            let qualified = inner.settings.table.qualified();
            let rows = inner.run(session, Kind::TableExists, &[&qualified]).await?;
            let present = match rows.first() {
                Some(row) => inner.decoded(row.try_get::<_, bool>("present"))?,
                None => false,
            };
            if present {
                Ok(())
            } else {
                Err(BackendError::Misconfigured(postgres::missing_table_error(
                    &inner.settings.table,
                )))
            }
        }
        .await;
        // A missing table is not the session's fault: keep it open.
        match result {
            Err(BackendError::Misconfigured(msg)) => {
                co.finish();
                Err(BackendError::Misconfigured(msg))
            }
            other => co.end(other),
        }
    }

    async fn try_lock(
        &self,
        namespace: &Namespace,
        roles: &[Role],
    ) -> Result<TryLockOutcome, BackendError> {
        let mut co = self.inner.checkout().await?;
        let result = async {
            let session = co.session()?;
            let planned = plan(namespace, roles, &session.held);
            self.try_lock_on(session, namespace, &planned).await
        }
        .await;
        co.end(result)
    }

    async fn unlock(&self, namespace: &Namespace, role: &Role) -> Result<(), BackendError> {
        let inner = &self.inner;
        // No open session: nothing is held.
        let Some(mut co) = inner.checkout_open().await? else {
            return Ok(());
        };
        let result = async {
            let session = co.session()?;
            let key = AdvisoryKey::derive(namespace, role);
            if session.held.get(&key) != Some(role) {
                return Ok(());
            }
            let rows = inner
                .run(session, Kind::Unlock, &[&key.ns, &key.role])
                .await?;
            session.held.remove(&key);
            let unlocked = match rows.first() {
                Some(row) => inner.decoded(row.try_get::<_, bool>("unlocked"))?,
                None => false,
            };
            if !unlocked {
                tracing::warn!(%namespace, %role, "advisory lock was not held at unlock");
            }
            Ok(())
        }
        .await;
        co.end(result)
    }

    async fn held(&self, namespace: &Namespace, roles: &[Role]) -> Result<Vec<Role>, BackendError> {
        let mut co = self.inner.checkout().await?;
        let result = async {
            let session = co.session()?;
            self.held_on(session, namespace, roles).await
        }
        .await;
        co.end(result)
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let inner = &self.inner;
        let mut co = inner.checkout().await?;
        let result = async {
            let session = co.session()?;
            inner.run(session, Kind::Now, &[]).await.map(|_| ())
        }
        .await;
        co.end(result)
    }

    async fn preempt(
        &self,
        lease: &LeaseRecord,
        grace: Duration,
    ) -> Result<PreemptOutcome, BackendError> {
        let inner = &self.inner;
        let Some(pid) = lease.session.and_then(|p| i32::try_from(p).ok()) else {
            return Ok(PreemptOutcome::NotZombie);
        };
        let key = AdvisoryKey::derive(&lease.namespace, &lease.role);
        let term = postgres::term_to_db(lease.term);
        let grace_us = postgres::micros(grace);
        let result = inner
            .pool_query(
                &inner.sql.preempt,
                &[
                    &lease.namespace.as_str(),
                    &lease.role.as_str(),
                    &lease.holder.as_str(),
                    &term,
                    &pid,
                    &grace_us,
                    &key.ns,
                    &key.role,
                ],
            )
            .await;
        let outcome = match result {
            Ok(rows) => {
                let s: Option<String> = rows.first().and_then(|r| r.try_get("outcome").ok());
                postgres::preempt_outcome(s.as_deref())?
            }
            Err(PoolCallError::Db(e)) if sqlstate(&e) == Some(SQLSTATE_INSUFFICIENT_PRIVILEGE) => {
                PreemptOutcome::NotPermitted
            }
            Err(e) => return Err(inner.pool_call_error(e)),
        };
        match outcome {
            PreemptOutcome::NotPermitted => {
                if !inner.warned_not_permitted.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        holder = %lease.holder, pid, role = %lease.role,
                        "{}", postgres::PREEMPT_NOT_PERMITTED_WARNING
                    );
                }
            }
            PreemptOutcome::Terminated => {
                tracing::info!(holder = %lease.holder, pid, role = %lease.role, "terminated zombie holder");
            }
            PreemptOutcome::NotZombie => {}
        }
        Ok(outcome)
    }

    async fn reset(&self) {
        self.inner.close_session().await;
    }

    async fn session_closed(&self) {
        self.inner.session_closed().await;
    }
}
