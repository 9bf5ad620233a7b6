//! Lease rows as the engine reads them, and the calls that use the shared
//! pool instead of the session: `read`, `list`, `preempt`, `notify`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use regent_core::{BackendError, DbTimestamp, LeaseRecord, Namespace, PreemptOutcome, Role};

use crate::driver::{DbError, Driver, Param, Row};
use crate::ops::db_now;
use crate::session::Engine;
use crate::{AdvisoryKey, LeaseRow, Mode, SQLSTATE_INSUFFICIENT_PRIVILEGE};

/// The lease columns of `row` (see [`crate::Statements`]) as the record of
/// `role` in `namespace`; `None` when the row's `holder` is `NULL` (a
/// `LEFT JOIN` found no lease row).
pub(crate) fn lease_from_row(
    row: &Row,
    namespace: &Namespace,
    role: &Role,
) -> Result<Option<LeaseRecord>, BackendError> {
    let bad = |e: crate::driver::ColumnError| crate::unreadable_row(&e.to_string());
    let Some(holder) = row.opt_text("holder").map_err(bad)? else {
        return Ok(None);
    };
    let raw = LeaseRow {
        namespace: namespace.as_str().to_owned(),
        role: role.as_str().to_owned(),
        holder,
        term: row.int("term").map_err(bad)?,
        backend_pid: row
            .opt_int("backend_pid")
            .map_err(bad)?
            .and_then(|p| i32::try_from(p).ok()),
        acquired_us: row.int("acquired_us").map_err(bad)?,
        renewed_us: row.int("renewed_us").map_err(bad)?,
        until_us: row.int("until_us").map_err(bad)?,
    };
    Ok(Some(raw.into_record()?))
}

/// A row of the `list` statement, which carries its own names.
fn listed_lease(row: &Row) -> Result<Option<LeaseRecord>, BackendError> {
    let bad = |e: crate::driver::ColumnError| crate::unreadable_row(&e.to_string());
    let names = crate::lease_names(
        row.opt_text("namespace").map_err(bad)?,
        row.opt_text("role").map_err(bad)?,
    )?;
    match names {
        Some((ns, role)) => lease_from_row(row, &ns, &role),
        None => Ok(None),
    }
}

impl<D: Driver> Engine<D> {
    /// Maps an error of a statement on the pool (no locks involved).
    pub(crate) fn pool_error(&self, e: &DbError) -> BackendError {
        crate::pool_error(
            e.sqlstate.as_deref(),
            &self.settings.table,
            e.message.clone(),
        )
    }

    /// One statement on the pool, bounded by the call timeout.
    pub(crate) async fn pool(&self, sql: &str, params: &[Param]) -> Result<Vec<Row>, BackendError> {
        match self.pool_rows(sql, params).await? {
            Ok(rows) => Ok(rows),
            Err(e) => Err(self.pool_error(&e)),
        }
    }

    /// One statement on the pool, bounded by the call timeout (the outer
    /// error), with the database's own error left to the caller. In lease
    /// mode it goes through [`Driver::pool_query_pooler_safe`], so it works
    /// behind a transaction pooler.
    pub(crate) async fn pool_rows(
        &self,
        sql: &str,
        params: &[Param],
    ) -> Result<Result<Vec<Row>, DbError>, BackendError> {
        let limit = self.settings.call_timeout();
        let call = async {
            match self.settings.mode {
                Mode::Session => self.driver.pool_query(sql, params).await,
                Mode::Lease => self.driver.pool_query_pooler_safe(sql, params).await,
            }
        };
        tokio::time::timeout(limit, call)
            .await
            .map_err(|_| BackendError::Timeout(limit))
    }

