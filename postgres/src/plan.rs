//! Lock planning on the session: which advisory locks a `try_lock` batch
//! takes, which a `held` check reports, and whether a claim may go ahead.
//! The session's bookkeeping is a map from each advisory key it holds to the
//! role it holds it for.

use std::collections::{HashMap, HashSet};

use crate::{AdvisoryKey, MODE_ALREADY_HELD, MODE_SKIP, MODE_TRY};
use regent_core::{BackendError, LockAttempt};
use regent_core::{LeaseRecord, Namespace, Role};

/// One role of a `try_lock` batch, planned against the session's held keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The role.
    pub role: Role,
    /// Its advisory key.
    pub key: AdvisoryKey,
    /// [`MODE_TRY`], [`MODE_ALREADY_HELD`] or [`MODE_SKIP`].
    pub mode: i16,
}

/// Two roles whose advisory keys collide: only one of them can be held by a
/// node at a time. The backends log these (rename one of the roles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCollision {
    /// The namespace of both roles.
    pub namespace: Namespace,
    /// The role that was skipped.
    pub role: Role,
    /// The role that holds (or was planned to take) the key.
    pub other: Role,
}

/// The message to log with a [`KeyCollision`].
pub const KEY_COLLISION_WARNING: &str = "advisory-lock key collision between two roles; only \
     one can be held by this node at a time (rename one of them)";

/// A planned `try_lock` batch: the roles in input order (each once), and
/// the key collisions found while planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockPlan {
    /// One entry per distinct role, in input order.
    pub planned: Vec<Planned>,
    /// Roles skipped because their key is held or planned for another role.
    pub collisions: Vec<KeyCollision>,
}

/// Decides, per role, whether to call `pg_try_advisory_lock`: never for a
/// key the session already holds (re-entrancy) or one already planned in
/// this batch, never for the same role twice.
pub fn plan(namespace: &Namespace, roles: &[Role], held: &HashMap<AdvisoryKey, Role>) -> LockPlan {
    let mut seen_roles = HashSet::new();
    let mut batch_keys: HashMap<AdvisoryKey, &Role> = HashMap::new();
    let mut out = LockPlan {
        planned: Vec::with_capacity(roles.len()),
        collisions: Vec::new(),
    };
    for role in roles {
        if !seen_roles.insert(role) {
            continue;
        }
        let key = AdvisoryKey::derive(namespace, role);
        let mode = match (held.get(&key), batch_keys.get(&key).copied()) {
            (Some(holder), _) if holder == role => MODE_ALREADY_HELD,
            (Some(other), _) | (None, Some(other)) => {
                out.collisions.push(KeyCollision {
                    namespace: namespace.clone(),
                    role: role.clone(),
                    other: other.clone(),
                });
                MODE_SKIP
            }
            (None, None) => {
                batch_keys.insert(key, role);
                MODE_TRY
            }
        };
        out.planned.push(Planned {
            role: role.clone(),
            key,
            mode,
        });
    }
    out
}

/// Which of `roles` the session holds, from its own record `held`.
///
/// The record is exact while the session lives: the engine records every
/// lock a statement took and closes the session whenever a lock statement
/// fails, and an advisory lock on a live session disappears only by that
/// session's own unlock. So lock validation needs no `pg_locks` scan, only
/// a round trip proving the session is alive and is still the same backend.
/// A key recorded for a colliding role does not count.
pub fn held_roles(
    namespace: &Namespace,
    roles: &[Role],
    held: &HashMap<AdvisoryKey, Role>,
) -> Vec<Role> {
    roles
        .iter()
        .filter(|role| held.get(&AdvisoryKey::derive(namespace, role)) == Some(*role))
        .cloned()
        .collect()
}

/// Refuses a claim on a session that does not hold the role's lock:
/// claiming without it would break mutual exclusion. This happens when the
/// session was replaced between `try_lock` and `claim` (the lock went with
/// the old session).
pub fn check_claim(
    held: &HashMap<AdvisoryKey, Role>,
    namespace: &Namespace,
    role: &Role,
) -> Result<(), BackendError> {
    if held.get(&AdvisoryKey::derive(namespace, role)) == Some(role) {
        Ok(())
    } else {
        Err(BackendError::SessionLost {
            reason: format!(
                "claim of {role:?} on a session that does not hold its lock (the session \
                 that took it is gone)"
            ),
        })
    }
}

/// The array parameters `$2`–`$5` of [`Statements::try_lock`](super::Statements::try_lock)
/// for a planned batch, one element per [`Planned`] role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TryLockParams {
    /// `$2 roles text[]`.
    pub roles: Vec<String>,
    /// `$3 ns_keys int4[]`.
    pub ns_keys: Vec<i32>,
    /// `$4 role_keys int4[]`.
    pub role_keys: Vec<i32>,
    /// `$5 modes int2[]`.
    pub modes: Vec<i16>,
}

