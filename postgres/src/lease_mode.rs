//! Lease mode ([`Mode::Lease`](crate::Mode::Lease)): the traits' calls as
//! single autocommit statements on the pool, with mutual exclusion from a
//! compare-and-set on the lease row in database time. No advisory lock, no
//! session, no server connection kept between statements, so it works
//! through a transaction pooler.
//!
//! | call | lease mode |
//! |---|---|
//! | `connect` | checks the table on the pool |
//! | `try_lock` | reads the rows; `granted` where a claim could succeed now (no row, lease ended in database time, or this holder's and incarnation's own) |
//! | `claim` | the compare-and-set ([`Statements::lease_claim`](crate::Statements::lease_claim)); lost race → retryable [`BackendError::Busy`] |
//! | `held` | rows still naming this holder and incarnation |
//! | `renew`, `expire` | holder + incarnation + term must match |
//! | `unlock`, `reset` | nothing to do |
//! | `ping` | `now()` on the pool |
//! | `session_closed` | never fires (no session) |
//! | `release` | expire; standbys find the role free at their next retry |
//!
//! Every statement goes through [`Driver::pool_query_pooler_safe`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use regent_core::{
    BackendError, ClaimOutcome, HeldLease, LockAttempt, Namespace, NodeId, Released, RenewOutcome,
    Role, Term, TryLockOutcome,
};

use crate::TableName;
use crate::driver::{DbError, Driver, Param, Row};
use crate::lease::lease_from_row;
use crate::ops::{SQLSTATE_LOCK_NOT_AVAILABLE, db_now};
use crate::session::Engine;

/// The result of the table check (`present, current`): `Ok` when the table
/// exists with every column, else what to do about it.
pub(crate) fn table_state(rows: &[Row], table: &TableName) -> Result<(), BackendError> {
    let row = rows.first();
    let flag = |name: &str| {
        row.map(|r| r.bool(name))
            .transpose()
            .map_err(|e| crate::unreadable_row(&e.to_string()))
    };
    match (flag("present")?, flag("current")?) {
        (Some(true), Some(true)) => Ok(()),
        (Some(true), _) => Err(BackendError::Misconfigured(
            crate::misconfiguration(Some(crate::SQLSTATE_UNDEFINED_COLUMN), table, "")
                .unwrap_or_default()
                .trim_start_matches(": ")
                .to_owned(),
        )),
        _ => Err(BackendError::Misconfigured(crate::missing_table_error(
            table,
        ))),
    }
}

/// The message of a claim that lost the race (the row was not free when
/// the compare-and-set ran, or another claim held it at that moment).
pub(crate) fn lost_race(namespace: &Namespace, role: &Role, detail: &str) -> BackendError {
    BackendError::Busy(format!(
        "another node claimed {namespace}/{role} first ({detail}); nothing changed, the next \
         round tries again"
    ))
}

fn text(s: &str) -> Param {
    Param::Text(s.to_owned())
}

fn roles_param(roles: &[Role]) -> Param {
    Param::TextArray(roles.iter().map(|r| r.as_str().to_owned()).collect())
}

/// What lease mode remembers of a role between calls, in place of a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseLock {
    /// `try_lock` found the row free (or this incarnation's own); no claim
    /// committed since.
    Granted,
    /// A claim is in flight (`ticket` tells claims apart). If the role is
    /// unlocked, released or reset meanwhile, the entry is gone when the
    /// claim commits, and the claim ends the lease it just wrote at once:
    /// nobody leads with it.
    Claiming {
        /// Which claim.
        ticket: u64,
    },
    /// A claim of this backend committed for `holder` at `term`.
    Claimed {
        /// The holder the claim named.
        holder: String,
        /// The term it wrote.
        term: Term,
    },
}

/// The key of [`LeaseLock`]s: `(namespace, role)`.
pub(crate) type LockKey = (String, String);

fn key(ns: &Namespace, role: &Role) -> LockKey {
    (ns.as_str().to_owned(), role.as_str().to_owned())
}