    pub(crate) async fn read(
        &self,
        namespace: &Namespace,
        roles: &[Role],
    ) -> Result<(DbTimestamp, Vec<LeaseRecord>), BackendError> {
        let names: Vec<String> = roles.iter().map(|r| r.as_str().to_owned()).collect();
        let rows = self
            .pool(
                &self.sql.read,
                &[
                    Param::Text(namespace.as_str().to_owned()),
                    Param::TextArray(names),
                ],
            )
            .await?;
        let mut now = DbTimestamp::default();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            now = db_now(row).map_err(|e| crate::unreadable_row(&e.message))?;
            let role = row
                .opt_text("role")
                .map_err(|e| crate::unreadable_row(&e.to_string()))?;
            if let Some(role) = role.and_then(|r| Role::new(r).ok()) {
                out.extend(lease_from_row(row, namespace, &role)?);
            }
        }
        Ok((now, out))
    }

    pub(crate) async fn list(
        &self,
        namespace: Option<&Namespace>,
    ) -> Result<Vec<LeaseRecord>, BackendError> {
        let rows = self
            .pool(
                &self.sql.list,
                &[Param::OptText(namespace.map(|n| n.as_str().to_owned()))],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.extend(listed_lease(row)?);
        }
        Ok(out)
    }

    pub(crate) async fn preempt(
        &self,
        lease: &LeaseRecord,
        grace: Duration,
    ) -> Result<PreemptOutcome, BackendError> {
        let Some(pid) = lease.session.and_then(|p| i32::try_from(p).ok()) else {
            return Ok(PreemptOutcome::NotZombie);
        };
        let key = AdvisoryKey::derive(&lease.namespace, &lease.role);
        let params = [
            Param::Text(lease.namespace.as_str().to_owned()),
            Param::Text(lease.role.as_str().to_owned()),
            Param::Text(lease.holder.clone()),
            Param::Int8(crate::term_to_db(lease.term)),
            Param::Int4(pid),
            Param::Int8(crate::micros(grace)),
            Param::Int4(key.ns),
            Param::Int4(key.role),
        ];
        let limit = self.settings.call_timeout();
        let result =
            tokio::time::timeout(limit, self.driver.pool_query(&self.sql.preempt, &params))
                .await
                .map_err(|_| BackendError::Timeout(limit))?;
        let outcome = match result {
            Ok(rows) => {
                let outcome = rows.first().map(|r| r.opt_text("outcome"));
                match outcome {
                    Some(Ok(o)) => crate::preempt_outcome(o.as_deref())?,
                    Some(Err(e)) => return Err(crate::unreadable_row(&e.to_string())),
                    None => crate::preempt_outcome(None)?,
                }
            }
            Err(e) if e.sqlstate.as_deref() == Some(SQLSTATE_INSUFFICIENT_PRIVILEGE) => {
                PreemptOutcome::NotPermitted
            }
            Err(e) => return Err(self.pool_error(&e)),
        };
        match outcome {
            PreemptOutcome::NotPermitted => {
                if !self.warned_not_permitted.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        holder = %lease.holder, pid, role = %lease.role,
                        "{}", crate::PREEMPT_NOT_PERMITTED_WARNING
                    );
                }
            }
            PreemptOutcome::Terminated => {
                tracing::info!(holder = %lease.holder, pid, role = %lease.role, "terminated zombie holder");
                // Its fenced work of that term would be refused anyway; end
                // it so its row lock no longer holds off the next claim.
                let name = crate::fenced_application_name(
                    &lease.namespace,
                    &lease.role,
                    &lease.holder,
                    lease.term,
                );
                match self.pool(&self.sql.end_fenced, &[Param::Text(name)]).await {
                    Ok(rows) => {
                        let ended = rows.first().and_then(|r| r.int("ended").ok()).unwrap_or(0);
                        if ended > 0 {
                            tracing::info!(holder = %lease.holder, role = %lease.role, ended, "ended the zombie's open fenced transactions");
                        }
                    }
                    Err(e) => tracing::warn!(
                        holder = %lease.holder, role = %lease.role, error = %e,
                        "could not end the zombie's fenced transactions; the claim waits for fenced_idle_timeout"
                    ),
                }
            }
            PreemptOutcome::NotZombie => {}
        }
        Ok(outcome)
    }

    pub(crate) async fn publish_release(
        &self,
        namespace: &Namespace,
        role: &Role,
    ) -> Result<(), BackendError> {
        self.pool(
            &self.sql.notify,
            &[
                Param::Text(crate::notify_channel(namespace)),
                Param::Text(role.as_str().to_owned()),
            ],
        )
        .await
        .map(|_| ())
    }
}
