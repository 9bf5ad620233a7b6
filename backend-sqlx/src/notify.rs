//! [`Notify`] for [`SqlxBackend`]: `LISTEN`/`NOTIFY` on one channel per
//! namespace.

use async_trait::async_trait;
use regent_core::{BackendError, Namespace, Notify, NotifyEvent, Role, Subscription};
use regent_postgres::{self as postgres, TableName};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};

use crate::SqlxBackend;
use crate::error::pool_error;

/// A subscription to one namespace's release channel, over sqlx's
/// [`PgListener`] on a connection of its own.
///
/// `PgListener` reconnects by itself when its connection drops; when it
/// does (its `try_recv` returns `Ok(None)`), this yields
/// [`NotifyEvent::MaybeMissed`] so the engine polls. If the listener fails
/// outright, `recv` returns the error once and, on the next call, builds a
/// new listener and yields `MaybeMissed`.
pub struct SqlxSubscription {
    listener: Option<PgListener>,
    channel: String,
    pool: PgPool,
    table: TableName,
}

impl std::fmt::Debug for SqlxSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlxSubscription")
            .field("channel", &self.channel)
            .field("connected", &self.listener.is_some())
            .finish()
    }
}

impl SqlxSubscription {
    async fn open(
        options: &PgConnectOptions,
        channel: String,
        table: TableName,
    ) -> Result<Self, BackendError> {
        // A pool of one connection, used by PgListener only to reconnect.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options.clone());
        let mut this = Self {
            listener: None,
            channel,
            pool,
            table,
        };
        this.listener = Some(this.listen().await?);
        Ok(this)
    }

    async fn listen(&self) -> Result<PgListener, BackendError> {
        let err = |e: sqlx::Error| pool_error(&e, &self.table);
        let mut listener = PgListener::connect_with(&self.pool).await.map_err(err)?;
        listener.ignore_pool_close_event(true);
        listener.listen(&self.channel).await.map_err(err)?;
        Ok(listener)
    }

    /// The channel this subscription listens on.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

#[async_trait]
impl Subscription for SqlxSubscription {
    async fn recv(&mut self) -> Result<NotifyEvent, BackendError> {
        let Some(listener) = self.listener.as_mut() else {
            // The previous listener failed: anything sent meanwhile is lost.
            self.listener = Some(self.listen().await?);
            return Ok(NotifyEvent::MaybeMissed);
        };
        match listener.try_recv().await {
            Ok(Some(n)) => Ok(match Role::new(n.payload()) {
                Ok(role) => NotifyEvent::Released(role),
                // Someone else's payload on our channel: poll to be safe.
                Err(_) => NotifyEvent::MaybeMissed,
            }),
            // The connection dropped and PgListener reconnected (it re-ran
            // LISTEN); whatever was sent in between is lost.
            Ok(None) => {
                tracing::debug!(channel = %self.channel, "release listener reconnected");
                Ok(NotifyEvent::MaybeMissed)
            }
            Err(e) => {
                self.listener = None;
                Err(pool_error(&e, &self.table))
            }
        }
    }
}

#[async_trait]
impl Notify for SqlxBackend {
    async fn publish_release(
        &self,
        namespace: &Namespace,
        role: &Role,
    ) -> Result<(), BackendError> {
        let inner = &self.inner;
        sqlx::query(AssertSqlSafe(inner.sql.notify.clone()))
            .bind(postgres::notify_channel(namespace))
            .bind(role.as_str())
            .execute(&inner.pool)
            .await
            .map(|_| ())
            .map_err(|e| pool_error(&e, &inner.settings.table))
    }

    async fn subscribe(
        &self,
        namespace: &Namespace,
    ) -> Result<Box<dyn Subscription>, BackendError> {
        let sub = SqlxSubscription::open(
            &self.inner.listen_options,
            postgres::notify_channel(namespace),
            self.inner.settings.table.clone(),
        )
        .await?;
        Ok(Box::new(sub))
    }
}
