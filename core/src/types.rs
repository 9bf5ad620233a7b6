//! Names, terms and the two clocks.
//!
//! Every name that reaches a database or a log goes through a validating
//! constructor here, so a bad name is a typed [`NameError`] at the edge and
//! never a panic or a mangled key deeper down.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

use thiserror::Error;

/// The longest name accepted, in bytes: regent's own limit, short enough
/// for readable status output and every engine's keys (an engine that needs
/// a shorter form, such as PostgreSQL's 63-byte channel names, hashes it).
pub const MAX_NAME_BYTES: usize = 63;

/// Why a [`Namespace`], [`Role`] or [`NodeId`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// The name was empty.
    #[error("{kind} name is empty: give a non-empty name such as \"scheduler\"")]
    Empty {
        /// Which kind of name ("role", "namespace", "node id").
        kind: &'static str,
    },
    /// The name was longer than [`MAX_NAME_BYTES`].
    #[error("{kind} name {name:?} is {len} bytes long; the limit is {max} bytes (UTF-8)")]
    TooLong {
        /// Which kind of name.
        kind: &'static str,
        /// The rejected name, truncated for display.
        name: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name contained a control character (including NUL, newline, tab).
    #[error(
        "{kind} name {name:?} contains the control character {ch:?} at byte {at}; \
         use printable characters only"
    )]
    ControlCharacter {
        /// Which kind of name.
        kind: &'static str,
        /// The rejected name.
        name: String,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// The name had leading or trailing whitespace, which is almost always
    /// a configuration mistake and would be invisible in status output.
    #[error("{kind} name {name:?} has leading or trailing whitespace; trim it")]
    Whitespace {
        /// Which kind of name.
        kind: &'static str,
        /// The rejected name.
        name: String,
    },
}

fn validate(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > MAX_NAME_BYTES {
        let shown: String = name.chars().take(MAX_NAME_BYTES).collect();
        return Err(NameError::TooLong {
            kind,
            name: shown,
            len: name.len(),
            max: MAX_NAME_BYTES,
        });
    }
    if let Some((at, ch)) = name.char_indices().find(|(_, c)| c.is_control()) {
        return Err(NameError::ControlCharacter {
            kind,
            name: name.to_owned(),
            ch,
            at,
        });
    }
    if name.trim() != name {
        return Err(NameError::Whitespace {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(String);

        impl $ty {
            #[doc = concat!("Validates and wraps a ", $kind, " name.")]
            ///
            /// # Errors
            /// [`NameError`] if the name is empty, longer than
            /// [`MAX_NAME_BYTES`], has control characters or surrounding
            /// whitespace.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                validate($kind, &name)?;
                Ok(Self(name))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// What is being led: `"scheduler"`, `"shard-17"`.
    ///
    /// ```
    /// use regent_core::Role;
    /// let role = Role::new("shard-17").unwrap();
    /// assert_eq!(role.as_str(), "shard-17");
    /// assert!(Role::new("").is_err());
    /// assert!(Role::new("a\nb").is_err());
    /// ```
    Role,
    "role"
);

name_type!(
    /// Isolates applications that share one database; the default is
    /// `"default"`.
    Namespace,
    "namespace"
);

name_type!(
    /// One participant in an election, shown in status output. Stable for the
    /// life of a process; [`NodeId::generate`] gives `hostname-xxxxxx`.
    NodeId,
    "node id"
);

impl Default for Namespace {
    fn default() -> Self {
        Self("default".to_owned())
    }
}

impl NodeId {
    /// A node id made of `host` (truncated to fit) and a random suffix drawn
    /// from `suffix`, e.g. `web-3-1f9a2c`. The caller supplies the host name
    /// and the randomness, so this stays free of IO.
    pub fn generate(host: &str, suffix: u64) -> Self {
        let clean: String = host
            .chars()
            .filter(|c| !c.is_control() && !c.is_whitespace())
            .collect();
        let mut base = if clean.is_empty() {
            "node".to_owned()
        } else {
            clean
        };
        let tail = format!("-{:06x}", suffix & 0xff_ffff);
        while base.len() + tail.len() > MAX_NAME_BYTES {
            base.pop();
        }
        Self(base + &tail)
    }
}

/// The per-role counter, incremented on every change of holder. The
/// leader's term is its fencing token: strictly increasing across leaders of
/// one role, so a downstream system rejects anything older than the newest
/// term it has seen. [`Fence`] carries it together with the role and holder.
///
/// Engines store terms as signed 64-bit integers (SQL `bigint`), so they
/// convert to and from `i64` without casts:
///
/// ```
/// use regent_core::{Term, TermError};
/// let term = Term(7);
/// let column: i64 = term.into();
/// assert_eq!(column, 7);
/// assert_eq!(Term::try_from(column), Ok(term));
/// assert_eq!(Term::try_from(-1), Err(TermError::Negative(-1)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Term(pub u64);

impl Term {
    /// The term as the unsigned counter.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// For `bigint` columns. Every term a backend hands out fits (they are read
/// from such a column); a hand-made term above `i64::MAX` saturates to
/// `i64::MAX`, which keeps the order of terms (never makes one look older).
impl From<Term> for i64 {
    fn from(term: Term) -> i64 {
        i64::try_from(term.0).unwrap_or(i64::MAX)
    }
}

/// Why an `i64` is not a [`Term`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TermError {
    /// Terms start at 0 and only grow; a negative value is not a term (a
    /// corrupted row, or a column that holds something else).
    #[error("{0} is not a term: terms are never negative; check the column you read it from")]
    Negative(i64),
}

impl TryFrom<i64> for Term {
    type Error = TermError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        u64::try_from(value)
            .map(Term)
            .map_err(|_| TermError::Negative(value))
    }
}

/// Proof of one term of leadership, to hand to anything leader-only work
/// writes to: the namespace and role led, the node that led it, and the
/// term. A downstream system stores the newest term it has accepted per
/// (namespace, role) and rejects writes carrying an older one.
///
/// ```
/// use regent_core::{Fence, Namespace, NodeId, Role, Term};
/// let fence = Fence::new(
///     Namespace::default(),
///     Role::new("scheduler")?,
///     NodeId::new("node-a")?,
///     Term(7),
/// );
/// assert_eq!(fence.term(), Term(7));
/// assert_eq!(i64::from(fence.term()), 7);
/// assert_eq!(fence.to_string(), "default/scheduler term 7 held by node-a");
/// # Ok::<(), regent_core::NameError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    namespace: Namespace,
    role: Role,
    holder: NodeId,
    term: Term,
}

impl Fence {
    /// A fence for `holder` leading `role` in `namespace` during `term`.
    pub fn new(namespace: Namespace, role: Role, holder: NodeId, term: Term) -> Self {
        Self {
            namespace,
            role,
            holder,
            term,
        }
    }

    /// The namespace of the role.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The role led.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The node that led it.
    pub fn holder(&self) -> &NodeId {
        &self.holder
    }

    /// The term: the fencing token proper.
    pub fn term(&self) -> Term {
        self.term
    }
}

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} term {} held by {}",
            self.namespace, self.role, self.term, self.holder
        )
    }
}

