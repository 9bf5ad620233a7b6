//! The check of a fenced transaction: does the lease row, read `FOR SHARE`,
//! still name the caller's holder at the caller's term?

use std::fmt;

use regent_core::{Namespace, NodeId, Role, Term};

/// A stale fencing token: the lease row no longer names this holder with
/// this term (another node took over, or the lease never existed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    /// The namespace.
    pub namespace: String,
    /// The role.
    pub role: String,
    /// The token the caller presented.
    pub token: Term,
    /// Who holds the lease now, if there is a row.
    pub current_holder: Option<String>,
    /// The current term, if there is a row.
    pub current_term: Option<Term>,
}

impl Stale {
    /// The message of a stale token, for the backends' `FencedError::Stale`.
    pub fn message(
        namespace: &str,
        role: &str,
        token: Term,
        current_holder: Option<&str>,
        current_term: Option<Term>,
    ) -> String {
        let current = match (current_holder, current_term) {
            (Some(h), Some(t)) => format!("held by {h:?} at term {t}"),
            _ => "missing".to_owned(),
        };
        format!(
            "stale fencing token {token} for role {role:?} in namespace {namespace:?}: the \
             lease is now {current}; this node is no longer leader, so drop the write instead \
             of retrying"
        )
    }
}

impl fmt::Display for Stale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&Self::message(
            &self.namespace,
            &self.role,
            self.token,
            self.current_holder.as_deref(),
            self.current_term,
        ))
    }
}

impl std::error::Error for Stale {}

/// Checks the lease row of a fenced transaction: `current` is the row's
/// `(holder, term)` columns, `None` when there is no row. `Ok` when it
/// names `holder` at `token`.
pub fn check_fenced(
    namespace: &Namespace,
    role: &Role,
    holder: &NodeId,
    token: Term,
    current: Option<(String, i64)>,
) -> Result<(), Stale> {
    let current = current.map(|(h, t)| (h, u64::try_from(t).map(Term).unwrap_or_default()));
    match current {
        Some((h, t)) if h == holder.as_str() && t == token => Ok(()),
        other => {
            let (current_holder, current_term) = other.unzip();
            Err(Stale {
                namespace: namespace.as_str().to_owned(),
                role: role.as_str().to_owned(),
                token,
                current_holder,
                current_term,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenced_check() {
        let (ns, role) = (Namespace::default(), Role::new("r").unwrap());
        let a = NodeId::new("a").unwrap();
        assert_eq!(
            check_fenced(&ns, &role, &a, Term(3), Some(("a".into(), 3))),
            Ok(())
        );
        let stale = check_fenced(&ns, &role, &a, Term(3), Some(("b".into(), 4))).unwrap_err();
        assert_eq!(
            (stale.current_holder.as_deref(), stale.current_term),
            (Some("b"), Some(Term(4)))
        );
        let s = stale.to_string();
        assert!(
            s.contains("stale fencing token 3") && s.contains("\"b\" at term 4"),
            "{s}"
        );
        let missing = check_fenced(&ns, &role, &a, Term(3), None).unwrap_err();
        assert_eq!(missing.current_term, None);
        assert!(missing.to_string().contains("is now missing"));
        assert!(check_fenced(&ns, &role, &a, Term(2), Some(("a".into(), 3))).is_err());
    }
}
