//! The application's own actions: resigning, stopping and re-adding roles,
//! graceful restarts. They exercise the voluntary paths of the machine
//! (draining, release, notification, hold-off) while faults happen.

use std::time::Duration;

use super::{Ev, World};
use crate::timeline::Tag;

impl World {
    /// One random application action, then the next one is scheduled.
    pub(super) fn workload(&mut self) {
        if self.healed {
            return;
        }
        let n = self.rng.below(self.nodes.len() as u64) as usize;
        let r = self.rng.below(self.roles.len() as u64) as usize;
        let pick = self.rng.below(100);
        let node = &self.nodes[n];
        if node.up() && !node.paused() && !node.shutting_down {
            let local = self.local(n);
            let role = self.roles[r].clone();
            let inc = self.nodes[n].inc;
            let leads = self.nodes[n]
                .subject
                .as_ref()
                .is_some_and(|s| s.is_leader(&role, local));
            if pick < 65 && leads {
                self.log(n, "app:resign", Some(r), 0, 0);
                self.count("resigned");
                self.input(n, |s, ctx| s.handle_resign(ctx, &role));
            } else if (65..80).contains(&pick) {
                self.log(n, "app:stop_role", Some(r), 0, 0);
                self.count("role_stopped");
                self.input(n, |s, ctx| s.handle_stop(ctx, &role));
                let later = self
                    .rng
                    .between(Duration::from_secs(1), Duration::from_secs(20));
                self.after(
                    later,
                    Ev::AddRole {
                        node: n,
                        inc,
                        role: r,
                    },
                );
            } else if (80..90).contains(&pick) {
                self.log(n, "app:shutdown", None, 0, 0);
                self.count("graceful_shutdown_started");
                self.nodes[n].shutting_down = true;
                self.input(n, |s, ctx| s.handle_shutdown(ctx));
                self.after(
                    Duration::from_secs(15),
                    Ev::ShutdownDeadline { node: n, inc },
                );
            }
        }
        let every = self.knobs.resign_every;
        let next = self.rng.exp(every);
        self.after(next, Ev::Workload);
    }

    pub(super) fn add_role(&mut self, n: usize, inc: u32, r: usize) {
        if self.nodes[n].inc != inc || self.nodes[n].shutting_down {
            return;
        }
        if self.nodes[n].paused() {
            // The application thread is stopped too: try again later.
            self.after(
                Duration::from_secs(1),
                Ev::AddRole {
                    node: n,
                    inc,
                    role: r,
                },
            );
            return;
        }
        let role = self.roles[r].clone();
        self.log(n, "app:add_role", Some(r), 0, 0);
        self.input(n, |s, ctx| s.add_role(ctx, role));
    }

    /// Called after every pump: a node whose shutdown finished exits, and
    /// starts again a little later.
    pub(super) fn check_shutdown(&mut self, n: usize) {
        let done = self.nodes[n].shutting_down
            && self.nodes[n]
                .subject
                .as_ref()
                .is_some_and(|s| s.is_stopped());
        if done {
            self.count("graceful_shutdown_completed");
            self.exit(n);
        }
    }

    /// A shutdown that did not finish in time (partitioned, database down)
    /// ends with the process exiting anyway.
    pub(super) fn shutdown_deadline(&mut self, n: usize, inc: u32) {
        if self.nodes[n].inc == inc && self.nodes[n].shutting_down && self.nodes[n].up() {
            if self.nodes[n].paused() {
                self.after(
                    Duration::from_secs(1),
                    Ev::ShutdownDeadline { node: n, inc },
                );
                return;
            }
            self.count("graceful_shutdown_forced");
            self.exit(n);
        }
    }

    /// The process exits cleanly: its session is closed, it restarts later.
    fn exit(&mut self, n: usize) {
        let now = self.now;
        self.log(n, "app:exit", None, 0, 0);
        self.close_conn(n);
        let node = &mut self.nodes[n];
        node.subject = None;
        node.dirty = true;
        node.shutting_down = false;
        node.inc += 1;
        node.wake = None;
        node.listener_up = false;
        node.buffered.clear();
        let inc = node.inc;
        for r in 0..self.roles.len() {
            self.timeline.close(n, Tag::Leading(r), now);
        }
        self.timeline.open(n, Tag::Crashed, 0, now);
        let later = self
            .rng
            .between(Duration::from_millis(500), Duration::from_secs(5));
        self.after(later, Ev::Restart { node: n, inc });
    }
}
