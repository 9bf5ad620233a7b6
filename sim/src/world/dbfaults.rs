//! Faults of the database host: clock steps and failovers, and the
//! bookkeeping of which nodes a fault disturbed.

use std::time::Duration;

use super::{Ev, NONE_NODE, World};
use crate::time::SimTime;

impl World {
    /// Something that can cost node `n` a role happened to it, and its
    /// effect lasts until `until`: the node may lose roles until a lease
    /// (plus a delayed reply) after that.
    pub(super) fn disturb(&mut self, n: usize, until: SimTime) {
        let window = self.machine_cfg.lease_duration()
            + self.machine_cfg.attempt_timeout()
            + crate::faults::SPIKE_MAX;
        let until = until + window;
        let d = &mut self.nodes[n].disturbed_until;
        *d = (*d).max(until);
    }

    /// Every node is disturbed until `until` (a database-wide fault).
    pub(super) fn disturb_all(&mut self, until: SimTime) {
        for n in 0..self.nodes.len() {
            self.disturb(n, until);
        }
    }

    /// Steps the database clock by `micros`. A bounded forward step is
    /// skipped if another one happened within two leases: the README's
    /// guarantee assumes forward steps below the margin, and two within
    /// one lease would add up.
    pub(super) fn db_clock_step(&mut self, micros: i64, bounded: bool) {
        if micros > 0 && bounded {
            let spacing = self.machine_cfg.lease_duration() * 2;
            if self
                .last_forward_step
                .is_some_and(|t| self.now.saturating_since(t) < spacing)
            {
                self.count("db_clock_forward_step_skipped");
                return;
            }
            self.last_forward_step = Some(self.now);
        }
        self.db.step_clock(micros);
        if micros > 0 && self.cfg.mutant == Some(crate::mutant::Mutant::WaitsInDbTime) {
            // The mutant's lease wait runs on the database clock: a wait in
            // progress is cut short by the step.
            let nanos = micros.unsigned_abs() * 1000;
            for n in 0..self.nodes.len() {
                let node = &mut self.nodes[n];
                if node.elect_waiting.iter().any(|w| *w) {
                    node.clock.skip_ahead(nanos);
                    if node.up() && !node.paused() {
                        self.count("mutant_wait_cut_by_db_step");
                        self.wake(n);
                    }
                }
            }
        }
        let now = self.now;
        self.disturb_all(now);
        self.log(NONE_NODE, "fault:db_clock_step", None, micros as u64, 0);
        self.timeline.mark(now, None, "db-clock");
        self.count(match (micros > 0, bounded) {
            (true, true) => "db_clock_stepped_forward",
            (true, false) => "db_clock_stepped_forward_beyond_margin",
            (false, _) => "db_clock_stepped_backward",
        });
    }

    /// PostgreSQL fails over to a standby: like a restart, plus the new
    /// host's clock and, when `lost` is not zero, the last commits lost.
    pub(super) fn failover(&mut self, down_for: Duration, clock_micros: i64, lost: Duration) {
        if !self.db.is_up() {
            return;
        }
        self.db.stop();
        self.abort_fenced();
        self.db_epoch += 1;
        for node in &mut self.nodes {
            node.listener_up = false;
        }
        let undone = self.db.lose_tail(lost);
        if undone > 0 {
            self.count("failover_lost_commits");
        }
        let now = self.now;
        self.log(
            NONE_NODE,
            "fault:failover",
            None,
            down_for.as_millis() as u64,
            undone as u64,
        );
        self.count("fault_failover");
        self.timeline.mark(now, None, "failover");
        self.disturb_all(now + down_for);
        if clock_micros != 0 {
            self.db_clock_step(clock_micros, true);
        }
        let epoch = self.db_epoch;
        self.after(down_for, Ev::PgStart { epoch });
    }
}
