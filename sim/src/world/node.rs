//! The node side: a minimal driver that runs each machine command through
//! the simulated network, hands results back at the right virtual time,
//! and plays the application (fenced writes, resignations, draining).

use std::time::Duration;

use regent_core::{
    Command, CommandId, CommandOutput, CommandResult, DbTimestamp, LocalInstant, Machine, RoleState,
};

use super::{Conn, Ev, Request, World};
use crate::mutant::{Ctx, Subject};

impl World {
    fn ctx(&self, n: usize) -> Ctx {
        let clock = &self.nodes[n].clock;
        // Only mutants read the wall clock: the real machine never sees it,
        // so it is not worth reading for every input then.
        let wall = if self.cfg.mutant.is_some() {
            clock.wall(self.now)
        } else {
            DbTimestamp::from_micros(crate::time::DB_EPOCH_MICROS)
        };
        Ctx {
            now: clock.local(self.now),
            wall,
        }
    }

    /// Starts a fresh process on node `n`: a new machine campaigning for
    /// every role.
    pub(super) fn boot(&mut self, n: usize) {
        let rng = self.rng.fork();
        let machine = Machine::new(
            self.nodes[n].id.clone(),
            self.ns.clone(),
            self.machine_cfg.clone(),
            rng,
        );
        let inc = self.nodes[n].inc;
        self.checker.on_restart(n);
        {
            let node = &mut self.nodes[n];
            node.subject = Some(Subject::new(machine, self.cfg.mutant));
            node.paused_until = None;
            node.shutting_down = false;
            node.conn = None;
            node.listener_up = false;
            node.wake = None;
            node.last_wake = None;
            node.buffered.clear();
            node.elect_waiting.iter_mut().for_each(|w| *w = false);
            node.notified_at.iter_mut().for_each(|w| *w = None);
        }
        let ctx = self.ctx(n);
        let roles = self.roles.clone();
        if let Some(s) = self.nodes[n].subject.as_mut() {
            for role in roles {
                s.add_role(ctx, role);
            }
        }
        self.log(n, "boot", None, u64::from(inc), 0);
        self.pump(n);
        let tick = self
            .rng
            .between(Duration::from_millis(100), Duration::from_millis(600));
        self.after(tick, Ev::AppTick { node: n, inc });
        self.after(Duration::ZERO, Ev::ListenerCheck { node: n, inc });
    }

    /// Runs `f` on node `n`'s machine (if it is up) and drains its outputs.
    pub(super) fn input(&mut self, n: usize, f: impl FnOnce(&mut Subject, Ctx)) {
        let ctx = self.ctx(n);
        let Some(s) = self.nodes[n].subject.as_mut() else {
            return;
        };
        f(s, ctx);
        self.pump(n);
    }

    pub(super) fn wake(&mut self, n: usize) {
        let now = self.now;
        self.nodes[n].last_wake = Some(now);
        self.nodes[n].wake = None;
        self.input(n, |s, ctx| s.handle_timeout(ctx));
    }

    /// Drains commands and events after every input, then asks when to wake.
    pub(super) fn pump(&mut self, n: usize) {
        self.nodes[n].dirty = true;
        loop {
            // Reuse the buffers of earlier pumps: most inputs produce a
            // command or an event, and allocating them each time shows.
            let mut commands = std::mem::take(&mut self.command_buf);
            let mut events = std::mem::take(&mut self.event_buf);
            if let Some(s) = self.nodes[n].subject.as_mut() {
                while let Some(c) = s.poll_command() {
                    commands.push(c);
                }
                while let Some(e) = s.poll_event() {
                    events.push(e);
                }
            }
            let mut immediate = Vec::new();
            for c in commands.drain(..) {
                self.dispatch(n, c, &mut immediate);
            }
            for e in events.drain(..) {
                self.on_machine_event(n, e);
            }
            self.command_buf = commands;
            self.event_buf = events;
            if immediate.is_empty() {
                break;
            }
            let ctx = self.ctx(n);
            for (id, _) in &immediate {
                self.checker.on_result(n, id.0);
            }
            if let Some(s) = self.nodes[n].subject.as_mut() {
                for (id, result) in immediate {
                    s.handle_result(ctx, id, result);
                }
            }
        }
        self.track_elect(n);
        self.check_shutdown(n);
        let now = self.now;
        let lag = if self.knobs.timer_lag.is_zero() || self.healed {
            Duration::ZERO
        } else {
            self.rng.between(Duration::ZERO, self.knobs.timer_lag)
        };
        let node = &mut self.nodes[n];
        let Some(s) = node.subject.as_ref() else {
            node.wake = None;
            return;
        };
        let mut spun = false;
        node.wake = s.poll_timeout().map(|l| {
            let t = node.clock.true_at(l).max(now);
            if t == now && node.last_wake == Some(now) {
                // The machine asks to be woken again at the instant it was
                // just woken: step a millisecond so the world moves on.
                spun = true;
                now + Duration::from_millis(1)
            } else {
                t + lag
            }
        });
        if spun {
            self.count("machine_rewake_same_instant");
        }
    }

