//! A resource guarded by fencing tokens, like `backend.fenced(token)`: a
//! write commits only if the lease row still names the writer and its term.

use regent_core::{BackendError, Namespace, NodeId, Role, Term};

use super::SimDb;

/// What a fenced write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FencedOutcome {
    /// The row named the writer and token: the write committed.
    Accepted,
    /// The row names another holder or term (the row's term is given): the
    /// write was rolled back.
    Rejected {
        /// The term in the row when the write ran.
        row_term: Option<Term>,
    },
}

/// The history of one role's fenced resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FencedResource {
    /// The highest token ever accepted.
    pub highest: Option<Term>,
    /// The token of the last accepted write.
    pub last: Option<Term>,
    /// Writes accepted.
    pub accepted: u64,
    /// Writes rejected.
    pub rejected: u64,
}

impl SimDb {
    /// A write to `role`'s fenced resource by `writer` with `token`, run in
    /// a transaction that reads the lease row `FOR SHARE` and commits only
    /// if it names `writer` and `token`. Runs on any connection (the pool),
    /// not the lock session.
    ///
    /// # Errors
    /// [`BackendError::Transient`] while the server is down.
    pub fn fenced_write(
        &mut self,
        namespace: &Namespace,
        role: &Role,
        writer: &NodeId,
        token: Term,
    ) -> Result<FencedOutcome, BackendError> {
        self.up_or_transient()?;
        let row = self.rows.get(namespace, role);
        let matches = row.is_some_and(|r| r.holder == writer.as_str() && r.term == token);
        let row_term = row.map(|r| r.term);
        if self.fenced.get(namespace, role).is_none() {
            self.fenced
                .insert(namespace, role, FencedResource::default());
        }
        let Some(res) = self.fenced.get_mut(namespace, role) else {
            return Ok(FencedOutcome::Rejected { row_term });
        };
        if matches {
            res.accepted += 1;
            res.last = Some(token);
            if res.highest.is_none_or(|h| h < token) {
                res.highest = Some(token);
            }
            Ok(FencedOutcome::Accepted)
        } else {
            res.rejected += 1;
            Ok(FencedOutcome::Rejected { row_term })
        }
    }
}