/// A reading of the node's own monotonic clock, as nanoseconds since an
/// arbitrary origin chosen by the driver.
///
/// Only meaningful on the node that produced it; never compare it with a
/// [`DbTimestamp`] or with another node's instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LocalInstant(u64);

impl LocalInstant {
    /// The origin of the node's clock.
    pub const ZERO: LocalInstant = LocalInstant(0);

    /// An instant `nanos` nanoseconds after the origin.
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// An instant `d` after the origin (saturating at `u64::MAX` ns).
    pub fn from_duration(d: Duration) -> Self {
        Self(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time since the origin.
    pub const fn as_duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// `self - earlier`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: LocalInstant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for LocalInstant {
    type Output = LocalInstant;
    fn add(self, d: Duration) -> LocalInstant {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        LocalInstant(self.0.saturating_add(nanos))
    }
}

impl Sub<Duration> for LocalInstant {
    type Output = LocalInstant;
    fn sub(self, d: Duration) -> LocalInstant {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        LocalInstant(self.0.saturating_sub(nanos))
    }
}

impl fmt::Display for LocalInstant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.as_duration().as_secs_f64())
    }
}

/// A reading of the engine's own clock (the database server's `now()`), as
/// microseconds since the Unix epoch.
///
/// Lease expiry that several nodes compare is always in this clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DbTimestamp(i64);

impl DbTimestamp {
    /// A timestamp `micros` microseconds after the Unix epoch.
    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// `self - earlier` as a duration, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: DbTimestamp) -> Duration {
        let diff = self.0.saturating_sub(earlier.0);
        Duration::from_micros(u64::try_from(diff).unwrap_or(0))
    }
}

impl Add<Duration> for DbTimestamp {
    type Output = DbTimestamp;
    fn add(self, d: Duration) -> DbTimestamp {
        let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        DbTimestamp(self.0.saturating_add(micros))
    }
}

impl Sub<Duration> for DbTimestamp {
    type Output = DbTimestamp;
    fn sub(self, d: Duration) -> DbTimestamp {
        let micros = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        DbTimestamp(self.0.saturating_sub(micros))
    }
}

