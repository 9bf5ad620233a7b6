//! Type erasure of the TLS connector: the backend stores one
//! [`Connector`] that opens a connection and hands back the client plus the
//! connection as a stream of asynchronous messages, which the backend polls
//! itself (with `Connection::poll_message`) to see notices, notifications
//! and — above all — the moment the connection ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Config, Socket};

/// A connection, driven by polling: yields notices and notifications, ends
/// (`None` or `Err`) when the connection does.
pub(crate) type MessageStream =
    Pin<Box<dyn Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Send>>;

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<(Client, MessageStream), tokio_postgres::Error>> + Send>>;

/// Opens one connection with a given config.
pub(crate) type Connector = Arc<dyn Fn(Config) -> ConnectFuture + Send + Sync>;

/// A [`Connector`] over any TLS implementation tokio-postgres accepts.
pub(crate) fn connector<T>(tls: T) -> Connector
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + Sync + 'static,
    T::TlsConnect: Send + Sync,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    Arc::new(move |config: Config| -> ConnectFuture {
        let tls = tls.clone();
        Box::pin(async move {
            let (client, mut connection) = config.connect(tls).await?;
            let stream: MessageStream = Box::pin(futures_util::stream::poll_fn(move |cx| {
                connection.poll_message(cx)
            }));
            Ok((client, stream))
        })
    })
}
