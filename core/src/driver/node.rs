//! The node task: one loop per elector that drives the machine.

use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::backend::{Backend, NotifyEvent};
use crate::config::Config;
use crate::driver::Shared;
use crate::driver::exec::{ExecContext, execute};
use crate::driver::handle::{Leadership, Status};
use crate::machine::{CommandId, CommandResult, Event, Machine, RoleState};
use crate::types::{LocalInstant, Namespace, NodeId, Role};

/// Requests from handles and helper tasks to the node task.
pub(crate) enum Ctrl {
    Add(Role, oneshot::Sender<()>),
    Resign(Role, oneshot::Sender<()>),
    Stop(Role, oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
    Drained(Role),
    Notified(NotifyEvent),
    SessionClosed,
}

pub(crate) struct NodeTask {
    machine: Machine,
    ctx: ExecContext,
    config: Config,
    shared: Arc<Shared>,
    ctrl: mpsc::UnboundedReceiver<Ctrl>,
    weak: mpsc::WeakUnboundedSender<Ctrl>,
    done: watch::Sender<bool>,
    origin: Instant,
    running: JoinSet<(CommandId, CommandResult)>,
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
        shared: Arc<Shared>,
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
            shared,
            ctrl,
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

    fn now(&self) -> LocalInstant {
        LocalInstant::from_duration(Instant::now().saturating_duration_since(self.origin))
    }

    fn instant(&self, t: LocalInstant) -> Instant {
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
                msg = self.ctrl.recv() => match msg {
                    Some(msg) => self.on_ctrl(msg),
                    None => self.begin_shutdown(),
                },
                Some(joined) = self.running.join_next(), if !self.running.is_empty() => {
                    match joined {
                        Ok((id, result)) => {
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
        for role in self.machine.roles().cloned().collect::<Vec<_>>() {
            self.publish(&role, Leadership::Stopped, None);
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
            let bound = self.config.drain_timeout() + self.config.attempt_timeout() * 4;
            self.shutdown_at = Some(Instant::now() + bound);
            let now = self.now();
            self.machine.handle_shutdown(now);
        }
    }

    fn on_ctrl(&mut self, msg: Ctrl) {
        let now = self.now();
        match msg {
            Ctrl::Add(role, tx) => {
                if self.shutdown_at.is_none() {
                    self.machine.add_role(now, role);
                }
                let _ = tx.send(());
            }
            Ctrl::Resign(role, tx) => {
                self.machine.handle_resign(now, &role);
                self.resign_waiters.push((role, tx));
            }
            Ctrl::Stop(role, tx) => {
                self.machine.handle_stop(now, &role);
                self.stop_waiters.push((role, tx));
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
            self.running
                .spawn(async move { (id, execute(ctx, command).await) });
        }
        while let Some(event) = self.machine.poll_event() {
            self.on_event(event);
        }
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

    fn publish(&self, role: &Role, leadership: Leadership, deadline: Option<Instant>) {
        if let Some(shared) = self.shared.get(role) {
            shared.status.send_replace(Status {
                leadership,
                deadline,
            });
        }
    }

    fn on_event(&mut self, event: Event) {
        let ns = self.ctx.namespace.to_string();
        match event {
            Event::StartedLeading {
                role,
                term,
                deadline,
            } => {
                info!(role = %role, term = %term, "started leading");
                metrics::counter!("regent_elections_won_total", "namespace" => ns.clone(), "role" => role.to_string()).increment(1);
                metrics::gauge!("regent_is_leader", "namespace" => ns, "role" => role.to_string())
                    .set(1.0);
                let leadership = Leadership::Leader {
                    token: term,
                    since: Instant::now(),
                };
                self.publish(&role, leadership, Some(self.instant(deadline)));
            }
            Event::DeadlineExtended { role, deadline } => {
                let at = self.instant(deadline);
                if let Some(shared) = self.shared.get(&role) {
                    // Quietly: watchers care about leadership, not deadlines.
                    shared.status.send_if_modified(|s| {
                        s.deadline = Some(at);
                        false
                    });
                }
            }
            Event::LeadershipAtRisk { role, deadline } => {
                let left = self
                    .instant(deadline)
                    .saturating_duration_since(Instant::now());
                warn!(role = %role, remaining = ?left, "renewals failing; leadership at risk");
            }
            Event::LeadershipRecovered { role } => info!(role = %role, "renewal succeeded again"),
            Event::StoppedLeading { role, term, reason } => {
                if reason.drains() {
                    info!(role = %role, term = %term, reason = %reason, "stopped leading");
                } else {
                    warn!(role = %role, term = %term, reason = %reason, "stopped leading");
                }
                metrics::counter!("regent_leadership_lost_total", "namespace" => ns.clone(), "role" => role.to_string(), "reason" => reason.as_str()).increment(1);
                metrics::gauge!("regent_is_leader", "namespace" => ns, "role" => role.to_string())
                    .set(0.0);
                self.publish(&role, Leadership::Follower { leader: None }, None);
            }
            Event::DrainRequested { role } => self.spawn_drain(role),
            Event::LeaderObserved { role, leader } => {
                if let Some(shared) = self.shared.get(&role) {
                    let holder = leader.map(|l| l.holder);
                    shared.status.send_if_modified(|s| match &mut s.leadership {
                        Leadership::Follower { leader } if *leader != holder => {
                            *leader = holder;
                            true
                        }
                        _ => false,
                    });
                }
            }
            Event::ZombiePreempted { role, holder } => {
                warn!(role = %role, holder = %holder, "terminated the session of a zombie holder whose lease had expired");
            }
            Event::PreemptNotPermitted { role } => warn!(
                role = %role,
                "zombie preemption is on but the database refused to terminate the holder's \
                 session; grant the privilege (PostgreSQL: GRANT pg_signal_backend TO <user>) or \
                 turn preemption off. Waiting for the lock instead"
            ),
            Event::SessionLost { reason } => {
                warn!(reason = %reason, "database session lost; every lock on it is gone");
            }
            Event::CommandFailed {
                command,
                error,
                retryable,
            } => {
                if retryable {
                    debug!(command, error = %error, "backend call failed; the machine will retry");
                } else {
                    error!(command, error = %error, "backend call failed and will not succeed until fixed");
                }
            }
            Event::RoleStopped { role } => self.publish(&role, Leadership::Stopped, None),
        }
    }

    fn spawn_drain(&self, role: Role) {
        let Some(shared) = self.shared.get(&role) else {
            if let Some(tx) = self.weak.upgrade() {
                let _ = tx.send(Ctrl::Drained(role));
            }
            return;
        };
        let weak = self.weak.clone();
        tokio::spawn(async move {
            let mut work = shared.work.subscribe();
            let _ = work.wait_for(|n| *n == 0).await;
            if let Some(tx) = weak.upgrade() {
                let _ = tx.send(Ctrl::Drained(role));
            }
        });
    }

    fn spawn_subscriber(&self) -> JoinHandle<()> {
        let backend = self.ctx.backend.clone();
        let namespace = self.ctx.namespace.clone();
        let weak = self.weak.clone();
        let retry = self.config.retry_interval();
        tokio::spawn(async move {
            loop {
                match backend.subscribe(&namespace).await {
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
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
