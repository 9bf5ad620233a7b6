//! Advisory-lock keys and channel names: FNV-1a 64 and its fold to `int4`
//! (see the [module docs](super) for the algorithm and test vectors).

use crate::TableName;
use regent_core::{Namespace, Role};

/// The `bigint` key of `pg_advisory_xact_lock` that serialises concurrent
/// migrations of one table. It uses the one-`int8` key form, a lock space
/// separate from role locks: FNV-1a 64 of `"regent:migrate:"` followed by
/// [`TableName::qualified`], as `i64`.
pub fn migrate_lock_key(table: &TableName) -> i64 {
    let mut bytes = b"regent:migrate:".to_vec();
    bytes.extend_from_slice(table.qualified().as_bytes());
    i64::from_ne_bytes(fnv1a64(&bytes).to_ne_bytes())
}

/// FNV-1a, 64 bit, over `bytes` (offset basis `0xcbf29ce484222325`, prime
/// `0x100000001b3`).
///
/// ```
/// use regent_postgres::fnv1a64;
/// assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
/// assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
/// assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
/// ```
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Folds a 64-bit hash to an `int4` key: `(h >> 32) ^ (h & 0xffff_ffff)`,
/// reinterpreted as two's complement.
pub fn fold32(h: u64) -> i32 {
    let folded = ((h >> 32) ^ (h & 0xffff_ffff)) as u32;
    i32::from_ne_bytes(folded.to_ne_bytes())
}

/// The two `int4` keys of a role's advisory lock; see the module docs for
/// the algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdvisoryKey {
    /// Key of the namespace (`classid` in `pg_locks`).
    pub ns: i32,
    /// Key of the role (`objid` in `pg_locks`).
    pub role: i32,
}

impl AdvisoryKey {
    /// Derives the key pair of `role` in `namespace`.
    ///
    /// ```
    /// use regent_core::{Namespace, Role};
    /// use regent_postgres::AdvisoryKey;
    /// let key = AdvisoryKey::derive(&Namespace::default(), &Role::new("scheduler").unwrap());
    /// assert_eq!(key, AdvisoryKey { ns: 1837981928, role: 944745537 });
    /// ```
    pub fn derive(namespace: &Namespace, role: &Role) -> Self {
        Self {
            ns: fold32(fnv1a64(namespace.as_str().as_bytes())),
            role: fold32(fnv1a64(role.as_str().as_bytes())),
        }
    }

    /// The key as `pg_locks` shows it (`classid`, `objid` are unsigned
    /// `oid`s; pass them cast to `int8`).
    pub fn from_pg_locks(classid: i64, objid: i64) -> Self {
        let to_i32 = |v: i64| i32::from_ne_bytes((v as u32).to_ne_bytes());
        Self {
            ns: to_i32(classid),
            role: to_i32(objid),
        }
    }
}

/// The `application_name` a fenced transaction carries while it runs:
/// `regent:fenced:` and 16 hex digits of FNV-1a 64 over namespace, role,
/// holder and term (NUL-separated). It names exactly one term of one
/// holder, so deposing that holder ([`crate::PgBackend`]'s `Depose`) can end
/// the fenced work it left open — and nothing else — and an operator can
/// tell fenced work apart in `pg_stat_activity`.
///
/// ```
/// use regent_core::{Fence, Namespace, NodeId, Role, Term};
/// use regent_postgres::fenced_application_name;
/// let name = fenced_application_name(
///     &Namespace::default(),
///     &Role::new("scheduler").unwrap(),
///     "node-a",
///     Term(7),
/// );
/// assert!(name.starts_with("regent:fenced:") && name.len() == 30);
/// ```
pub fn fenced_application_name(
    namespace: &Namespace,
    role: &Role,
    holder: &str,
    term: regent_core::Term,
) -> String {
    let key = format!(
        "{}\0{}\0{}\0{}",
        namespace.as_str(),
        role.as_str(),
        holder,
        term.0
    );
    format!("regent:fenced:{:016x}", fnv1a64(key.as_bytes()))
}

/// The `LISTEN`/`NOTIFY` channel of a namespace's release notifications:
/// `regent:<namespace>` if that fits PostgreSQL's 63-byte limit, else
/// `regent:<prefix>:<16 hex digits of FNV-1a 64 of the namespace>`,
/// 63 bytes at most. The payload is the role name.
///
/// ```
/// use regent_core::Namespace;
/// use regent_postgres::notify_channel;
/// assert_eq!(notify_channel(&Namespace::default()), "regent:default");
/// let long = Namespace::new("n".repeat(63)).unwrap();
/// assert!(notify_channel(&long).len() <= 63);
/// ```
pub fn notify_channel(namespace: &Namespace) -> String {
    let ns = namespace.as_str();
    let plain = format!("regent:{ns}");
    if plain.len() <= 63 {
        return plain;
    }
    let mut prefix_len = 63 - "regent:".len() - 1 - 16;
    while !ns.is_char_boundary(prefix_len) {
        prefix_len -= 1;
    }
    format!(
        "regent:{}:{:016x}",
        &ns[..prefix_len],
        fnv1a64(ns.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_test_vectors() {
        let vectors: [(&str, u64, i32); 6] = [
            ("", 0xcbf2_9ce4_8422_2325, 1_339_080_641),
            ("a", 0xaf63_dc4c_8601_ec8c, 694_300_864),
            ("default", 0xebad_a516_8620_c5fe, 1_837_981_928),
            ("scheduler", 0xa3e6_6bbb_9ba9_c7fa, 944_745_537),
            ("billing", 0x4005_5702_95af_d25c, -710_245_026),
            ("ünïcødé", 0x7fe9_369f_83b5_96a0, -61_038_529),
        ];
        for (name, hash, key) in vectors {
            assert_eq!(
                (fnv1a64(name.as_bytes()), fold32(hash)),
                (hash, key),
                "{name:?}"
            );
        }
        let k = AdvisoryKey::derive(&Namespace::default(), &Role::new("scheduler").unwrap());
        assert_eq!((k.ns, k.role), (1_837_981_928, 944_745_537));
        let k = AdvisoryKey::from_pg_locks(4_294_967_291, 2_147_483_648);
        assert_eq!((k.ns, k.role), (-5, i32::MIN));
    }

    #[test]
    fn channels() {
        let c = notify_channel(&Namespace::new("é".repeat(31)).unwrap());
        assert!(c.len() <= 63 && c.starts_with("regent:é"), "{c}");
    }
}
