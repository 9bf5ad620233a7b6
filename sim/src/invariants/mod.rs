//! Invariants, one per module, checked after every step of the world.
//!
//! | module | kind | protects |
//! |---|---|---|
//! | [`one_leader`] | always | at most one node believes it leads a role at any true instant (`WaitForLease`) |
//! | [`lease_covers`] | always | a node believes it leads only while the database runs a lease of its term |
//! | [`fencing`] | always | the fenced resource never accepts a token older than one it accepted |
//! | [`terms`] | always | terms strictly increase per role: in the table, and in the order leaders start |
//! | [`no_reentry`] | always | a session never takes a lock it already holds (one unlock would leak it) |
//! | [`command_contract`] | always | the machine keeps its driver contract: one command per kind / per role's lock in flight |
//! | [`notify_order`] | always | a release is announced only after its lock is free |
//! | [`liveness`] | eventually | after every fault heals, every role is led within a bound |
//! | [`blast_radius`] | always | a node loses a role (deadline, lock) only if a fault hit it: another role's fenced work or claim never costs it |
//! | [`availability`] | measured, bounded | per role: fraction of time led; no leader for longer than a bound while a healthy node campaigns and no unremovable session holds the lock |
//!
//! "Sometimes" coverage is counted in [`crate::SimReport::coverage`].

pub mod availability;
pub mod blast_radius;
pub mod command_contract;
pub mod fencing;
pub mod lease_covers;
pub mod liveness;
pub mod no_reentry;
pub mod notify_order;
pub mod one_leader;
pub mod terms;

use std::time::Duration;

use regent_core::{DbTimestamp, TakeoverPolicy, Term};

use crate::report::{Coverage, Violation};
use crate::time::SimTime;

/// Every invariant's state, fed by the world.
#[derive(Debug)]
pub(crate) struct Checker {
    pub(crate) one_leader: one_leader::OneLeader,
    pub(crate) lease_covers: lease_covers::LeaseCovers,
    pub(crate) fencing: fencing::Fencing,
    pub(crate) terms: terms::Terms,
    pub(crate) notify: notify_order::NotifyOrder,
    pub(crate) reentry: no_reentry::NoReentry,
    pub(crate) contract: Option<command_contract::CommandContract>,
    pub(crate) liveness: liveness::Liveness,
    pub(crate) availability: availability::Availability,
    pub(crate) violations: Vec<Violation>,
    /// While the believers stay the same and no lease end moves earlier:
    /// the earliest lease end among them (every one was covered when it
    /// was computed). Until the database clock reaches it, every belief is
    /// still covered and `lease_covers` has nothing to find.
    covered_until: Option<DbTimestamp>,
}

impl Checker {
    pub(crate) fn new(
        nodes: usize,
        roles: usize,
        policy: TakeoverPolicy,
        bound: Duration,
        availability_bound: Duration,
        real_machine: bool,
    ) -> Self {
        Self {
            one_leader: one_leader::OneLeader::new(roles, policy),
            lease_covers: lease_covers::LeaseCovers::new(roles),
            fencing: fencing::Fencing::new(roles),
            terms: terms::Terms::new(roles, policy),
            notify: notify_order::NotifyOrder,
            reentry: no_reentry::NoReentry,
            contract: real_machine.then(|| command_contract::CommandContract::new(nodes)),
            liveness: liveness::Liveness::new(roles, bound),
            availability: availability::Availability::new(roles, availability_bound),
            violations: Vec::new(),
            covered_until: None,
        }
    }

    /// Records a violation found by the world (if any).
    pub(crate) fn push_violation(&mut self, v: Option<Violation>) {
        self.push(v);
    }

    fn push(&mut self, v: Option<Violation>) {
        if let Some(v) = v {
            self.violations.push(v);
        }
    }