    /// After an input: notes roles waiting out a lease in `Elect`, and
    /// reads the node's beliefs (who it leads) while looking at each role
    /// anyway. Time does not move within a step, so these are the beliefs
    /// the step ends with unless another input comes.
    fn track_elect(&mut self, n: usize) {
        let local = self.local(n);
        let node = &mut self.nodes[n];
        let Some(s) = node.subject.as_ref() else {
            return;
        };
        let mut changed = false;
        let mut ends: Option<LocalInstant> = None;
        for (r, role) in self.roles.iter().enumerate() {
            let (state, belief) = s.view(role, local);
            node.campaigning[r] = !matches!(state, None | Some(RoleState::Stopped));
            match state {
                Some(RoleState::Elect { lead_at }) if lead_at > local => {
                    node.elect_waiting[r] = true;
                }
                Some(RoleState::Elect { .. } | RoleState::Leader { .. }) => {}
                _ => node.elect_waiting[r] = false,
            }
            if let Some((_, until)) = belief {
                ends = Some(ends.map_or(until, |e| e.min(until)));
            }
            changed |= node.belief[r].map(|(t, _)| t) != belief.map(|(t, _)| t);
            node.belief[r] = belief;
        }
        node.belief_ends = ends;
        node.dirty = false;
        self.beliefs_changed |= changed;
    }

    fn dispatch(&mut self, n: usize, c: Command, immediate: &mut Vec<(CommandId, CommandResult)>) {
        self.log(n, c.name(), None, c.id().0, 0);
        let roles: Vec<usize> = match &c {
            Command::TryLock { roles, .. } => {
                roles.iter().filter_map(|r| self.role_ix(r)).collect()
            }
            Command::Claim { role, .. } | Command::Release { role, .. } => {
                self.role_ix(role).into_iter().collect()
            }
            _ => Vec::new(),
        };
        let local = self.local(n);
        let expires = local + self.machine_cfg.attempt_timeout();
        let now = self.now;
        self.checker.on_send(
            now,
            n,
            c.id().0,
            c.name(),
            roles,
            local,
            expires,
            &mut self.cov,
        );
        if let Command::ResetSession { id } = c {
            self.close_conn(n);
            immediate.push((id, Ok(CommandOutput::Reset)));
            return;
        }
        let conn = self.ensure_conn(n);
        self.send_to_db(n, conn, Request::Cmd(c));
    }

    fn ensure_conn(&mut self, n: usize) -> usize {
        if let Some(c) = self.nodes[n].conn {
            return c;
        }
        let c = self.conns.len();
        self.conns.push(Conn {
            node: n,
            inc: self.nodes[n].inc,
            pid: None,
            client_gone: false,
            zombie: false,
            req_fifo: self.now,
            reply_fifo: self.now,
            queue: std::collections::VecDeque::new(),
            busy_until: self.now,
            exec_scheduled: false,
            exec_gen: 0,
            front: None,
        });
        self.nodes[n].conn = Some(c);
        c
    }

    /// The client closes its session (machine reset): a close message goes
    /// after whatever was sent; if it is lost the server finds out by
    /// keepalive.
    pub(super) fn close_conn(&mut self, n: usize) {
        let Some(c) = self.nodes[n].conn.take() else {
            return;
        };
        if !self.send_to_db(n, c, Request::Close) {
            let at = self.now + self.knobs.keepalive;
            self.schedule(at, Ev::ServerDrop { conn: c });
        }
        self.conns[c].client_gone = true;
    }

    /// One network delay, with occasional spikes while faults are active.
    pub(super) fn delay(&mut self) -> Duration {
        self.draw_delay().0
    }

    /// One network delay of a message on node `n`'s session; a spike is a
    /// fault that hits the node (see [`World::fault_hits`]).
    pub(super) fn delay_on(&mut self, n: usize) -> Duration {
        let (d, spiked) = self.draw_delay();
        if spiked {
            self.fault_hits(Some(n), None);
        }
        d
    }

    fn draw_delay(&mut self) -> (Duration, bool) {
        let (lo, hi) = self.knobs.delay;
        let mut d = self.rng.between(lo, hi);
        let spiked = !self.healed && self.rng.chance(self.knobs.spike);
        if spiked {
            d += self.rng.between(Duration::ZERO, self.knobs.spike_max);
            self.count("message_delay_spike");
        }
        (d, spiked)
    }

    /// Whether a message is lost to random loss.
    pub(super) fn lost(&mut self) -> bool {
        !self.healed && self.rng.chance(self.knobs.loss)
    }

    /// Whether a message on node `n`'s session is lost to random loss; a
    /// loss is a fault that hits the node (see [`World::fault_hits`]).
    pub(super) fn lost_on(&mut self, n: usize) -> bool {
        let lost = self.lost();
        if lost {
            self.fault_hits(Some(n), None);
        }
        lost
    }

