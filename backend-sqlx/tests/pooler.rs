//! Transaction-pooling detection through a tiny fake pooler that, like
//! PgBouncer in `pool_mode=transaction`, hands each of a client's
//! transactions to whichever server connection is next.

mod common;

use std::io;

use regent_core::{BackendError, Lock};
use regent_sqlx::SqlxBackend;
use sqlx::postgres::PgPoolOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SSL_REQUEST: u32 = 80_877_103;

async fn read_startup(c: &mut TcpStream) -> io::Result<Vec<u8>> {
    loop {
        let len = c.read_u32().await? as usize;
        let mut body = vec![0; len.saturating_sub(4)];
        c.read_exact(&mut body).await?;
        if len == 8 && body[..4] == SSL_REQUEST.to_be_bytes() {
            c.write_all(b"N").await?; // no TLS here; the client goes on
            continue;
        }
        let mut packet = (len as u32).to_be_bytes().to_vec();
        packet.extend(body);
        return Ok(packet);
    }
}

/// Reads one tagged message: (tag, whole message bytes).
async fn read_msg(s: &mut TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let tag = s.read_u8().await?;
    let len = s.read_u32().await? as usize;
    let mut msg = vec![tag];
    msg.extend((len as u32).to_be_bytes());
    let mut body = vec![0; len.saturating_sub(4)];
    s.read_exact(&mut body).await?;
    msg.extend(body);
    Ok((tag, msg))
}

/// Copies server messages to the client (if any) until ReadyForQuery.
async fn relay_until_ready(up: &mut TcpStream, client: Option<&mut TcpStream>) -> io::Result<()> {
    let mut client = client;
    loop {
        let (tag, msg) = read_msg(up).await?;
        if let Some(c) = client.as_mut() {
            c.write_all(&msg).await?;
        }
        if tag == b'Z' {
            return Ok(());
        }
    }
}

async fn serve(mut client: TcpStream, server: String, switch: bool) -> io::Result<()> {
    let startup = read_startup(&mut client).await?;
    let mut ups = Vec::new();
    for i in 0..2 {
        let mut up = TcpStream::connect(&server).await?;
        up.write_all(&startup).await?;
        relay_until_ready(&mut up, (i == 0).then_some(&mut client)).await?;
        ups.push(up);
    }
    let mut next = 0;
    loop {
        let (tag, msg) = read_msg(&mut client).await?;
        if tag == b'X' {
            return Ok(());
        }
        ups[next].write_all(&msg).await?;
        // A simple query or a Sync ends the unit the pooler assigns.
        if tag == b'Q' || tag == b'S' {
            relay_until_ready(&mut ups[next], Some(&mut client)).await?;
            if switch {
                next = (next + 1) % ups.len();
            }
        }
    }
}

/// Starts a fake pooler in front of the test server; returns its options.
async fn pooler(switch: bool) -> sqlx::postgres::PgConnectOptions {
    let url = common::database_url();
    let opts: sqlx::postgres::PgConnectOptions = url.parse().expect("DATABASE_URL");
    let server = format!("{}:{}", opts.get_host(), opts.get_port());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((c, _)) = listener.accept().await {
            tokio::spawn(serve(c, server.clone(), switch));
        }
    });
    opts.host("127.0.0.1").port(port)
}

#[tokio::test]
async fn transaction_pooler_is_refused_with_a_clear_error() {
    let pool = PgPoolOptions::new().connect_lazy_with(pooler(true).await);
    let backend = SqlxBackend::new(pool);
    let err = backend.connect().await.unwrap_err();
    let BackendError::Misconfigured(msg) = &err else {
        panic!("expected Misconfigured, got {err:?}")
    };
    assert!(msg.contains("pool_mode=transaction"), "{msg}");
    assert!(
        msg.contains("pool_mode=session") && msg.contains("directly"),
        "{msg}"
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn the_same_proxy_in_session_mode_is_accepted() {
    let ctx = common::Ctx::new("sessmode").await;
    let pool = PgPoolOptions::new().connect_lazy_with(pooler(false).await);
    let backend = SqlxBackend::builder()
        .schema(&ctx.schema)
        .build(pool)
        .unwrap();
    backend.connect().await.unwrap();
    assert!(common::granted(&backend, &ctx.ns(), &common::role("r")).await);
    ctx.cleanup().await;
}
