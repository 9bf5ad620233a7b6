//! Faults: scheduling them, applying them, ending them, and the final heal.

use std::time::Duration;

use super::{Ev, World};
use crate::config::FaultKind;
use crate::db::SessionEnd;
use crate::faults::{Fault, draw_fault};
use crate::time::SimTime;
use crate::timeline::Tag;

impl World {
    pub(super) fn schedule_faults(&mut self) {
        if let Some(schedule) = self.cfg.schedule.clone() {
            for f in schedule {
                self.schedule(SimTime::from_duration(f.at), Ev::Fault(f.fault));
            }
            return;
        }
        for kind in FaultKind::ALL {
            if let Some(every) = self.knobs.every(kind) {
                let first = self.rng.exp(every);
                self.after(first, Ev::NextFault(kind));
            }
        }
    }

    pub(super) fn next_fault(&mut self, kind: FaultKind) {
        if self.healed {
            return;
        }
        let nodes = self.nodes.len();
        if let Some(f) = draw_fault(&mut self.rng, kind, &self.knobs, nodes) {
            self.apply(f);
        }
        if let Some(every) = self.knobs.every(kind) {
            let next = self.rng.exp(every);
            self.after(next, Ev::NextFault(kind));
        }
    }

    pub(super) fn apply(&mut self, f: Fault) {
        if self.healed {
            return;
        }
        let nodes = self.nodes.len();
        match f {
            Fault::Crash {
                node,
                down_for,
                zombie,
            } => self.crash(node % nodes, down_for, zombie),
            Fault::Pause { node, duration } => {
                let n = node % nodes;
                if !self.nodes[n].up() || self.nodes[n].paused() {
                    return;
                }
                self.fault_hits(Some(n), None);
                let until = self.now + duration;
                self.disturb(n, until);
                self.nodes[n].paused_until = Some(until);
                self.nodes[n].wake = None;
                self.log(n, "fault:pause", None, duration.as_millis() as u64, 0);
                self.count("fault_pause");
                if duration > self.machine_cfg.lease_duration() {
                    self.count("fault_pause_longer_than_lease");
                }
                let now = self.now;
                self.timeline.open(n, Tag::Paused, 0, now);
                self.schedule(until, Ev::PauseEnd { node: n, until });
            }
            Fault::Partition {
                node,
                direction,
                duration,
            } => {
                let n = node % nodes;
                self.fault_hits(Some(n), None);
                let until = self.now + duration;
                self.disturb(n, until);
                let now = self.now;
                if self.nodes[n].cut.is_none() {
                    self.timeline.open(n, Tag::Partitioned, 0, now);
                }
                self.nodes[n].cut = Some((direction, until));
                self.nodes[n].listener_up = false;
                self.log(
                    n,
                    "fault:partition",
                    None,
                    duration.as_millis() as u64,
                    direction as u64,
                );
                self.count("fault_partition");
                self.schedule(until, Ev::PartitionEnd { node: n, until });
                if let Some(conn) = self.nodes[n].conn {
                    let at = self.now + self.knobs.keepalive;
                    self.schedule(at, Ev::KeepaliveCheck { node: n, conn });
                }
            }
            Fault::PgRestart { down_for } => {
                if !self.db.is_up() {
                    return;
                }
                self.db.stop();
                self.abort_fenced();
                let now = self.now;
                self.disturb_all(now + down_for);
                self.db_epoch += 1;
                for node in &mut self.nodes {
                    node.listener_up = false;
                }
                self.log(
                    super::NONE_NODE,
                    "fault:pg_restart",
                    None,
                    down_for.as_millis() as u64,
                    0,
                );
                self.count("fault_pg_restart");
                let now = self.now;
                self.timeline.mark(now, None, "pg-restart");
                let epoch = self.db_epoch;
                self.after(down_for, Ev::PgStart { epoch });
            }
            Fault::Terminate { pick } => {
                let pids: Vec<i64> = self.db.sessions().map(|s| s.pid).collect();
                if pids.is_empty() {
                    return;
                }
                let pid = pids[pick % pids.len()];
                self.fault_hits(None, Some(pid));
                if let Some(&c) = self.by_pid.get(&pid) {
                    let (n, now) = (self.conns[c].node, self.now);
                    self.disturb(n, now);
                }
                self.db.end_session(pid, SessionEnd::OperatorTerminated);
                let now = self.now;
                let node = self.by_pid.get(&pid).map(|&c| self.conns[c].node);
                self.timeline.mark(now, node, "terminate");
                self.log(super::NONE_NODE, "fault:terminate", None, pid as u64, 0);
            }
            Fault::DbClockStep { micros, bounded } => self.db_clock_step(micros, bounded),
            Fault::Failover {
                down_for,
                clock_micros,
                lost,
            } => self.failover(down_for, clock_micros, lost),
            Fault::ClockJump { node, micros } => {
                let n = node % nodes;
                self.nodes[n].clock.jump_wall(micros);
                self.log(n, "fault:clock_jump", None, micros as u64, 0);
                self.count("fault_wall_clock_jump");
            }
        }
    }

