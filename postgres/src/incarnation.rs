//! [`Incarnation`]: the random id each backend (each elector process)
//! writes into the lease rows it claims.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A random id drawn once per [`PgBackend`](crate::PgBackend) (so once per
/// elector process, normally) and written into every lease row it claims.
///
/// "My own lease" means the same holder **and** the same incarnation: two
/// processes that share a node id by mistake never count as one holder, so
/// neither renews, expires nor re-claims the other's lease. Clones of one
/// backend share its incarnation.
///
/// ```
/// use regent_postgres::Incarnation;
/// let a = Incarnation::random();
/// let b = Incarnation::random();
/// assert_ne!(a, b);
/// assert_eq!(a.as_str().len(), 32);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Incarnation(String);

impl Incarnation {
    /// 128 bits from the operating system's randomness, as 32 lowercase
    /// hex digits. Should the OS have no randomness to give (it practically
    /// never happens), the id is made from the clock, the process id and a
    /// per-process counter instead: still distinct between processes.
    pub fn random() -> Self {
        let (hi, lo) = match (getrandom::u64(), getrandom::u64()) {
            (Ok(hi), Ok(lo)) => (hi, lo),
            _ => fallback(),
        };
        Self(format!("{hi:016x}{lo:016x}"))
    }

    /// The id as written into the `incarnation` column.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Incarnation({})", self.0)
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn fallback() -> (u64, u64) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Truncation is intended: the low 64 bits of the clock vary fastest.
    #[allow(clippy::cast_possible_truncation)]
    let nanos = nanos as u64;
    (nanos, (u64::from(std::process::id()) << 32) ^ count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnations_are_random_hex_and_distinct() {
        let ids: std::collections::HashSet<_> = (0..64).map(|_| Incarnation::random()).collect();
        assert_eq!(ids.len(), 64);
        for id in &ids {
            assert_eq!(id.as_str().len(), 32);
            assert!(
                id.as_str()
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
        let (a, b) = (fallback(), fallback());
        assert_ne!(a, b, "the fallback differs even within one process");
    }
}
