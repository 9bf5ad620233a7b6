//! Rows read back from the database: [`LeaseRow`] and the conversions of
//! terms and durations to and from their column types.

use thiserror::Error;

use crate::{PREEMPT_NOT_PERMITTED, PREEMPT_NOT_ZOMBIE, PREEMPT_TERMINATED};
use regent_core::{BackendError, HeldLease, PreemptOutcome};
use regent_core::{DbTimestamp, LeaseRecord, NameError, Namespace, Role, Term};

/// A row read from the database that does not fit the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RowError {
    /// A name in the table failed validation (written by something else).
    #[error("lease table holds an invalid name: {0}")]
    Name(#[from] NameError),
    /// A term was negative.
    #[error("lease table holds a negative term {0}; terms start at 1")]
    NegativeTerm(i64),
}

impl From<RowError> for BackendError {
    fn from(e: RowError) -> Self {
        BackendError::Transient(e.to_string())
    }
}

/// A lease row that could not be read (a column of the wrong type):
/// `detail` describes the driver's error.
pub fn unreadable_row(detail: &str) -> BackendError {
    BackendError::Transient(format!("unreadable lease row: {detail}"))
}

/// The lease columns of one row, as raw column values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// `namespace`.
    pub namespace: String,
    /// `role`.
    pub role: String,
    /// `holder`.
    pub holder: String,
    /// `term`.
    pub term: i64,
    /// `backend_pid`.
    pub backend_pid: Option<i32>,
    /// `acquired_us`: `acquired_at` in epoch µs.
    pub acquired_us: i64,
    /// `renewed_us`: `renewed_at` in epoch µs.
    pub renewed_us: i64,
    /// `until_us`: `lease_until` in epoch µs.
    pub until_us: i64,
}

impl LeaseRow {
    /// Validates the row into a [`LeaseRecord`].
    pub fn into_record(self) -> Result<LeaseRecord, RowError> {
        Ok(LeaseRecord {
            namespace: Namespace::new(self.namespace)?,
            role: Role::new(self.role)?,
            holder: self.holder,
            term: term_from_db(self.term)?,
            session: self.backend_pid.map(i64::from),
            acquired_at: DbTimestamp::from_micros(self.acquired_us),
            renewed_at: DbTimestamp::from_micros(self.renewed_us),
            lease_until: DbTimestamp::from_micros(self.until_us),
        })
    }
}

/// The `namespace` and `role` columns of a row that carries its own
/// (`None` when either is `NULL`: a `LEFT JOIN` found no row), validated.
pub fn lease_names(
    namespace: Option<String>,
    role: Option<String>,
) -> Result<Option<(Namespace, Role)>, RowError> {
    let (Some(ns), Some(role)) = (namespace, role) else {
        return Ok(None);
    };
    Ok(Some((Namespace::new(ns)?, Role::new(role)?)))
}

/// The roles of `held` named in `renewed` (the `renewed` column of the
/// renew statement), in `held`'s order.
pub fn renewed_roles(held: &[HeldLease], renewed: &[String]) -> Vec<Role> {
    held.iter()
        .filter(|h| renewed.iter().any(|r| r == h.role.as_str()))
        .map(|h| h.role.clone())
        .collect()
}

/// The `outcome` column of the preempt statement as a [`PreemptOutcome`];
/// anything else (or no row) is a transient error.
pub fn preempt_outcome(outcome: Option<&str>) -> Result<PreemptOutcome, BackendError> {
    match outcome {
        Some(PREEMPT_TERMINATED) => Ok(PreemptOutcome::Terminated),
        Some(PREEMPT_NOT_PERMITTED) => Ok(PreemptOutcome::NotPermitted),
        Some(PREEMPT_NOT_ZOMBIE) => Ok(PreemptOutcome::NotZombie),
        other => Err(BackendError::Transient(format!(
            "unexpected preempt outcome {other:?}"
        ))),
    }
}

/// The message to log, once per backend, when preempting a zombie holder
/// is not permitted.
pub const PREEMPT_NOT_PERMITTED_WARNING: &str = "cannot terminate the zombie holder's backend: \
     grant the role `pg_signal_backend` to preempt zombies; waiting for it instead";

/// A `bigint` term as a [`Term`].
pub fn term_from_db(term: i64) -> Result<Term, RowError> {
    u64::try_from(term)
        .map(Term)
        .map_err(|_| RowError::NegativeTerm(term))
}

/// A [`Term`] as a `bigint` (saturating at `i64::MAX`, which no real term
/// reaches).
pub fn term_to_db(term: Term) -> i64 {
    i64::try_from(term.0).unwrap_or(i64::MAX)
}

/// A duration as `int8` microseconds (saturating).
pub fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_convert() {
        let row = LeaseRow {
            namespace: "default".into(),
            role: "r".into(),
            holder: "n".into(),
            term: 3,
            backend_pid: Some(42),
            acquired_us: 1,
            renewed_us: 2,
            until_us: 3,
        };
        let rec = row.clone().into_record().unwrap();
        assert_eq!((rec.term, rec.session), (Term(3), Some(42)));
        let bad = LeaseRow { term: -1, ..row };
        assert_eq!(bad.into_record(), Err(RowError::NegativeTerm(-1)));
        assert_eq!(term_to_db(Term(u64::MAX)), i64::MAX);
        let e = BackendError::from(RowError::NegativeTerm(-1));
        assert!(e.is_retryable() && e.to_string().contains("negative term"));
        assert!(
            unreadable_row("x")
                .to_string()
                .contains("unreadable lease row: x")
        );
    }

    #[test]
    fn names_roles_and_outcomes() {
        assert_eq!(lease_names(None, Some("r".into())), Ok(None));
        let (ns, role) = lease_names(Some("default".into()), Some("r".into()))
            .unwrap()
            .unwrap();
        assert_eq!((ns.as_str(), role.as_str()), ("default", "r"));
        let bad = lease_names(Some("default".into()), Some(String::new())).unwrap_err();
        assert!(
            bad.to_string()
                .starts_with("lease table holds an invalid name")
        );
        let held = ["a", "b", "c"].map(|r| HeldLease {
            role: Role::new(r).unwrap(),
            term: Term(1),
        });
        let renewed = renewed_roles(&held, &["c".to_owned(), "a".to_owned()]);
        assert_eq!(renewed, [Role::new("a").unwrap(), Role::new("c").unwrap()]);
        assert_eq!(
            preempt_outcome(Some(PREEMPT_TERMINATED)).unwrap(),
            PreemptOutcome::Terminated
        );
        assert_eq!(
            preempt_outcome(Some(PREEMPT_NOT_ZOMBIE)).unwrap(),
            PreemptOutcome::NotZombie
        );
        assert!(preempt_outcome(Some("?")).is_err() && preempt_outcome(None).is_err());
    }
}