    /// After every step: who believes it leads each role right now, with
    /// the term each believes it holds, and each role's availability
    /// status. `changed` is false when `leaders` and `terms` are exactly as
    /// at the previous step.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_step(
        &mut self,
        at: SimTime,
        db_now: DbTimestamp,
        leaders: &[Vec<usize>],
        terms: &[Vec<Option<Term>>],
        status: &[availability::RoleStatus],
        changed: bool,
        cov: &mut Coverage,
    ) {
        for (r, st) in status.iter().enumerate() {
            let v = self.availability.observe(at, r, *st, cov);
            self.push(v);
        }
        if self.lease_covers.take_shortened() {
            self.covered_until = None;
        }
        if changed {
            // `one_leader` looks at how the number of believers changes:
            // with the same believers it has nothing to do.
            let v = self.one_leader.check(at, leaders, cov);
            self.push(v);
            self.covered_until = None;
        }
        if self.covered_until.is_none_or(|until| db_now >= until) {
            self.covered_until = self.check_leases(at, db_now, leaders, terms);
        }
        self.liveness.observe(at, leaders);
    }

    /// Checks every belief against its lease; returns the earliest lease
    /// end among them if every one is covered.
    fn check_leases(
        &mut self,
        at: SimTime,
        db_now: DbTimestamp,
        leaders: &[Vec<usize>],
        terms: &[Vec<Option<Term>>],
    ) -> Option<DbTimestamp> {
        let mut covered = true;
        let mut until: Option<DbTimestamp> = None;
        for (role, (who, terms)) in leaders.iter().zip(terms).enumerate() {
            for (&node, &term) in who.iter().zip(terms) {
                let v = self.lease_covers.check(at, db_now, node, role, term);
                if v.is_some() {
                    self.push(v);
                    covered = false;
                    break;
                }
                if let Some(end) = self.lease_covers.end(role, term) {
                    until = Some(until.map_or(end, |u| u.min(end)));
                }
            }
        }
        // With no believer at all nothing can be uncovered until the
        // believers change.
        covered.then_some(until.unwrap_or(DbTimestamp::from_micros(i64::MAX)))
    }

    pub(crate) fn on_claim(&mut self, at: SimTime, node: usize, role: usize, term: Term) {
        let v = self.terms.on_claim(at, node, role, term);
        self.push(v);
    }

    pub(crate) fn on_started_leading(&mut self, at: SimTime, node: usize, role: usize, term: Term) {
        let v = self.terms.on_started(at, node, role, term);
        self.push(v);
    }

    pub(crate) fn on_fenced_accept(&mut self, at: SimTime, node: usize, role: usize, token: Term) {
        let v = self.fencing.on_accept(at, node, role, token);
        self.push(v);
    }

    pub(crate) fn on_publish(&mut self, at: SimTime, node: usize, role: usize, still_locked: bool) {
        let v = self.notify.on_publish(at, node, role, still_locked);
        self.push(v);
    }

    pub(crate) fn on_try_lock(&mut self, at: SimTime, node: usize, role: usize, held: bool) {
        let v = self.reentry.on_try_lock(at, node, role, held);
        self.push(v);
    }

    /// A command leaves node `node` (see [`command_contract`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_send(
        &mut self,
        at: SimTime,
        node: usize,
        id: u64,
        kind: &'static str,
        roles: Vec<usize>,
        now: regent_core::LocalInstant,
        expires: regent_core::LocalInstant,
        cov: &mut Coverage,
    ) {
        if let Some(c) = self.contract.as_mut() {
            let v = c.on_send(at, node, id, kind, roles, now, expires, cov);
            self.push(v);
        }
    }

    pub(crate) fn on_result(&mut self, node: usize, id: u64) {
        if let Some(c) = self.contract.as_mut() {
            c.on_result(node, id);
        }
    }

    pub(crate) fn on_restart(&mut self, node: usize) {
        if let Some(c) = self.contract.as_mut() {
            c.on_restart(node);
        }
    }

    pub(crate) fn on_heal(&mut self, at: SimTime) {
        self.liveness.heal(at);
    }

    pub(crate) fn on_liveness_deadline(&mut self, at: SimTime) {
        let v = self.liveness.deadline(at);
        self.push(v);
    }
}
