//! [`Lock`] for [`SqlxBackend`]: session advisory locks.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use regent_core::{
    BackendError, LeaseRecord, Lock, Namespace, PreemptOutcome, Role, TryLockOutcome,
};
use regent_postgres::{self as postgres, AdvisoryKey, SQLSTATE_INSUFFICIENT_PRIVILEGE};
use sqlx::{AssertSqlSafe, Row};

use crate::SqlxBackend;
use crate::error::{pool_error, sqlstate};
use crate::ops::{Op, Out, mismatch};

#[async_trait]
impl Lock for SqlxBackend {
    /// Opens the session if none is open — refusing a transaction pooler
    /// (`pg_backend_pid()` changes between two round trips) — and checks
    /// that the lease table exists.
    async fn connect(&self) -> Result<(), BackendError> {
        match self.inner.submit(Op::Connect).await? {
            Out::Unit => Ok(()),
            other => Err(mismatch(other)),
        }
    }

    async fn try_lock(
        &self,
        namespace: &Namespace,
        roles: &[Role],
    ) -> Result<TryLockOutcome, BackendError> {
        let op = Op::TryLock {
            ns: namespace.clone(),
            roles: roles.to_vec(),
        };
        match self.inner.submit(op).await? {
            Out::TryLock(outcome) => Ok(outcome),
            other => Err(mismatch(other)),
        }
    }

    async fn unlock(&self, namespace: &Namespace, role: &Role) -> Result<(), BackendError> {
        let op = Op::Unlock {
            ns: namespace.clone(),
            role: role.clone(),
        };
        match self.inner.submit(op).await? {
            Out::Unit => Ok(()),
            other => Err(mismatch(other)),
        }
    }

    async fn held(&self, namespace: &Namespace, roles: &[Role]) -> Result<Vec<Role>, BackendError> {
        let op = Op::Held {
            ns: namespace.clone(),
            roles: roles.to_vec(),
        };
        match self.inner.submit(op).await? {
            Out::Roles(roles) => Ok(roles),
            other => Err(mismatch(other)),
        }
    }

    async fn ping(&self) -> Result<(), BackendError> {
        match self.inner.submit(Op::Ping).await? {
            Out::Unit => Ok(()),
            other => Err(mismatch(other)),
        }
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
        let result = sqlx::query(AssertSqlSafe(inner.sql.preempt.clone()))
            .bind(lease.namespace.as_str())
            .bind(lease.role.as_str())
            .bind(lease.holder.as_str())
            .bind(postgres::term_to_db(lease.term))
            .bind(pid)
            .bind(postgres::micros(grace))
            .bind(key.ns)
            .bind(key.role)
            .fetch_one(&inner.pool)
            .await
            .and_then(|row| row.try_get::<String, _>("outcome"));
        let outcome = match result {
            Ok(s) => postgres::preempt_outcome(Some(&s))?,
            Err(e) if sqlstate(&e).as_deref() == Some(SQLSTATE_INSUFFICIENT_PRIVILEGE) => {
                PreemptOutcome::NotPermitted
            }
            Err(e) => return Err(pool_error(&e, &inner.settings.table)),
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

    /// Waits for the call in flight, if any, then closes the session.
    async fn reset(&self) {
        self.inner.close_session().await;
    }
}
