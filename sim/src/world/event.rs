//! Scheduled events: what can happen at a true instant, and the queue that
//! orders them (earliest first, ties in scheduling order).

use std::cmp::Ordering;
use std::time::Duration;

use regent_core::{Command, CommandId, CommandResult, Term};

use super::World;
use crate::faults::Fault;
use crate::time::SimTime;

/// A statement travelling to the database.
#[derive(Debug, Clone)]
pub(super) enum Request {
    /// A machine command, on the node's session.
    Cmd(Command),
    /// The client closes its session.
    Close,
}

/// Something scheduled to happen at a true instant.
#[derive(Debug, Clone)]
pub(super) enum Ev {
    ToDb {
        conn: usize,
        req: Request,
    },
    FencedWrite {
        node: usize,
        role: usize,
        token: Term,
    },
    /// Session `conn` may run its next statement (if `generation` is
    /// still its latest).
    DbExec {
        conn: usize,
        generation: u64,
    },
    /// A long fenced transaction's first statement reaches the server.
    FencedBegin {
        node: usize,
        role: usize,
        token: Term,
        hold: Duration,
    },
    /// A fenced transaction ends (commit, or rollback).
    FencedEnd {
        tx: crate::db::TxId,
        commit: bool,
    },
    ToNode {
        node: usize,
        inc: u32,
        conn: usize,
        id: CommandId,
        result: CommandResult,
    },
    Notification {
        node: usize,
        inc: u32,
        role: usize,
    },
    SessionClosed {
        node: usize,
        inc: u32,
        conn: usize,
    },
    AppTick {
        node: usize,
        inc: u32,
    },
    Drained {
        node: usize,
        inc: u32,
        role: usize,
    },
    ListenerCheck {
        node: usize,
        inc: u32,
    },
    Workload,
    AddRole {
        node: usize,
        inc: u32,
        role: usize,
    },
    ShutdownDeadline {
        node: usize,
        inc: u32,
    },
    NextFault(crate::config::FaultKind),
    Fault(Fault),
    Restart {
        node: usize,
        inc: u32,
    },
    PauseEnd {
        node: usize,
        until: SimTime,
    },
    PartitionEnd {
        node: usize,
        until: SimTime,
    },
    KeepaliveCheck {
        node: usize,
        conn: usize,
    },
    PgStart {
        epoch: u64,
    },
    ServerDrop {
        conn: usize,
    },
    Heal,
    LivenessDeadline,
}

/// A heap entry: small, so sifting is cheap; the event waits in a slab.
pub(super) struct Scheduled {
    /// The true instant it is due.
    pub(super) at: SimTime,
    /// Scheduling order, breaking ties between equal instants.
    pub(super) seq: u64,
    /// Where the event waits in [`World`]'s slab.
    pub(super) slot: usize,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: the earliest (then first scheduled) wins.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl World {
    /// Schedules `ev` at `at` (never before now).
    pub(super) fn schedule(&mut self, at: SimTime, ev: Ev) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot] = Some(ev);
                slot
            }
            None => {
                self.slab.push(Some(ev));
                self.slab.len() - 1
            }
        };
        self.queue.push(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            slot,
        });
    }

    /// Takes the earliest scheduled event off the queue.
    pub(super) fn pop_event(&mut self) -> Option<Ev> {
        let s = self.queue.pop()?;
        self.free.push(s.slot);
        self.slab.get_mut(s.slot).and_then(Option::take)
    }

    /// Schedules `ev` `d` from now.
    pub(super) fn after(&mut self, d: Duration, ev: Ev) {
        self.schedule(self.now + d, ev);
    }
}
