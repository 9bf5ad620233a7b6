//! Release notifications over `LISTEN`/`NOTIFY`, once for every driver:
//! reconnecting, and telling the engine it may have missed messages after
//! every reconnect. (After the first subscribe the tokio driver polls by
//! itself: that rule holds for every engine, so it lives there.)

use std::sync::Arc;

use async_trait::async_trait;
use regent_core::{BackendError, NotifyEvent, Role, Subscription};

use crate::driver::{Driver, Heard, Listener};
use crate::session::Engine;

/// A live subscription to one namespace's release channel.
pub struct PgSubscription<D: Driver> {
    engine: Arc<Engine<D>>,
    channel: String,
    listener: Option<D::Listener>,
}

impl<D: Driver> std::fmt::Debug for PgSubscription<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSubscription")
            .field("channel", &self.channel)
            .field("connected", &self.listener.is_some())
            .finish_non_exhaustive()
    }
}

impl<D: Driver> PgSubscription<D> {
    pub(crate) async fn open(
        engine: Arc<Engine<D>>,
        channel: String,
    ) -> Result<Self, BackendError> {
        let mut sub = Self {
            engine,
            channel,
            listener: None,
        };
        sub.listener = Some(listen(&sub.engine, &sub.channel).await?);
        Ok(sub)
    }

    /// The channel listened on.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

/// Opens a listener on `channel`.
async fn listen<D: Driver>(e: &Engine<D>, channel: &str) -> Result<D::Listener, BackendError> {
    {
        let mut spec = e.spec(
            e.settings.listen_application_name(),
            &e.settings.keepalive_gucs(),
        );
        // Lease mode's direct listener, past the pooler.
        spec.url = e
            .settings
            .listener_url
            .as_ref()
            .map(|u| u.as_str().to_owned());
        let limit = e.settings.call_timeout();
        let sql = crate::listen(channel);
        match tokio::time::timeout(limit, e.driver.listen(&spec, channel, &sql)).await {
            Ok(Ok(l)) => Ok(l),
            Ok(Err(err)) => Err(crate::connect_error(
                err.sqlstate.as_deref(),
                &e.settings.table,
                &err.message,
            )),
            Err(_) => Err(BackendError::Transient(format!(
                "opening the release listener took longer than {limit:?}"
            ))),
        }
    }
}

#[async_trait]
impl<D: Driver> Subscription for PgSubscription<D> {
    async fn recv(&mut self) -> Result<NotifyEvent, BackendError> {
        let Some(listener) = self.listener.as_mut() else {
            // The previous listener failed: anything sent meanwhile is lost.
            self.listener = Some(listen(&self.engine, &self.channel).await?);
            return Ok(NotifyEvent::MaybeMissed);
        };
        match listener.recv().await {
            Ok(Heard::Payload(payload)) => Ok(match Role::new(payload) {
                Ok(role) => NotifyEvent::Released(role),
                // Someone else's payload on our channel: poll to be safe.
                Err(_) => NotifyEvent::MaybeMissed,
            }),
            // The driver reconnected (and re-ran LISTEN) by itself;
            // whatever was sent in between is lost.
            Ok(Heard::Reconnected) => {
                tracing::debug!(channel = %self.channel, "release listener reconnected");
                Ok(NotifyEvent::MaybeMissed)
            }
            Err(err) => {
                tracing::debug!(channel = %self.channel, error = %err, "release listener lost; reconnecting");
                self.listener = None;
                self.listener = Some(listen(&self.engine, &self.channel).await?);
                Ok(NotifyEvent::MaybeMissed)
            }
        }
    }
}