impl<D: Driver> Engine<D> {
    fn locks(&self) -> std::sync::MutexGuard<'_, HashMap<LockKey, LeaseLock>> {
        // A poisoned map only means another call panicked mid-update of a
        // plain map: its content is still usable.
        self.lease_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) async fn lm_connect(&self) -> Result<(), BackendError> {
        let rows = self
            .pool(
                &self.sql.table_exists,
                &[text(&self.settings.table.qualified())],
            )
            .await?;
        table_state(&rows, &self.settings.table)
    }

    pub(crate) async fn lm_ping(&self) -> Result<(), BackendError> {
        self.pool(&self.sql.now, &[]).await.map(|_| ())
    }

    pub(crate) async fn lm_try_lock(
        &self,
        ns: &Namespace,
        roles: &[Role],
    ) -> Result<TryLockOutcome, BackendError> {
        let bad = |e: DbError| crate::unreadable_row(&e.message);
        if roles.is_empty() {
            let rows = self.pool(&self.sql.now, &[]).await?;
            let row = rows.first().ok_or_else(|| bad(DbError::other("no row")))?;
            return Ok(TryLockOutcome {
                db_now: db_now(row).map_err(bad)?,
                attempts: Vec::new(),
            });
        }
        let rows = self
            .pool(
                &self.sql.lease_try_lock,
                &[
                    text(ns.as_str()),
                    roles_param(roles),
                    self.incarnation_param(),
                ],
            )
            .await?;
        crate::check_try_lock_rows(rows.len(), roles.len())?;
        let mut attempts = Vec::with_capacity(roles.len());
        for (role, row) in roles.iter().zip(&rows) {
            attempts.push(LockAttempt {
                role: role.clone(),
                granted: row
                    .bool("granted")
                    .map_err(|e| crate::unreadable_row(&e.to_string()))?,
                lease: lease_from_row(row, ns, role)?,
            });
        }
        let mut locks = self.locks();
        for a in attempts.iter().filter(|a| a.granted) {
            locks.entry(key(ns, &a.role)).or_insert(LeaseLock::Granted);
        }
        drop(locks);
        Ok(TryLockOutcome {
            db_now: db_now(&rows[0]).map_err(bad)?,
            attempts,
        })
    }

    /// The compare-and-set claim. Runs in a task of its own, so a claim
    /// that commits is recorded (for validation, and for a release without
    /// a term) even if the caller gave up waiting for it — or, if the role
    /// was given up while it ran (unlock, release, reset), ended at once.
    pub(crate) async fn lm_claim(
        self: &Arc<Self>,
        ns: &Namespace,
        role: &Role,
        holder: &NodeId,
        lease: Duration,
    ) -> Result<ClaimOutcome, BackendError> {
        static TICKETS: AtomicU64 = AtomicU64::new(0);
        let ticket = TICKETS.fetch_add(1, Ordering::Relaxed);
        self.locks()
            .insert(key(ns, role), LeaseLock::Claiming { ticket });
        let engine = Arc::clone(self);
        let (ns, role, holder) = (ns.clone(), role.clone(), holder.clone());
        let task = tokio::spawn(async move {
            let result = engine.lm_claim_now(&ns, &role, &holder, lease).await;
            let given_up = {
                let mut locks = engine.locks();
                let k = key(&ns, &role);
                let current = locks.get(&k) == Some(&LeaseLock::Claiming { ticket });
                match &result {
                    Ok(outcome) if current => {
                        let claimed = LeaseLock::Claimed {
                            holder: holder.as_str().to_owned(),
                            term: outcome.term,
                        };
                        locks.insert(k, claimed);
                        None
                    }
                    Ok(outcome) => Some(outcome.term),
                    Err(_) => {
                        if current {
                            locks.insert(k, LeaseLock::Granted);
                        }
                        None
                    }
                }
            };
            if let Some(term) = given_up {
                tracing::debug!(%ns, %role, %term, "the role was given up while its claim ran; ending that lease");
                if let Err(e) = engine.lm_expire(&ns, &role, &holder, term).await {
                    tracing::warn!(%ns, %role, error = %e, "could not end a claim nobody leads with; it runs out by itself");
                }
            }
            result
        });
        task.await.unwrap_or_else(|e| {
            Err(BackendError::Transient(format!(
                "the claim's task ended without a result: {e}"
            )))
        })
    }

    async fn lm_claim_now(
        &self,
        ns: &Namespace,
        role: &Role,
        holder: &NodeId,
        lease: Duration,
    ) -> Result<ClaimOutcome, BackendError> {
        let params = [
            text(ns.as_str()),
            text(role.as_str()),
            text(holder.as_str()),
            Param::Int8(crate::micros(lease)),
            self.incarnation_param(),
        ];
        let rows = match self.pool_rows(&self.sql.lease_claim, &params).await? {
            Ok(rows) => rows,
            Err(e) if e.sqlstate.as_deref() == Some(SQLSTATE_LOCK_NOT_AVAILABLE) => {
                return Err(lost_race(
                    ns,
                    role,
                    "its lease row is locked by another claim or by fenced work still in flight",
                ));
            }
            Err(e) => return Err(self.pool_error(&e)),
        };
        let bad = |e: DbError| crate::unreadable_row(&e.message);
        let row = rows.first().ok_or_else(|| bad(DbError::other("no row")))?;
        let previous = lease_from_row(row, ns, role)?;
        let Some(new_term) = row.opt_int("new_term").map_err(|e| bad(e.into()))? else {
            let detail = match &previous {
                Some(p) => format!("{} holds it at term {}", p.holder, p.term),
                None => "its row was created meanwhile".to_owned(),
            };
            return Err(lost_race(ns, role, &detail));
        };
        Ok(ClaimOutcome {
            term: crate::term_from_db(new_term)?,
            previous,
            db_now: db_now(row).map_err(bad)?,
        })
    }

    /// Validation: a role granted but not yet claimed is held while a claim
    /// could still succeed; a claimed role while its row still names the
    /// claim's holder, term and this incarnation. Roles this backend has no
    /// record of are not held (no round trip for them).
    pub(crate) async fn lm_held(
        &self,
        ns: &Namespace,
        roles: &[Role],
    ) -> Result<Vec<Role>, BackendError> {
        let known: Vec<(Role, LeaseLock)> = {
            let locks = self.locks();
            roles
                .iter()
                .filter_map(|r| locks.get(&key(ns, r)).map(|l| (r.clone(), l.clone())))
                .collect()
        };
        if known.is_empty() {
            return Ok(Vec::new());
        }
        let (mut names, mut holders, mut terms) = (Vec::new(), Vec::new(), Vec::new());
        for (role, lock) in &known {
            names.push(role.as_str().to_owned());
            let (h, t) = match lock {
                LeaseLock::Granted | LeaseLock::Claiming { .. } => (String::new(), 0),
                LeaseLock::Claimed { holder, term } => (holder.clone(), crate::term_to_db(*term)),
            };
            holders.push(h);
            terms.push(t);
        }
        let rows = self
            .pool(
                &self.sql.lease_held,
                &[
                    text(ns.as_str()),
                    Param::TextArray(names),
                    Param::TextArray(holders),
                    Param::Int8Array(terms),
                    self.incarnation_param(),
                ],
            )
            .await?;
        let held = rows
            .first()
            .map(|r| r.text_array("held"))
            .transpose()
            .map_err(|e| crate::unreadable_row(&e.to_string()))?
            .unwrap_or_default();
        Ok(known
            .into_iter()
            .map(|(r, _)| r)
            .filter(|r| held.iter().any(|h| h == r.as_str()))
            .collect())
    }

    pub(crate) async fn lm_renew(
        &self,
        ns: &Namespace,
        holder: &NodeId,
        held: &[HeldLease],
        lease: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        let roles: Vec<String> = held.iter().map(|h| h.role.as_str().to_owned()).collect();
        let terms: Vec<i64> = held.iter().map(|h| crate::term_to_db(h.term)).collect();
        let rows = self
            .pool(
                &self.sql.lease_renew,
                &[
                    text(ns.as_str()),
                    text(holder.as_str()),
                    Param::TextArray(roles),
                    Param::Int8Array(terms),
                    Param::Int8(crate::micros(lease)),
                    self.incarnation_param(),
                ],
            )
            .await?;
        let bad = |e: DbError| crate::unreadable_row(&e.message);
        let row = rows.first().ok_or_else(|| bad(DbError::other("no row")))?;
        let renewed = row.text_array("renewed").map_err(|e| bad(e.into()))?;
        Ok(RenewOutcome {
            db_now: db_now(row).map_err(bad)?,
            renewed: crate::renewed_roles(held, &renewed),
        })
    }

    pub(crate) async fn lm_expire(
        &self,
        ns: &Namespace,
        role: &Role,
        holder: &NodeId,
        term: Term,
    ) -> Result<(), BackendError> {
        self.pool(
            &self.sql.expire,
            &[
                text(ns.as_str()),
                text(role.as_str()),
                text(holder.as_str()),
                Param::Int8(crate::term_to_db(term)),
                self.incarnation_param(),
            ],
        )
        .await
        .map(|_| ())
    }

    /// `unlock`: forgets the role (nothing is locked in the database).
    pub(crate) fn lm_unlock(&self, ns: &Namespace, role: &Role) {
        self.locks().remove(&key(ns, role));
    }

    /// `reset`: forgets every role.
    pub(crate) fn lm_reset(&self) {
        self.locks().clear();
    }

    /// Release: ends the lease — of `term`, or, without one, of the claim
    /// this backend committed for the role and has not released (the
    /// caller gave up waiting for it; nobody leads with it, and the lease
    /// it replaced had ended or was this incarnation's own) — then forgets
    /// the role. Nothing to unlock and no notification: standbys find the
    /// role free at their next retry round.
    pub(crate) async fn lm_release(
        &self,
        ns: &Namespace,
        role: &Role,
        holder: &NodeId,
        term: Option<Term>,
    ) -> Result<Released, BackendError> {
        let recorded = match self.locks().remove(&key(ns, role)) {
            Some(LeaseLock::Claimed { holder: h, term: t }) if h == holder.as_str() => Some(t),
            _ => None,
        };
        let mut out = Released::new(false);
        if let Some(term) = term.or(recorded) {
            match self.lm_expire(ns, role, holder, term).await {
                Ok(()) => {}
                // As the trait's default: the lease then runs out by itself.
                Err(e) => out.expire_failed = Some(e),
            }
        }
        Ok(out)
    }
}
