//! Graceful handover: resign → new-leader cycles among 3 in-process nodes
//! (default config) on the local PostgreSQL, on each driver.
//!
//! The leaderless gap of a cycle runs from just before `resign()` is
//! called on the leader (which steps down at once) until a standby leads.
//! Two ways to see "leads" (`HANDOVER_MODE`):
//! - `watch` (default): a standby's `wait_until_leader()` returns (pushed by
//!   the driver the moment the machine says so);
//! - `poll`: an external observer polls every standby's `is_leader()` every
//!   1 ms, as a side-by-side comparison with another library does.
//!
//! Cycles are `HANDOVER_PAUSE_MS` (default 1100 ms) apart: a resigned node
//! holds off for 2 × retry (2 s by default) before campaigning again, so
//! with three nodes in rotation back-to-back resigns would find both
//! standbys holding off (see BENCHMARKS.md).
//!
//! `cargo bench --features tokio-postgres --bench handover` runs both
//! drivers (`HANDOVER_DRIVERS=sqlx` or `tokio-postgres` for one);
//! `HANDOVER_CYCLES` changes 200, `HANDOVER_TRACE=1` prints every cycle,
//! `RUST_LOG=regent_core=debug` the engine's logs.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use regent::sqlx::SqlxBackend;
use regent::{Config, Elector, LeaderHandle, Namespace, NodeId, Role};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Driver {
    Sqlx,
    #[cfg(feature = "tokio-postgres")]
    TokioPg,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Sqlx => "sqlx",
            #[cfg(feature = "tokio-postgres")]
            Driver::TokioPg => "tokio-postgres",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Watch,
    Poll,
}

async fn one_of_leads(handles: &[LeaderHandle], mode: Mode) -> usize {
    match mode {
        Mode::Watch => {
            let futs: Vec<_> = handles
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    Box::pin(async move {
                        let _ = h.wait_until_leader().await;
                        i
                    })
                })
                .collect();
            futures::future::select_all(futs).await.0
        }
        Mode::Poll => loop {
            if let Some(i) = handles.iter().position(|h| h.is_leader()) {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        },
    }
}

use common::env;

fn main() {
    common::run_on_runtime(run());
}

async fn run() {
    let cycles: usize = env("HANDOVER_CYCLES", 200);
    let pause = Duration::from_millis(env("HANDOVER_PAUSE_MS", 1100));
    let mode = match std::env::var("HANDOVER_MODE").as_deref() {
        Ok("poll") => Mode::Poll,
        _ => Mode::Watch,
    };
    let wanted = std::env::var("HANDOVER_DRIVERS").unwrap_or_default();
    let mut drivers = vec![Driver::Sqlx];
    #[cfg(feature = "tokio-postgres")]
    drivers.push(Driver::TokioPg);
    drivers.retain(|d| wanted.is_empty() || wanted.split(',').any(|w| w == d.name()));

    let mut rows = Vec::new();
    for driver in drivers {
        let (gaps, slow) = cycles_on(driver, mode, cycles, pause).await;
        let s = common::stats(&gaps);
        rows.push(vec![
            driver.name().to_owned(),
            format!("{mode:?}").to_lowercase(),
            s.n.to_string(),
            common::ms(s.p50),
            common::ms(s.p90),
            common::ms(s.p99),
            common::ms(s.max),
            slow.to_string(),
        ]);
    }
    println!("\n## Graceful handover (defaults, 3 nodes, local PostgreSQL)\n");
    common::table(
        &[
            "driver",
            "observed by",
            "cycles",
            "p50",
            "p90",
            "p99",
            "max",
            "gaps > 500 ms",
        ],
        &rows,
    );
    println!(
        "\n{cycles} cycles per driver, {} ms apart; target p99 ≤ 10 ms",
        pause.as_millis()
    );
}

async fn elector(driver: Driver, url: &str, ns: &Namespace, i: usize) -> Elector {
    let app = format!("bench-handover-{i}");
    let id = NodeId::new(format!("node-{i}")).unwrap();
    let builder = match driver {
        Driver::Sqlx => {
            let b = SqlxBackend::builder()
                .application_name(&app)
                .max_pool_connections(2)
                .connect(url)
                .await
                .unwrap();
            if i == 0 {
                b.migrate().await.unwrap();
            }
            Elector::builder(b)
        }
        #[cfg(feature = "tokio-postgres")]
        Driver::TokioPg => {
            let b = regent::tokio_postgres::TokioPgBackend::builder()
                .application_name(&app)
                .max_pool_connections(2)
                .connect(url)
                .await
                .unwrap();
            if i == 0 {
                b.migrate().await.unwrap();
            }
            Elector::builder(b)
        }
    };
    builder
        .namespace(ns.clone())
        .node_id(id)
        .config(Config::default())
        .build()
        .await
        .unwrap()
}

async fn cycles_on(
    driver: Driver,
    mode: Mode,
    cycles: usize,
    pause: Duration,
) -> (Vec<Duration>, usize) {
    let trace = std::env::var_os("HANDOVER_TRACE").is_some();
    let url = support::pg::database_url().await;
    let ns = Namespace::new(support::pg::unique("bench_handover")).unwrap();
    let role = Role::new("scheduler").unwrap();
    let mut electors = Vec::new();
    let mut handles = Vec::new();
    for i in 0..3 {
        let e = elector(driver, &url, &ns, i).await;
        handles.push(e.spawn(role.clone()).await.unwrap());
        electors.push(e);
    }
    let mut leader = tokio::time::timeout(Duration::from_secs(30), one_of_leads(&handles, mode))
        .await
        .expect("a first leader");
    // Let the standbys' listeners settle.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut gaps = Vec::with_capacity(cycles);
    let mut slow = 0usize;
    for _ in 0..cycles {
        let others: Vec<LeaderHandle> = (0..3)
            .filter(|&i| i != leader)
            .map(|i| handles[i].clone())
            .collect();
        let idx: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let t0 = Instant::now();
        let resign = handles[leader].resign();
        let next = async {
            tokio::time::timeout(Duration::from_secs(30), one_of_leads(&others, mode))
                .await
                .expect("a standby leads within 30 s")
        };
        let ((), n) = tokio::join!(resign, next);
        let gap = t0.elapsed();
        if gap > Duration::from_millis(500) {
            slow += 1;
        }
        gaps.push(gap);
        if trace {
            eprintln!(
                "{}: node-{leader} resigned; node-{} leads after {}",
                driver.name(),
                idx[n],
                common::ms(gap)
            );
        }
        leader = idx[n];
        // A resigned node holds off for 2 × retry (2 s) before it campaigns
        // again, notifications included. With three nodes in rotation, the
        // pause keeps one standby out of its hold-off at every resign.
        tokio::time::sleep(pause).await;
    }
    for e in &electors {
        e.shutdown().await;
    }
    (gaps, slow)
}
