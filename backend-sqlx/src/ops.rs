//! The calls that run on the lock session, as owned values so that a
//! session task can run each to completion even if its caller gives up.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use regent_core::postgres::{self, AdvisoryKey, MODE_ALREADY_HELD, MODE_SKIP, MODE_TRY};
use regent_core::{
    BackendError, ClaimOutcome, HeldLease, LockAttempt, Namespace, NodeId, RenewOutcome, Role,
    Term, TryLockOutcome,
};
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

/// One role of a `try_lock` batch, planned against the session's held keys.
pub(crate) struct Planned {
    pub(crate) role: Role,
    pub(crate) key: AdvisoryKey,
    pub(crate) mode: i16,
}

/// Decides, per role, whether to call `pg_try_advisory_lock`: never for a
/// key the session already holds (re-entrancy) or one already planned in
/// this batch, never for the same role twice.
pub(crate) fn plan(
    namespace: &Namespace,
    roles: &[Role],
    held: &HashMap<AdvisoryKey, Role>,
) -> Vec<Planned> {
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
        let roles: Vec<String> = planned.iter().map(|p| p.role.as_str().to_owned()).collect();
        let ns_keys: Vec<i32> = planned.iter().map(|p| p.key.ns).collect();
        let role_keys: Vec<i32> = planned.iter().map(|p| p.key.role).collect();
        let modes: Vec<i16> = planned.iter().map(|p| p.mode).collect();
        let query = sqlx::query(AssertSqlSafe(self.sql.try_lock.clone()))
            .bind(ns.as_str())
            .bind(roles)
            .bind(ns_keys)
            .bind(role_keys)
            .bind(modes)
            .fetch_all(&mut s.conn);
        let rows = self.bounded(query).await?;
        if rows.len() != planned.len() {
            return Err(BackendError::SessionLost {
                reason: format!(
                    "try_lock returned {} rows for {}",
                    rows.len(),
                    planned.len()
                ),
            });
        }
        // Record every granted lock before anything else can fail.
        let mut granted = Vec::with_capacity(rows.len());
        for (p, row) in planned.iter().zip(&rows) {
            let g: bool = self.decoded(row.try_get("granted"))?;
            if g && p.mode == MODE_TRY {
                s.held.insert(p.key, p.role.clone());
            }
            granted.push(g);
        }
        let mut attempts = Vec::with_capacity(rows.len());
        for ((p, row), granted) in planned.iter().zip(&rows).zip(granted) {
            attempts.push(LockAttempt {
                role: p.role.clone(),
                granted,
                lease: lease_from_row(row, ns, &p.role)?,
            });
        }
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
        // Keys we recorded that the server no longer has are not held.
        s.held.retain(|key, _| in_db.contains(key));
        let mut out = Vec::new();
        for role in roles {
            let key = AdvisoryKey::derive(ns, role);
            if !in_db.contains(&key) {
                continue;
            }
            match s.held.get(&key) {
                Some(r) if r == role => out.push(role.clone()),
                Some(_) => {} // held for a colliding role
                None => {
                    // Held but unrecorded: adopt it so unlock can release it.
                    s.held.insert(key, role.clone());
                    out.push(role.clone());
                }
            }
        }
        Ok(out)
    }

    async fn claim(
        &self,
        s: &mut Session,
        ns: &Namespace,
        role: &Role,
        holder: &NodeId,
        lease: Duration,
    ) -> Result<ClaimOutcome, BackendError> {
        // Claiming without the lock would break mutual exclusion. This
        // happens when the session was replaced between try_lock and claim:
        // the lock went with the old session.
        if s.held.get(&AdvisoryKey::derive(ns, role)) != Some(role) {
            return Err(BackendError::SessionLost {
                reason: format!(
                    "claim of {role:?} on a session that does not hold its lock (the session \
                     that took it is gone)"
                ),
            });
        }
        let query = sqlx::query(AssertSqlSafe(self.sql.claim.clone()))
            .bind(ns.as_str())
            .bind(role.as_str())
            .bind(holder.as_str())
            .bind(postgres::micros(lease))
            .fetch_one(&mut s.conn);
        let row = self.bounded(query).await?;
        let new_term: i64 = self.decoded(row.try_get("new_term"))?;
        Ok(ClaimOutcome {
            term: postgres::term_from_db(new_term)
                .map_err(|e| BackendError::Transient(e.to_string()))?,
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
            renewed: held
                .iter()
                .filter(|h| renewed.iter().any(|r| r == h.role.as_str()))
                .map(|h| h.role.clone())
                .collect(),
        })
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
        let modes: Vec<(String, i16)> = plan(&ns, &roles, &held)
            .into_iter()
            .map(|p| (p.role.as_str().to_owned(), p.mode))
            .collect();
        let want = [("a", MODE_ALREADY_HELD), ("b", MODE_TRY), ("c", MODE_TRY)];
        assert_eq!(modes, want.map(|(r, m)| (r.to_owned(), m)));
        // A colliding key held for another role is skipped, not re-taken.
        held.insert(AdvisoryKey::derive(&ns, &role("c")), role("other"));
        assert_eq!(plan(&ns, &[role("c")], &held)[0].mode, MODE_SKIP);
    }
}
