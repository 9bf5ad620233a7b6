//! [`Notify`] for [`TokioPgBackend`]: `LISTEN`/`NOTIFY` on one channel per
//! namespace.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use regent_core::{BackendError, Namespace, Notify, NotifyEvent, Role, Subscription};
use regent_postgres::{self as postgres, TableName};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Config};

use crate::TokioPgBackend;
use crate::connect::{Connector, MessageStream};
use crate::error::{connect_error, describe};

/// What the listening connection's driver forwards.
enum Incoming {
    /// A notification on our channel, with its payload.
    Payload(String),
    /// The connection ended.
    Closed(String),
}

/// One listening connection: the client (kept so the connection stays
/// open) and what its driver task forwards. Dropping it drops the client,
/// which ends the connection (`Terminate`); the driver task then ends by
/// itself (or, if the server vanished, when TCP keepalives give up).
struct Listening {
    client: Client,
    rx: mpsc::UnboundedReceiver<Incoming>,
}

/// A subscription to one namespace's release channel, on a listening
/// connection of its own (opened from the backend's config, outside the
/// pool, with `application_name` `<name>:listen` and TCP keepalives).
///
/// The backend polls the connection itself (`Connection::poll_message`) and
/// forwards notifications. When the connection ends, the next
/// [`recv`](Subscription::recv) reconnects, runs `LISTEN` again and yields
/// [`NotifyEvent::MaybeMissed`], so the engine polls; if reconnecting fails
/// it returns the error, and the call after that tries again.
pub struct TokioPgSubscription {
    connector: Connector,
    config: Config,
    channel: String,
    table: TableName,
    timeout: Duration,
    listening: Option<Listening>,
}

impl std::fmt::Debug for TokioPgSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioPgSubscription")
            .field("channel", &self.channel)
            .field("connected", &self.listening.is_some())
            .finish_non_exhaustive()
    }
}

impl TokioPgSubscription {
    /// The channel this subscription listens on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Connects and runs `LISTEN`; when this returns, every later
    /// notification on the channel will be seen.
    async fn listen(&self) -> Result<Listening, BackendError> {
        let limit = self.timeout;
        match tokio::time::timeout(limit, self.listen_unbounded()).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::Transient(format!(
                "opening the release listener took longer than {limit:?}"
            ))),
        }
    }

    async fn listen_unbounded(&self) -> Result<Listening, BackendError> {
        let (client, stream) = (self.connector)(self.config.clone())
            .await
            .map_err(|e| connect_error(&e, &self.table))?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(stream, self.channel.clone(), tx));
        let listening = Listening { client, rx };
        listening
            .client
            .batch_execute(&postgres::listen(&self.channel))
            .await
            .map_err(|e| connect_error(&e, &self.table))?;
        Ok(listening)
    }
}

/// Drives a listening connection, forwarding our channel's notifications,
/// until it ends or the subscription is dropped.
async fn drive(mut stream: MessageStream, channel: String, tx: mpsc::UnboundedSender<Incoming>) {
    let reason = loop {
        match stream.next().await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if n.channel() == channel
                    && tx.send(Incoming::Payload(n.payload().to_owned())).is_err()
                {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                break format!("the release listener's connection failed: {}", describe(&e));
            }
            None => break "the server closed the release listener's connection".to_owned(),
        }
    };
    let _ = tx.send(Incoming::Closed(reason));
}

#[async_trait]
impl Subscription for TokioPgSubscription {
    async fn recv(&mut self) -> Result<NotifyEvent, BackendError> {
        let Some(listening) = self.listening.as_mut() else {
            // The previous connection ended: anything sent meanwhile is lost.
            self.listening = Some(self.listen().await?);
            return Ok(NotifyEvent::MaybeMissed);
        };
        match listening.rx.recv().await {
            Some(Incoming::Payload(payload)) => Ok(match Role::new(payload) {
                Ok(role) => NotifyEvent::Released(role),
                // Someone else's payload on our channel: poll to be safe.
                Err(_) => NotifyEvent::MaybeMissed,
            }),
            Some(Incoming::Closed(reason)) => {
                tracing::debug!(channel = %self.channel, %reason, "release listener lost; reconnecting");
                self.reconnect().await
            }
            None => self.reconnect().await,
        }
    }
}

impl TokioPgSubscription {
    async fn reconnect(&mut self) -> Result<NotifyEvent, BackendError> {
        self.listening = None;
        self.listening = Some(self.listen().await?);
        Ok(NotifyEvent::MaybeMissed)
    }
}

#[async_trait]
impl Notify for TokioPgBackend {
    async fn publish_release(
        &self,
        namespace: &Namespace,
        role: &Role,
    ) -> Result<(), BackendError> {
        let inner = &self.inner;
        let channel = postgres::notify_channel(namespace);
        inner
            .pool_query(&inner.sql.notify, &[&channel, &role.as_str()])
            .await
            .map(|_| ())
            .map_err(|e| inner.pool_call_error(e))
    }

    async fn subscribe(
        &self,
        namespace: &Namespace,
    ) -> Result<Box<dyn Subscription>, BackendError> {
        let inner = &self.inner;
        let mut sub = TokioPgSubscription {
            connector: inner.connector.clone(),
            config: inner.listen_config.clone(),
            channel: postgres::notify_channel(namespace),
            table: inner.settings.table.clone(),
            timeout: inner.settings.call_timeout(),
            listening: None,
        };
        sub.listening = Some(sub.listen().await?);
        Ok(Box::new(sub))
    }
}