impl fmt::Display for DbTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "db@{}.{:06}",
            self.0.div_euclid(1_000_000),
            self.0.rem_euclid(1_000_000)
        )
    }
}

/// One row of the lease table as a backend read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The namespace of the role.
    pub namespace: Namespace,
    /// The role.
    pub role: Role,
    /// The node that holds (or last held) the lease. Stored as text so a
    /// row written by another implementation never fails to parse.
    pub holder: String,
    /// The holder's term.
    pub term: Term,
    /// An opaque id of the holder's session, if the engine has sessions
    /// (PostgreSQL: the backend pid); engines that can depose a zombie
    /// holder ([`Depose`](crate::Depose)) use it to make sure they depose
    /// that session and no other.
    pub session: Option<i64>,
    /// When the holder claimed the lease.
    pub acquired_at: DbTimestamp,
    /// When the holder last renewed it.
    pub renewed_at: DbTimestamp,
    /// When the lease ends, in database time.
    pub lease_until: DbTimestamp,
}

impl LeaseRecord {
    /// Whether the lease has ended at database time `now`.
    pub fn expired_at(&self, now: DbTimestamp) -> bool {
        now >= self.lease_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(Role::new("scheduler").is_ok());
        assert!(Role::new("quo'te \"x\" %; ünïcødé ✓").is_ok());
        assert_eq!(Role::new(""), Err(NameError::Empty { kind: "role" }));
        assert!(matches!(
            Role::new("x".repeat(64)),
            Err(NameError::TooLong { len: 64, .. })
        ));
        assert!(Role::new("x".repeat(63)).is_ok());
        // 21 three-byte characters = 63 bytes; one more is too long.
        assert!(Role::new("€".repeat(21)).is_ok());
        assert!(Role::new("€".repeat(22)).is_err());
        assert!(matches!(
            Namespace::new("a\0b"),
            Err(NameError::ControlCharacter { at: 1, .. })
        ));
        assert!(matches!(
            NodeId::new(" n"),
            Err(NameError::Whitespace { .. })
        ));
        assert_eq!(Namespace::default().as_str(), "default");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Role::new("a\tb").unwrap_err().to_string();
        assert!(e.contains("role") && e.contains("control"), "{e}");
    }

    #[test]
    fn generated_node_ids_are_valid() {
        let id = NodeId::generate("web-3", 0x1f9a2c);
        assert_eq!(id.as_str(), "web-3-1f9a2c");
        let long = NodeId::generate(&"h".repeat(100), 7);
        assert_eq!(long.as_str().len(), MAX_NAME_BYTES);
        assert!(NodeId::new(long.as_str()).is_ok());
        assert_eq!(NodeId::generate("", 1).as_str(), "node-000001");
    }

    #[test]
    fn terms_convert_to_and_from_bigint() {
        assert_eq!(i64::from(Term(0)), 0);
        assert_eq!(i64::from(Term(i64::MAX as u64)), i64::MAX);
        // Saturates instead of wrapping negative (which would look oldest).
        assert_eq!(i64::from(Term(u64::MAX)), i64::MAX);
        assert_eq!(Term::try_from(i64::MAX), Ok(Term(i64::MAX as u64)));
        assert_eq!(Term::try_from(i64::MIN), Err(TermError::Negative(i64::MIN)));
        let e = TermError::Negative(-3).to_string();
        assert!(e.contains("-3") && e.contains("never negative"), "{e}");
    }

    #[test]
    fn fences_compare_by_every_part() {
        let f = |node: &str, term| {
            Fence::new(
                Namespace::default(),
                Role::new("r").unwrap(),
                NodeId::new(node).unwrap(),
                Term(term),
            )
        };
        assert_eq!(f("a", 1), f("a", 1));
        assert_ne!(f("a", 1), f("a", 2));
        assert_ne!(f("a", 1), f("b", 1));
        assert_eq!(f("b", 3).holder().as_str(), "b");
        assert_eq!(f("b", 3).role().as_str(), "r");
        assert_eq!(f("b", 3).namespace().as_str(), "default");
    }

    #[test]
    fn clocks_saturate() {
        let t = LocalInstant::from_nanos(5);
        assert_eq!(t - Duration::from_secs(1), LocalInstant::ZERO);
        assert_eq!(LocalInstant::ZERO.saturating_since(t), Duration::ZERO);
        let d = DbTimestamp::from_micros(1_000_000);
        assert_eq!((d + Duration::from_millis(1)).as_micros(), 1_001_000);
        assert_eq!(
            d.saturating_since(d + Duration::from_secs(1)),
            Duration::ZERO
        );
        assert_eq!(d.to_string(), "db@1.000000");
    }
}
