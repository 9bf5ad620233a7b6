//! [`Lease`] for [`TokioPgBackend`].

use std::time::Duration;

use async_trait::async_trait;
use regent_core::{
    BackendError, ClaimOutcome, DbTimestamp, HeldLease, Lease, LeaseRecord, Namespace, NodeId,
    RenewOutcome, Role, Term,
};
use regent_postgres::{self as postgres, LeaseRow};
use tokio_postgres::Row;

use crate::TokioPgBackend;
use crate::error::describe;
use crate::session::{Kind, db_now};

fn unreadable(e: tokio_postgres::Error) -> BackendError {
    postgres::unreadable_row(&describe(&e))
}

/// Reads the lease columns of `row` (`None` when the `LEFT JOIN` found no
/// row) for a known namespace and role.
pub(crate) fn lease_from_row(
    row: &Row,
    namespace: &Namespace,
    role: &Role,
) -> Result<Option<LeaseRecord>, BackendError> {
    let Some(holder) = row
        .try_get::<_, Option<String>>("holder")
        .map_err(unreadable)?
    else {
        return Ok(None);
    };
    let raw = LeaseRow {
        namespace: namespace.as_str().to_owned(),
        role: role.as_str().to_owned(),
        holder,
        term: row.try_get("term").map_err(unreadable)?,
        backend_pid: row.try_get("backend_pid").map_err(unreadable)?,
        acquired_us: row.try_get("acquired_us").map_err(unreadable)?,
        renewed_us: row.try_get("renewed_us").map_err(unreadable)?,
        until_us: row.try_get("until_us").map_err(unreadable)?,
    };
    Ok(Some(raw.into_record()?))
}

/// A row that carries its own `namespace` and `role` columns.
fn full_lease_from_row(row: &Row) -> Result<Option<LeaseRecord>, BackendError> {
    let names = postgres::lease_names(
        row.try_get("namespace").map_err(unreadable)?,
        row.try_get("role").map_err(unreadable)?,
    )?;
    match names {
        Some((ns, role)) => lease_from_row(row, &ns, &role),
        None => Ok(None),
    }
}

#[async_trait]
impl Lease for TokioPgBackend {
    async fn read(
        &self,
        namespace: &Namespace,
        roles: &[Role],
    ) -> Result<(DbTimestamp, Vec<LeaseRecord>), BackendError> {
        let inner = &self.inner;
        let names: Vec<&str> = roles.iter().map(Role::as_str).collect();
        let rows = inner
            .pool_query(&inner.sql.read, &[&namespace.as_str(), &names])
            .await
            .map_err(|e| inner.pool_call_error(e))?;
        let mut now = DbTimestamp::default();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            now = db_now(row).map_err(unreadable)?;
            let role: Option<String> = row.try_get("role").map_err(unreadable)?;
            if let Some(role) = role.and_then(|r| Role::new(r).ok()) {
                out.extend(lease_from_row(row, namespace, &role)?);
            }
        }
        Ok((now, out))
    }

    async fn claim(
        &self,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        lease: Duration,
    ) -> Result<ClaimOutcome, BackendError> {
        let inner = &self.inner;
        let mut co = inner.checkout().await?;
        let result = async {
            let session = co.session()?;
            postgres::check_claim(&session.held, namespace, role)?;
            let lease_us = postgres::micros(lease);
            let rows = inner
                .run(
                    session,
                    Kind::Claim,
                    &[
                        &namespace.as_str(),
                        &role.as_str(),
                        &holder.as_str(),
                        &lease_us,
                    ],
                )
                .await?;
            let row = rows.first().ok_or_else(|| BackendError::SessionLost {
                reason: "claim returned no row".to_owned(),
            })?;
            let new_term: i64 = inner.decoded(row.try_get("new_term"))?;
            Ok(ClaimOutcome {
                term: postgres::term_from_db(new_term)?,
                previous: lease_from_row(row, namespace, role)?,
                db_now: inner.decoded(db_now(row))?,
            })
        }
        .await;
        co.end(result)
    }

    async fn renew(
        &self,
        namespace: &Namespace,
        holder: &NodeId,
        held: &[HeldLease],
        lease: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        let inner = &self.inner;
        let roles: Vec<&str> = held.iter().map(|h| h.role.as_str()).collect();
        let terms: Vec<i64> = held.iter().map(|h| postgres::term_to_db(h.term)).collect();
        let lease_us = postgres::micros(lease);
        let mut co = inner.checkout().await?;
        let result = async {
            let session = co.session()?;
            let rows = inner
                .run(
                    session,
                    Kind::Renew,
                    &[
                        &namespace.as_str(),
                        &holder.as_str(),
                        &roles,
                        &terms,
                        &lease_us,
                    ],
                )
                .await?;
            let row = rows.first().ok_or_else(|| BackendError::SessionLost {
                reason: "renew returned no row".to_owned(),
            })?;
            let renewed: Vec<String> = inner.decoded(row.try_get("renewed"))?;
            Ok(RenewOutcome {
                db_now: inner.decoded(db_now(row))?,
                renewed: postgres::renewed_roles(held, &renewed),
            })
        }
        .await;
        co.end(result)
    }

    async fn expire(
        &self,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        term: Term,
    ) -> Result<(), BackendError> {
        let inner = &self.inner;
        let term = postgres::term_to_db(term);
        let mut co = inner.checkout().await?;
        let result = async {
            let session = co.session()?;
            inner
                .run(
                    session,
                    Kind::Expire,
                    &[&namespace.as_str(), &role.as_str(), &holder.as_str(), &term],
                )
                .await
                .map(|_| ())
        }
        .await;
        co.end(result)
    }

    async fn list(&self, namespace: Option<&Namespace>) -> Result<Vec<LeaseRecord>, BackendError> {
        let inner = &self.inner;
        let ns: Option<&str> = namespace.map(Namespace::as_str);
        let rows = inner
            .pool_query(&inner.sql.list, &[&ns])
            .await
            .map_err(|e| inner.pool_call_error(e))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.extend(full_lease_from_row(row)?);
        }
        Ok(out)
    }
}
