//! [`Lock`] for [`TokioPgBackend`]: session advisory locks.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use regent_core::postgres::{
    self, AdvisoryKey, MODE_ALREADY_HELD, MODE_SKIP, MODE_TRY, PREEMPT_NOT_PERMITTED,
    PREEMPT_NOT_ZOMBIE, PREEMPT_TERMINATED, SQLSTATE_INSUFFICIENT_PRIVILEGE,
};
use regent_core::{
    BackendError, LeaseRecord, Lock, LockAttempt, Namespace, PreemptOutcome, Role, TryLockOutcome,
};

use crate::error::sqlstate;
use crate::lease::lease_from_row;
use crate::session::{Kind, Session, db_now};
use crate::{PoolCallError, TokioPgBackend};

/// One role of a `try_lock` batch, planned against the session's held keys.
struct Planned {
    role: Role,
    key: AdvisoryKey,
    mode: i16,
}

/// Decides, per role, whether to call `pg_try_advisory_lock`: never for a
/// key the session already holds (re-entrancy) or one already planned in
/// this batch, never for the same role twice.
fn plan(namespace: &Namespace, roles: &[Role], held: &HashMap<AdvisoryKey, Role>) -> Vec<Planned> {
    let mut seen_roles = HashSet::new();
    let mut batch_keys: HashMap<AdvisoryKey, &Role> = HashMap::new();
    let mut out = Vec::with_capacity(roles.len());
    for role in roles {
        if !seen_roles.insert(role) {
            continue;
        }
        let key = AdvisoryKey::derive(namespace, role);
        let mode = match (held.get(&key), batch_keys.get(&key).copied()) {
            (Some(holder), _) if holder == role => MODE_ALREADY_HELD,
            (Some(other), _) | (None, Some(other)) => {
                tracing::warn!(
                    %namespace, %role, other = %other,
                    "advisory-lock key collision between two roles; only one can be held \
                     by this node at a time (rename one of them)"
                );
                MODE_SKIP
            }
            (None, None) => {
                batch_keys.insert(key, role);
                MODE_TRY
            }
        };
        out.push(Planned {
            role: role.clone(),
            key,
            mode,
        });
    }
    out
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
        let roles: Vec<&str> = planned.iter().map(|p| p.role.as_str()).collect();
        let ns_keys: Vec<i32> = planned.iter().map(|p| p.key.ns).collect();
        let role_keys: Vec<i32> = planned.iter().map(|p| p.key.role).collect();
        let modes: Vec<i16> = planned.iter().map(|p| p.mode).collect();
        let rows = inner
            .run(
                session,
                Kind::TryLock,
                &[&ns, &roles, &ns_keys, &role_keys, &modes],
            )
            .await?;
        if rows.len() != planned.len() {
            return Err(BackendError::SessionLost {
                reason: format!(
                    "try_lock returned {} rows for {} roles",
                    rows.len(),
                    planned.len()
                ),
            });
        }
        // Record every granted lock before anything else can fail.
        let mut granted = Vec::with_capacity(rows.len());
        for (p, row) in planned.iter().zip(&rows) {
            let g: bool = inner.decoded(row.try_get("granted"))?;
            if g && p.mode == MODE_TRY {
                session.held.insert(p.key, p.role.clone());
            }
            granted.push(g);
        }
        let mut attempts = Vec::with_capacity(rows.len());
        let mut now = None;
        for ((p, row), granted) in planned.iter().zip(&rows).zip(granted) {
            now.get_or_insert(inner.decoded(db_now(row))?);
            let lease = lease_from_row(row, namespace, &p.role)?;
            attempts.push(LockAttempt {
                role: p.role.clone(),
                granted,
                lease,
            });
        }
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
        // Keys we recorded that the server no longer has are not held.
        session.held.retain(|key, _| in_db.contains(key));
        let mut out = Vec::new();
        for role in roles {
            let key = AdvisoryKey::derive(namespace, role);
            if !in_db.contains(&key) {
                continue;
            }
            match session.held.get(&key) {
                Some(r) if r == role => out.push(role.clone()),
                Some(_) => {} // held for a colliding role
                None => {
                    // Held but unrecorded: adopt it so unlock can release it.
                    session.held.insert(key, role.clone());
                    out.push(role.clone());
                }
            }
        }
        Ok(out)
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
                match s.as_deref() {
                    Some(PREEMPT_TERMINATED) => PreemptOutcome::Terminated,
                    Some(PREEMPT_NOT_PERMITTED) => PreemptOutcome::NotPermitted,
                    Some(PREEMPT_NOT_ZOMBIE) => PreemptOutcome::NotZombie,
                    other => {
                        return Err(BackendError::Transient(format!(
                            "unexpected preempt outcome {other:?}"
                        )));
                    }
                }
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
                        "cannot terminate the zombie holder's backend: grant the role \
                         `pg_signal_backend` to preempt zombies; waiting for it instead"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn role(s: &str) -> Role {
        Role::new(s).unwrap()
    }

    #[test]
    fn plan_never_locks_a_key_twice() {
        let ns = Namespace::default();
        let a = role("a");
        let mut held = HashMap::new();
        held.insert(AdvisoryKey::derive(&ns, &a), a.clone());
        let roles = [a.clone(), role("b"), role("b"), role("c")];
        let plan = plan(&ns, &roles, &held);
        let modes: Vec<(&str, i16)> = plan.iter().map(|p| (p.role.as_str(), p.mode)).collect();
        assert_eq!(
            modes,
            [("a", MODE_ALREADY_HELD), ("b", MODE_TRY), ("c", MODE_TRY)]
        );
        // A colliding key held for another role is skipped, not re-taken.
        let c_key = AdvisoryKey::derive(&ns, &role("c"));
        held.insert(c_key, role("other"));
        let plan2 = super::plan(&ns, &[role("c")], &held);
        assert_eq!(plan2[0].mode, MODE_SKIP);
    }
}
