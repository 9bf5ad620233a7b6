//! An in-process TCP proxy on loopback, for partitions and resets between a
//! node and PostgreSQL (`tc netem` does not work on our machines).
//!
//! - `Mode::Pass`: bytes flow both ways.
//! - `Mode::Blackhole`: bytes are read and dropped silently in both
//!   directions; connections stay open, like a partition. New connections
//!   are accepted but go nowhere.
//! - [`Proxy::reset_all`]: every open connection is closed at once.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Drop everything, keep connections open.
    Blackhole,
}

/// A running proxy; stops on drop.
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    generation: Arc<watch::Sender<u64>>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`, which
    /// must be a loopback address.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        assert!(
            upstream.ip().is_loopback(),
            "the proxy only targets loopback"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let generation = Arc::new(watch::channel(0u64).0);
        let gen2 = generation.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mode_rx = mode_rx.clone();
                let gen_rx = gen2.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    pipe(client, server, mode_rx, gen_rx).await;
                });
            }
        });
        Proxy {
            addr,
            mode,
            generation,
            task,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the mode for every connection, open or new.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Closes every open connection now.
    pub fn reset_all(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.reset_all();
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    mode: watch::Receiver<Mode>,
    mut generation: watch::Receiver<u64>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let m1 = mode.clone();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if *m1.borrow() == Mode::Pass && sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let m2 = mode;
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if *m2.borrow() == Mode::Pass && cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
        _ = generation.changed() => {}
    }
}
