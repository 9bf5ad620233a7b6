//! The node task: one loop per elector that drives the machine.

use std::collections::HashMap;
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::backend::{Backend, NotifyEvent};
use crate::config::Config;
use crate::driver::clock;
use crate::driver::exec::{ExecContext, execute};
use crate::driver::status::{RoleShared, Unhealthy};
use crate::machine::{CommandId, CommandResult, Machine, RoleState};
use crate::types::{LocalInstant, Namespace, NodeId, Role};

/// Requests from handles and helper tasks to the node task.
pub(crate) enum Ctrl {
    /// Campaign for the role, publishing to this campaign's channels.
    Add(Role, RoleShared, oneshot::Sender<()>),
    Resign(Role, RoleShared, oneshot::Sender<()>),
    Stop(Role, RoleShared, oneshot::Sender<()>),
    /// The last handle of this campaign was dropped.
    Withdraw(Role, RoleShared),
    Shutdown(oneshot::Sender<()>),
    Drained(Role),
    Notified(NotifyEvent),
    SessionClosed,
}

pub(crate) struct NodeTask {
    pub(super) machine: Machine,
    pub(super) ctx: ExecContext,
    config: Config,
    /// The campaign each role publishes to (the latest `spawn`'s).
    pub(super) attached: HashMap<Role, RoleShared>,
    /// What keeps the node from working, and the command whose success
    /// clears it (`None`: any success, the session is back).
    pub(super) unhealthy: Option<(Option<&'static str>, Unhealthy)>,
    /// Roles draining leader-only work, since when.
    pub(super) draining: HashMap<Role, Instant>,
    ctrl: mpsc::UnboundedReceiver<Ctrl>,
    ctrl_closed: bool,
    pub(super) weak: mpsc::WeakUnboundedSender<Ctrl>,
    done: watch::Sender<bool>,
    origin: Instant,
    running: JoinSet<(CommandId, &'static str, CommandResult)>,
    resign_waiters: Vec<(Role, oneshot::Sender<()>)>,
    stop_waiters: Vec<(Role, oneshot::Sender<()>)>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
    shutdown_at: Option<Instant>,
}

impl NodeTask {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        node: NodeId,
        namespace: Namespace,
        config: Config,
        seed: u64,
        ctrl: mpsc::UnboundedReceiver<Ctrl>,
        weak: mpsc::WeakUnboundedSender<Ctrl>,
        done: watch::Sender<bool>,
    ) -> Self {
        let machine = Machine::new(
            node.clone(),
            namespace.clone(),
            config.clone(),
            ChaCha8Rng::seed_from_u64(seed),
        );
        Self {
            machine,
            ctx: ExecContext {
                backend,
                namespace,
                node,
                lease: config.lease_duration(),
                timeout: config.attempt_timeout(),
            },
            config,
            attached: HashMap::new(),
            unhealthy: None,
            draining: HashMap::new(),
            ctrl,
            ctrl_closed: false,
            weak,
            done,
            origin: Instant::now(),
            running: JoinSet::new(),
            resign_waiters: Vec::new(),
            stop_waiters: Vec::new(),
            shutdown_waiters: Vec::new(),
            shutdown_at: None,
        }
    }

    pub(super) fn now(&self) -> LocalInstant {
        // Suspend-aware: a resumed node sees the time it slept (clock.rs).
        LocalInstant::from_duration(clock::now().saturating_duration_since(self.origin))
    }

    pub(super) fn instant(&self, t: LocalInstant) -> Instant {
        self.origin + t.as_duration()
    }

    pub(crate) async fn run(self) {
        let span = info_span!(
            "regent.node",
            node = %self.ctx.node,
            namespace = %self.ctx.namespace
        );
        self.run_inner().instrument(span).await;
    }

    async fn run_inner(mut self) {
        let helpers = [self.spawn_subscriber(), self.spawn_session_watch()];
        info!("elector started");
        loop {
            self.flush();
            if self.shutdown_at.is_some() && self.machine.is_stopped() {
                break;
            }
            if let Some(limit) = self.shutdown_at
                && Instant::now() >= limit
            {
                warn!("shutdown did not finish in time; closing the session to drop every lock");
                break;
            }
            let wake = self
                .machine
                .poll_timeout()
                .map(|t| self.instant(t))
                .into_iter()
                .chain(self.shutdown_at)
                .min();
            tokio::select! {
                msg = self.ctrl.recv(), if !self.ctrl_closed => match msg {
                    Some(msg) => self.on_ctrl(msg),
                    None => {
                        // Every elector and handle is gone. Stop polling the
                        // closed channel (it would be ready forever).
                        self.ctrl_closed = true;
                        self.begin_shutdown();
                    }
                },
                Some(joined) = self.running.join_next(), if !self.running.is_empty() => {
                    match joined {
                        Ok((id, name, result)) => {
                            if result.is_ok() {
                                self.on_success(name);
                            }
                            let now = self.now();
                            self.machine.handle_result(now, id, result);
                        }
                        Err(e) => error!(error = %e, "a backend call panicked or was aborted"),
                    }
                }
                () = sleep_until_opt(wake) => {
                    let now = self.now();
                    self.machine.handle_timeout(now);
                }
            }
        }
        for helper in helpers {
            helper.abort();
        }
        self.running.abort_all();
        let _ = tokio::time::timeout(self.config.attempt_timeout(), self.ctx.backend.reset()).await;
        for shared in self.attached.values() {
            shared.update(true, |s| s.stop());
        }
        for (_, tx) in self
            .resign_waiters
            .drain(..)
            .chain(self.stop_waiters.drain(..))
        {
            let _ = tx.send(());
        }
        for tx in self.shutdown_waiters.drain(..) {
            let _ = tx.send(());
        }
        let _ = self.done.send(true);
        info!("elector stopped");
    }

    fn begin_shutdown(&mut self) {
        if self.shutdown_at.is_none() {
            let bound = crate::driver::release_bound(&self.config);
            self.shutdown_at = Some(Instant::now() + bound);
            let now = self.now();
            self.machine.handle_shutdown(now);
        }
    }

    fn on_ctrl(&mut self, msg: Ctrl) {
        let now = self.now();
        match msg {
            Ctrl::Add(role, shared, tx) => {
                if self.shutdown_at.is_some() {
                    shared.update(true, |s| s.stop());
                } else {
                    self.attach(&role, shared);
                    self.machine.add_role(now, role);
                }
                let _ = tx.send(());
            }
            Ctrl::Withdraw(role, shared) => {
                // Only if no newer campaign has attached meanwhile.
                if self.attached.get(&role).is_some_and(|s| s.same(&shared)) {
                    info!(role = %role, "every handle dropped; withdrawing");
                    self.machine.handle_stop(now, &role);
                }
            }
            // A handle of a campaign that a newer `spawn` replaced has
            // nothing left to resign or stop.
            Ctrl::Resign(role, shared, tx) => {
                if self.attached.get(&role).is_some_and(|s| s.same(&shared)) {
                    self.machine.handle_resign(now, &role);
                    self.resign_waiters.push((role, tx));
                } else {
                    let _ = tx.send(());
                }
            }
            Ctrl::Stop(role, shared, tx) => {
                if self.attached.get(&role).is_some_and(|s| s.same(&shared)) {
                    self.machine.handle_stop(now, &role);
                    self.stop_waiters.push((role, tx));
                } else {
                    let _ = tx.send(());
                }
            }
            Ctrl::Shutdown(tx) => {
                self.shutdown_waiters.push(tx);
                self.begin_shutdown();
            }
            Ctrl::Drained(role) => self.machine.handle_drained(now, &role),
            Ctrl::Notified(NotifyEvent::Released(role)) => {
                debug!(role = %role, "release notification");
                self.machine.handle_release_notified(now, &role);
            }
            Ctrl::Notified(NotifyEvent::MaybeMissed) => self.machine.handle_notify_gap(now),
            Ctrl::SessionClosed => self.machine.handle_session_lost(now, "connection closed"),
        }
    }

    /// Runs commands, publishes events, answers waiters.
    fn flush(&mut self) {
        while let Some(command) = self.machine.poll_command() {
            let id = command.id();
            debug!(command = command.name(), %id, "run");
            let ctx = self.ctx.clone();
            let name = command.name();
            self.running
                .spawn(async move { (id, name, execute(ctx, command).await) });
        }
        while let Some(event) = self.machine.poll_event() {
            self.on_event(event);
        }
        self.check_drains();
        let machine = &self.machine;
        let settled = |role: &Role, stop: bool| match machine.state(role) {
            None | Some(RoleState::Stopped) => true,
            Some(RoleState::Follower) => !stop,
            _ => false,
        };
        let (done, keep): (Vec<_>, Vec<_>) = self
            .resign_waiters
            .drain(..)
            .partition(|(r, _)| settled(r, false));
        self.resign_waiters = keep;
        for (_, tx) in done {
            let _ = tx.send(());
        }
        let (done, keep): (Vec<_>, Vec<_>) = self
            .stop_waiters
            .drain(..)
            .partition(|(r, _)| settled(r, true));
        self.stop_waiters = keep;
        for (_, tx) in done {
            let _ = tx.send(());
        }
    }

    fn spawn_subscriber(&self) -> JoinHandle<()> {
        let backend = self.ctx.backend.clone();
        let namespace = self.ctx.namespace.clone();
        let weak = self.weak.clone();
        let retry = self.config.retry_interval();
        tokio::spawn(async move {
            let Some(notifier) = backend.notifier() else {
                // No notifications from this engine: standbys find a
                // released role at their next retry round.
                return;
            };
            loop {
                match notifier.subscribe(&namespace).await {
                    Ok(mut sub) => {
                        // Until now we were deaf: before the first subscribe
                        // as much as between two. A release published
                        // meanwhile is lost, so poll (DESIGN §3).
                        if !forward(&weak, NotifyEvent::MaybeMissed) {
                            return;
                        }
                        loop {
                            match sub.recv().await {
                                Ok(event) => {
                                    if !forward(&weak, event) {
                                        return;
                                    }
                                }
                                Err(e) => {
                                    warn!(error = %e, "release subscription failed; resubscribing");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot subscribe to release notifications; retrying")
                    }
                }
                tokio::time::sleep(retry).await;
            }
        })
    }

    fn spawn_session_watch(&self) -> JoinHandle<()> {
        let backend = self.ctx.backend.clone();
        let weak = self.weak.clone();
        tokio::spawn(async move {
            loop {
                backend.session_closed().await;
                match weak.upgrade() {
                    Some(tx) if tx.send(Ctrl::SessionClosed).is_ok() => {}
                    _ => return,
                }
            }
        })
    }
}

fn forward(weak: &mpsc::WeakUnboundedSender<Ctrl>, event: NotifyEvent) -> bool {
    weak.upgrade()
        .is_some_and(|tx| tx.send(Ctrl::Notified(event)).is_ok())
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(clock::sleep_target(at)).await,
        None => std::future::pending().await,
    }
}