    /// Sends a request on connection `c`; returns whether it left.
    fn send_to_db(&mut self, n: usize, c: usize, req: Request) -> bool {
        if self.nodes[n].cut_to_db() {
            self.log(n, "lost:partition", None, 0, 0);
            self.count("message_lost_partition");
            return false;
        }
        if self.lost_on(n) {
            self.log(n, "lost:request", None, 0, 0);
            self.count("message_lost");
            return false;
        }
        let d = self.delay_on(n);
        let at = (self.now + d).max(self.conns[c].req_fifo);
        self.conns[c].req_fifo = at;
        self.schedule(at, Ev::ToDb { conn: c, req });
        true
    }

    pub(super) fn reply(
        &mut self,
        n: usize,
        inc: u32,
        conn: usize,
        id: CommandId,
        result: CommandResult,
    ) {
        if self.nodes[n].inc != inc || !self.nodes[n].up() {
            return;
        }
        self.checker.on_result(n, id.0);
        let lost_session = matches!(&result, Err(e) if e.is_session_lost());
        if lost_session && self.nodes[n].conn == Some(conn) {
            self.nodes[n].conn = None;
            self.conns[conn].client_gone = true;
        }
        self.log(n, "result", None, id.0, u64::from(result.is_ok()));
        self.input(n, |s, ctx| s.handle_result(ctx, id, result));
    }

    pub(super) fn notified(&mut self, n: usize, inc: u32, role: usize) {
        if self.nodes[n].inc != inc || !self.nodes[n].up() {
            return;
        }
        self.nodes[n].notified_at[role] = Some(self.now);
        self.log(n, "notified", Some(role), 0, 0);
        let r = self.roles[role].clone();
        self.input(n, |s, ctx| s.handle_release_notified(ctx, &r));
    }

    /// The driver sees its session close (tokio-postgres style).
    pub(super) fn session_closed(&mut self, n: usize, inc: u32, conn: usize) {
        if self.nodes[n].inc != inc || self.nodes[n].conn != Some(conn) {
            return;
        }
        self.nodes[n].conn = None;
        self.conns[conn].client_gone = true;
        self.log(n, "session_closed_seen", None, conn as u64, 0);
        self.count("session_close_seen_by_driver");
        self.input(n, |s, ctx| {
            s.handle_session_lost(ctx, "connection closed by server")
        });
    }

    /// The application: while it leads, it writes to the fenced resource.
    pub(super) fn app_tick(&mut self, n: usize, inc: u32) {
        if self.nodes[n].inc != inc || !self.nodes[n].up() {
            return;
        }
        if !self.nodes[n].paused() {
            self.fenced_writes(n);
        }
        let d = self
            .rng
            .between(Duration::from_millis(200), Duration::from_millis(800));
        self.after(d, Ev::AppTick { node: n, inc });
    }

    /// Sends one fenced write per role this node believes it leads.
    pub(super) fn fenced_writes(&mut self, n: usize) {
        let local = self.local(n);
        for r in 0..self.roles.len() {
            let node = &self.nodes[n];
            let token = if !node.dirty {
                // No input since the beliefs were last read: the machine's
                // state is as it was then, so `is_leader` at this later
                // instant is the cached belief unless its deadline passed.
                match node.belief[r] {
                    Some((term, until)) if local < until => term,
                    _ => continue,
                }
            } else {
                let Some(s) = node.subject.as_ref() else {
                    return;
                };
                if !s.is_leader(&self.roles[r], local) {
                    continue;
                }
                s.term(&self.roles[r])
            };
            let Some(token) = token else { continue };
            self.maybe_open_fenced(n, r, token);
            if self.nodes[n].cut_to_db() || self.lost() {
                continue;
            }
            let d = self.delay();
            self.log(n, "fenced_write", Some(r), token.0, 0);
            self.after(
                d,
                Ev::FencedWrite {
                    node: n,
                    role: r,
                    token,
                },
            );
        }
    }

    pub(super) fn drained(&mut self, n: usize, inc: u32, role: usize) {
        if self.nodes[n].inc != inc {
            return;
        }
        let r = self.roles[role].clone();
        self.input(n, |s, ctx| s.handle_drained(ctx, &r));
    }

    /// The listening connection reconnects when it can, and then tells the
    /// machine that notifications may have been missed.
    pub(super) fn listener_check(&mut self, n: usize, inc: u32) {
        if self.nodes[n].inc != inc || !self.nodes[n].up() {
            return;
        }
        let node = &self.nodes[n];
        if !node.listener_up && !node.paused() && node.cut.is_none() && self.db.is_up() {
            self.nodes[n].listener_up = true;
            self.log(n, "listen", None, 0, 0);
            self.input(n, |s, ctx| s.handle_notify_gap(ctx));
        }
        self.after(Duration::from_secs(1), Ev::ListenerCheck { node: n, inc });
    }

    /// Resumes a paused node: the application looks at `is_leader` first
    /// (as a thread resumed by SIGCONT would), then buffered input arrives,
    /// then timers fire.
    pub(super) fn resume(&mut self, n: usize) {
        self.nodes[n].paused_until = None;
        self.timeline
            .close(n, crate::timeline::Tag::Paused, self.now);
        self.log(n, "resume", None, 0, 0);
        self.fenced_writes(n);
        let buffered = std::mem::take(&mut self.nodes[n].buffered);
        for ev in buffered {
            self.handle(ev);
        }
        self.wake(n);
    }
}
