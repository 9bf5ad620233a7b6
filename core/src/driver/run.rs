//! Leader-only work: [`LeaderHandle::run_while_leader`] and
//! [`LeaderHandle::run_each_term`].

use std::future::Future;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::driver::ElectorError;
use crate::driver::handle::LeaderHandle;
use crate::driver::status::WorkGuard;
use crate::types::{Fence, Term};

impl LeaderHandle {
    /// Waits until this node leads, then runs `work(cancel, fence)`. `cancel`
    /// fires the moment leadership ends (deadline, lock loss, takeover,
    /// resign, shutdown); `work` should then stop promptly. Returns `work`'s
    /// output once it finishes. `work` is never started for a term that has
    /// already ended: the node waits for the next one instead.
    ///
    /// On resign and shutdown the lease is released only after `work` has
    /// finished, so no other node leads while it still runs — within a
    /// bound: after [`Config::drain_timeout`](crate::Config::drain_timeout)
    /// the lease is released anyway and a
    /// [`DrainOverrun`](crate::DrainOverrun) is reported. Work that can
    /// outlive the bound must guard its writes with the [`Fence`] (a
    /// backend's `fenced(&fence)`, or its term passed downstream).
    ///
    /// # Errors
    /// [`ElectorError::Stopped`] if the role stops before this node leads.
    pub async fn run_while_leader<F, Fut, T>(&self, work: F) -> Result<T, ElectorError>
    where
        F: FnOnce(CancellationToken, Fence) -> Fut,
        Fut: Future<Output = T>,
    {
        let never = CancellationToken::new();
        let out = self.lead_once(&never, work).await?;
        // `lead_once` returns `None` only once `never` fires, which it
        // does not; report it as the role stopping all the same.
        out.map(|(out, _)| out).ok_or(ElectorError::Stopped)
    }

    /// Runs `work(cancel, fence)` in every term this node leads, until the
    /// role or the elector shuts down or `stop` fires: the requeuing loop
    /// of a leader-only job. In each term `cancel` fires the moment
    /// leadership ends (or `stop` fires); the next run starts only once the
    /// node leads again. If `work` returns while still leading, the loop
    /// waits for the next term rather than restart it within this one.
    /// A resign hands the role over but keeps campaigning, so the loop goes
    /// on; use `stop` or shutdown to end it. Draining on resign and shutdown
    /// is as for [`LeaderHandle::run_while_leader`].
    ///
    /// Returns once `stop` has fired (and the current run has finished) or
    /// the role has stopped.
    ///
    /// ```no_run
    /// # async fn demo(handle: regent_core::LeaderHandle) {
    /// use regent_core::CancellationToken;
    ///
    /// let stop = CancellationToken::new();
    /// handle
    ///     .run_each_term(stop.clone(), |cancel, fence| async move {
    ///         // Leader-only work for this term; writes carry `fence`.
    ///         cancel.cancelled().await;
    ///         let _ = fence;
    ///     })
    ///     .await;
    /// # }
    /// ```
    pub async fn run_each_term<F, Fut>(&self, stop: CancellationToken, mut work: F)
    where
        F: FnMut(CancellationToken, Fence) -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            let term = match self.lead_once(&stop, &mut work).await {
                Ok(Some((_, term))) => term,
                Ok(None) | Err(_) => return,
            };
            if stop.is_cancelled() || !self.outlast(term, &stop).await {
                return;
            }
        }
    }

    /// Waits until `term` is no longer led here. `false` if `stop` fired or
    /// the handle's status went away first.
    async fn outlast(&self, term: Term, stop: &CancellationToken) -> bool {
        let mut rx = self.shared().status.subscribe();
        loop {
            let deadline = {
                let status = rx.borrow_and_update();
                if status.term_now() != Some(term) {
                    return true;
                }
                status.deadline.unwrap_or_else(Instant::now)
            };
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    return false;
                },
                () = tokio::time::sleep_until(deadline) => {}
                () = stop.cancelled() => return false,
            }
        }
    }

    /// Waits for a term (or for `stop`) and runs `work` in it to the end.
    /// `Ok(None)` if `stop` fired before a term began.
    async fn lead_once<F, Fut, T>(
        &self,
        stop: &CancellationToken,
        work: F,
    ) -> Result<Option<(T, Term)>, ElectorError>
    where
        F: FnOnce(CancellationToken, Fence) -> Fut,
        Fut: Future<Output = T>,
    {
        let (_guard, term) = loop {
            let term = tokio::select! {
                term = self.wait_until_leader() => term?,
                () = stop.cancelled() => return Ok(None),
            };
            // Count the work before the last look at leadership: a step-down
            // after this point waits for the guard in its drain; one before
            // it shows in the check below, and the work never starts.
            let guard = WorkGuard::new(self.shared().work.clone());
            if self.shared().status.borrow().term_now() == Some(term) {
                break (guard, term);
            }
        };
        let cancel = stop.child_token();
        let fut = work(cancel.clone(), self.fence_for(term));
        tokio::pin!(fut);
        let mut rx = self.shared().status.subscribe();
        let out = loop {
            let (still, deadline) = {
                let status = rx.borrow_and_update();
                (status.term_now() == Some(term), status.deadline)
            };
            if !still {
                cancel.cancel();
                break fut.await;
            }
            let deadline = deadline.unwrap_or_else(Instant::now);
            tokio::select! {
                out = &mut fut => break out,
                _ = rx.changed() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        };
        Ok(Some((out, term)))
    }
}