impl TryLockParams {
    /// The parameters of `planned`, in order.
    pub fn new(planned: &[Planned]) -> Self {
        Self {
            roles: planned.iter().map(|p| p.role.as_str().to_owned()).collect(),
            ns_keys: planned.iter().map(|p| p.key.ns).collect(),
            role_keys: planned.iter().map(|p| p.key.role).collect(),
            modes: planned.iter().map(|p| p.mode).collect(),
        }
    }
}

/// Checks that `try_lock` returned one row per planned role; anything else
/// means the session cannot be trusted.
pub fn check_try_lock_rows(rows: usize, planned: usize) -> Result<(), BackendError> {
    if rows == planned {
        Ok(())
    } else {
        Err(BackendError::SessionLost {
            reason: format!("try_lock returned {rows} rows for {planned} roles"),
        })
    }
}

/// Records in `held` every key `try_lock` took (`granted` per planned role,
/// in order; a re-entrant or skipped role takes nothing). Do this before
/// anything else can fail, so no taken lock goes unrecorded.
pub fn record_granted(
    held: &mut HashMap<AdvisoryKey, Role>,
    planned: &[Planned],
    granted: &[bool],
) {
    for (p, &g) in planned.iter().zip(granted) {
        if g && p.mode == MODE_TRY {
            held.insert(p.key, p.role.clone());
        }
    }
}

/// The attempts of a `try_lock` batch: each planned role with whether it is
/// granted and the lease row read with it.
pub fn lock_attempts(
    planned: &[Planned],
    granted: Vec<bool>,
    leases: Vec<Option<LeaseRecord>>,
) -> Vec<LockAttempt> {
    planned
        .iter()
        .zip(granted)
        .zip(leases)
        .map(|((p, granted), lease)| LockAttempt {
            role: p.role.clone(),
            granted,
            lease,
        })
        .collect()
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
        let plan1 = plan(&ns, &roles, &held);
        let modes: Vec<(&str, i16)> = plan1
            .planned
            .iter()
            .map(|p| (p.role.as_str(), p.mode))
            .collect();
        assert_eq!(
            modes,
            [("a", MODE_ALREADY_HELD), ("b", MODE_TRY), ("c", MODE_TRY)]
        );
        assert!(plan1.collisions.is_empty());
        // A colliding key held for another role is skipped, not re-taken.
        held.insert(AdvisoryKey::derive(&ns, &role("c")), role("other"));
        let plan2 = plan(&ns, &[role("c")], &held);
        assert_eq!(plan2.planned[0].mode, MODE_SKIP);
        assert_eq!(
            plan2.collisions,
            [KeyCollision {
                namespace: ns,
                role: role("c"),
                other: role("other"),
            }]
        );
    }

    #[test]
    fn held_roles_come_from_the_record() {
        let ns = Namespace::default();
        let (a, b, c) = (role("a"), role("b"), role("c"));
        let key = |r: &Role| AdvisoryKey::derive(&ns, r);
        let mut held = HashMap::new();
        held.insert(key(&a), a.clone());
        // A key recorded for another (colliding) role does not count.
        held.insert(key(&b), c.clone());
        let out = held_roles(&ns, &[a.clone(), b.clone(), c.clone()], &held);
        assert_eq!(out, std::slice::from_ref(&a));
        assert!(check_claim(&held, &ns, &a).is_ok());
        assert!(check_claim(&held, &ns, &c).unwrap_err().is_session_lost());
    }

    #[test]
    fn try_lock_params_and_results() {
        let ns = Namespace::default();
        let (a, b) = (role("a"), role("b"));
        let mut held = HashMap::new();
        held.insert(AdvisoryKey::derive(&ns, &a), a.clone());
        let planned = plan(&ns, &[a.clone(), b.clone()], &held).planned;
        let params = TryLockParams::new(&planned);
        assert_eq!(params.roles, ["a", "b"]);
        assert_eq!(params.modes, [MODE_ALREADY_HELD, MODE_TRY]);
        assert_eq!(params.ns_keys[0], AdvisoryKey::derive(&ns, &b).ns);
        assert_eq!(params.role_keys[1], AdvisoryKey::derive(&ns, &b).role);
        assert!(check_try_lock_rows(2, 2).is_ok());
        assert!(check_try_lock_rows(1, 2).unwrap_err().is_session_lost());
        held.clear();
        record_granted(&mut held, &planned, &[true, true]);
        // Only MODE_TRY roles took a lock.
        assert_eq!(held.len(), 1);
        assert_eq!(held.get(&AdvisoryKey::derive(&ns, &b)), Some(&b));
        let attempts = lock_attempts(&planned, vec![true, false], vec![None, None]);
        assert_eq!(attempts.len(), 2);
        assert!(attempts[0].granted && !attempts[1].granted);
        assert_eq!(attempts[1].role, b);
    }
}
