//! Rows read back from the database: [`LeaseRow`] and the conversions of
//! terms and durations to and from their column types.

use thiserror::Error;

use crate::types::{DbTimestamp, LeaseRecord, NameError, Namespace, Role, Term};

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
    }
}