    fn crash(&mut self, n: usize, down_for: Duration, zombie: bool) {
        if !self.nodes[n].up() {
            return;
        }
        self.fault_hits(Some(n), None);
        let now = self.now;
        self.nodes[n].subject = None;
        self.nodes[n].dirty = true;
        self.nodes[n].inc += 1;
        self.nodes[n].paused_until = None;
        self.nodes[n].buffered.clear();
        self.nodes[n].wake = None;
        self.nodes[n].listener_up = false;
        self.timeline.close(n, Tag::Paused, now);
        for r in 0..self.roles.len() {
            self.timeline.close(n, Tag::Leading(r), now);
        }
        self.timeline.open(n, Tag::Crashed, 0, now);
        self.count("fault_crash");
        if let Some(c) = self.nodes[n].conn.take() {
            self.conns[c].client_gone = true;
            if zombie && self.conns[c].pid.is_some() {
                // The pooler keeps its fenced transactions open too, until
                // the server's idle timeout.
                self.conns[c].zombie = true;
                self.count("fault_zombie_session");
            } else if self.rng.chance(0.5) && !self.nodes[n].cut_to_db() {
                // The kernel closes the socket: the FIN follows any data.
                let d = self.delay();
                let at = (self.now + d).max(self.conns[c].req_fifo);
                self.schedule(at, Ev::ServerDrop { conn: c });
                self.crash_fenced(n, d);
            } else {
                // The host vanished: keepalives find out.
                let at = (self.now + self.knobs.keepalive).max(self.conns[c].req_fifo);
                self.schedule(at, Ev::ServerDrop { conn: c });
                let keepalive = self.knobs.keepalive;
                self.crash_fenced(n, keepalive);
            }
        }
        self.log(
            n,
            "fault:crash",
            None,
            down_for.as_millis() as u64,
            u64::from(zombie),
        );
        let inc = self.nodes[n].inc;
        self.after(down_for, Ev::Restart { node: n, inc });
    }

    pub(super) fn restart(&mut self, n: usize, inc: u32) {
        if self.nodes[n].up() || self.nodes[n].inc != inc {
            return;
        }
        let now = self.now;
        self.timeline.close(n, Tag::Crashed, now);
        self.boot(n);
    }

    pub(super) fn pause_end(&mut self, n: usize, until: SimTime) {
        if self.nodes[n].paused_until == Some(until) {
            self.resume(n);
        }
    }

    pub(super) fn partition_end(&mut self, n: usize, until: SimTime) {
        if self.nodes[n].cut.is_some_and(|(_, u)| u == until) {
            self.nodes[n].cut = None;
            let now = self.now;
            self.timeline.close(n, Tag::Partitioned, now);
            self.log(n, "partition_healed", None, 0, 0);
        }
    }

    /// Keepalives fail while a partition lasts: the server drops the session.
    pub(super) fn keepalive_check(&mut self, n: usize, c: usize) {
        if self.nodes[n].cut.is_none() || self.conns[c].zombie {
            return;
        }
        if let Some(pid) = self.conns[c].pid
            && self.db.end_session(pid, SessionEnd::KeepaliveTimeout)
        {
            self.count("keepalive_dropped_partitioned_session");
        }
    }

    pub(super) fn pg_start(&mut self, epoch: u64) {
        if epoch == self.db_epoch && !self.db.is_up() {
            self.db.start();
            self.log(super::NONE_NODE, "pg_started", None, 0, 0);
        }
    }

    /// Every fault ends: partitions close, paused nodes resume, crashed ones
    /// restart, the database is up, zombies are reaped. Then liveness is
    /// checked within its bound.
    pub(super) fn heal(&mut self) {
        self.healed = true;
        let now = self.now;
        self.log(super::NONE_NODE, "heal", None, 0, 0);
        if !self.db.is_up() {
            self.db.start();
        }
        for c in 0..self.conns.len() {
            if self.conns[c].zombie {
                self.conns[c].zombie = false;
                if let Some(pid) = self.conns[c].pid {
                    self.db.end_session(pid, SessionEnd::ClientClosed);
                }
            }
        }
        for n in 0..self.nodes.len() {
            if self.nodes[n].cut.take().is_some() {
                self.timeline.close(n, Tag::Partitioned, now);
            }
            if self.nodes[n].paused() {
                self.resume(n);
            }
            if !self.nodes[n].up() {
                self.timeline.close(n, Tag::Crashed, now);
                self.boot(n);
            }
        }
        self.checker.on_heal(now);
        let bound = self.checker.liveness.bound();
        self.after(bound, Ev::LivenessDeadline);
        self.timeline.mark(now, None, "heal");
    }
}
