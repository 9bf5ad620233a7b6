//! The lease table: claim, renew, expire, read and list.

use std::time::Duration;

use regent_core::{
    BackendError, ClaimOutcome, DbTimestamp, HeldLease, LeaseRecord, Namespace, NodeId,
    RenewOutcome, Role, Term,
};

use super::{Pid, SimDb};

impl SimDb {
    /// Makes `holder` the holder of `role` with term + 1 (1 for a new row)
    /// and a lease of `lease` from the server's now, recording the session
    /// pid; returns the row as it was before.
    ///
    /// # Errors
    /// [`BackendError::SessionLost`] if the session is gone.
    pub fn claim(
        &mut self,
        pid: Pid,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        lease: Duration,
    ) -> Result<ClaimOutcome, BackendError> {
        self.session(pid)?;
        let now = self.now;
        let previous = self.rows.get(namespace, role).cloned();
        let term = Term(previous.as_ref().map_or(0, |r| r.term.0) + 1);
        self.record(namespace, role);
        self.rows.insert(
            namespace,
            role,
            LeaseRecord {
                namespace: namespace.clone(),
                role: role.clone(),
                holder: holder.as_str().to_owned(),
                term,
                session: Some(pid),
                acquired_at: now,
                renewed_at: now,
                lease_until: now + lease,
            },
        );
        Ok(ClaimOutcome {
            term,
            previous,
            db_now: now,
        })
    }

    /// Extends, in one statement, each lease in `held` whose row still names
    /// `holder` and the term.
    ///
    /// # Errors
    /// [`BackendError::SessionLost`] if the session is gone.
    pub fn renew(
        &mut self,
        pid: Pid,
        namespace: &Namespace,
        holder: &NodeId,
        held: &[HeldLease],
        lease: Duration,
    ) -> Result<RenewOutcome, BackendError> {
        self.session(pid)?;
        let now = self.now;
        let mut renewed = Vec::new();
        for h in held {
            let matches = self
                .rows
                .get(namespace, &h.role)
                .is_some_and(|row| row.holder == holder.as_str() && row.term == h.term);
            if !matches {
                continue;
            }
            self.record(namespace, &h.role);
            if let Some(row) = self.rows.get_mut(namespace, &h.role) {
                row.renewed_at = now;
                row.lease_until = now + lease;
                renewed.push(h.role.clone());
            }
        }
        Ok(RenewOutcome {
            db_now: now,
            renewed,
        })
    }

    /// Ends `role`'s lease now if the row still names `holder` and `term`;
    /// returns whether it did.
    ///
    /// # Errors
    /// [`BackendError::SessionLost`] if the session is gone.
    pub fn expire(
        &mut self,
        pid: Pid,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        term: Term,
    ) -> Result<bool, BackendError> {
        self.session(pid)?;
        let now = self.now;
        let matches = self
            .rows
            .get(namespace, role)
            .is_some_and(|row| row.holder == holder.as_str() && row.term == term);
        if matches {
            self.record(namespace, role);
        }
        match self.rows.get_mut(namespace, role) {
            Some(row) if matches => {
                if row.lease_until > now {
                    row.lease_until = now;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Reads the rows of `roles` (missing ones left out) and the clock.
    ///
    /// # Errors
    /// [`BackendError::Transient`] while the server is down.
    pub fn read(
        &self,
        namespace: &Namespace,
        roles: &[Role],
    ) -> Result<(DbTimestamp, Vec<LeaseRecord>), BackendError> {
        self.up_or_transient()?;
        let rows = roles
            .iter()
            .filter_map(|r| self.rows.get(namespace, r).cloned())
            .collect();
        Ok((self.now, rows))
    }

    /// Every row, of one namespace or all.
    ///
    /// # Errors
    /// [`BackendError::Transient`] while the server is down.
    pub fn list(&self, namespace: Option<&Namespace>) -> Result<Vec<LeaseRecord>, BackendError> {
        self.up_or_transient()?;
        Ok(self
            .rows
            .values()
            .filter(|r| namespace.is_none_or(|ns| &r.namespace == ns))
            .cloned()
            .collect())
    }

    pub(super) fn up_or_transient(&self) -> Result<(), BackendError> {
        if self.up {
            Ok(())
        } else {
            Err(BackendError::Transient(
                "the database system is shutting down".to_owned(),
            ))
        }
    }
}
