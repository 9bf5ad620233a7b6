//! Blast radius of long fenced work: 3 in-process nodes (default config:
//! lease 10 s, renew 2 s, attempt timeout 1.5 s) campaign for roles `a` and
//! `b`; whoever leads `a` runs back-to-back fenced transactions on `a`, each
//! held open `FENCED_HOLD_MS` (default 2000 ms, longer than the attempt
//! timeout). For `FENCED_LOAD_SECS` (default 300) an observer reads both
//! lease rows every 200 ms and counts, per role: changes of holder (terms),
//! renewals seen (distinct `renewed_at`), and samples with no running lease.
//! Before the engine's `FOR KEY SHARE` fencing and one cancellation rule,
//! role `b` lost its leader several times a minute under this load.
//!
//! `cargo bench --features tokio-postgres --bench fenced_load`
//! (`FENCED_DRIVERS=sqlx` or `tokio-postgres` for one).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use regent::sqlx::SqlxBackend;
use regent::{Backend, CancellationToken, Config, Elector, Namespace, NodeId, Role};

use common::env;

fn main() {
    common::run_on_runtime(run());
}

#[derive(Default)]
struct Seen {
    terms: HashSet<u64>,
    renewals: HashSet<i64>,
    unled_samples: usize,
    samples: usize,
}

async fn run() {
    let secs: u64 = env("FENCED_LOAD_SECS", 300);
    let hold = Duration::from_millis(env("FENCED_HOLD_MS", 2000));
    let wanted = std::env::var("FENCED_DRIVERS").unwrap_or_default();
    let mut drivers = vec!["sqlx"];
    #[cfg(feature = "tokio-postgres")]
    drivers.push("tokio-postgres");
    drivers.retain(|d| wanted.is_empty() || wanted.split(',').any(|w| w == *d));
    let mut rows = Vec::new();
    for driver in drivers {
        let (a, b, fenced) = load(driver, Duration::from_secs(secs), hold).await;
        for (role, seen) in [("a", &a), ("b", &b)] {
            rows.push(vec![
                driver.to_owned(),
                role.to_owned(),
                format!("{secs} s"),
                seen.terms.len().saturating_sub(1).to_string(),
                seen.renewals.len().to_string(),
                format!("{} / {}", seen.unled_samples, seen.samples),
                if role == "a" {
                    fenced.to_string()
                } else {
                    "—".to_owned()
                },
            ]);
        }
    }
    println!(
        "\n## Long fenced work (held {} ms, back to back, on role a)\n",
        hold.as_millis()
    );
    common::table(
        &[
            "driver",
            "role",
            "run",
            "changes of leader",
            "renewals seen",
            "samples with no running lease",
            "fenced transactions committed",
        ],
        &rows,
    );
}

async fn backend(driver: &str, url: &str, app: &str) -> BoxedBackend {
    match driver {
        #[cfg(feature = "tokio-postgres")]
        "tokio-postgres" => {
            let b = regent::tokio_postgres::TokioPgBackend::builder()
                .application_name(app)
                .max_pool_connections(3)
                .connect(url)
                .await
                .unwrap();
            BoxedBackend::TokioPg(b)
        }
        _ => {
            let b = SqlxBackend::builder()
                .application_name(app)
                .max_pool_connections(3)
                .connect(url)
                .await
                .unwrap();
            BoxedBackend::Sqlx(b)
        }
    }
}

#[derive(Clone)]
enum BoxedBackend {
    Sqlx(SqlxBackend),
    #[cfg(feature = "tokio-postgres")]
    TokioPg(regent::tokio_postgres::TokioPgBackend),
}

impl BoxedBackend {
    async fn fenced_hold(&self, fence: &regent::Fence, hold: Duration) -> bool {
        match self {
            BoxedBackend::Sqlx(b) => match b.fenced(fence).await {
                Ok(tx) => {
                    tokio::time::sleep(hold).await;
                    tx.commit().await.is_ok()
                }
                Err(_) => false,
            },
            #[cfg(feature = "tokio-postgres")]
            BoxedBackend::TokioPg(b) => match b.fenced(fence).await {
                Ok(tx) => {
                    tokio::time::sleep(hold).await;
                    tx.commit().await.is_ok()
                }
                Err(_) => false,
            },
        }
    }

    fn elector(&self) -> regent::ElectorBuilder {
        match self {
            BoxedBackend::Sqlx(b) => Elector::builder(b.clone()),
            #[cfg(feature = "tokio-postgres")]
            BoxedBackend::TokioPg(b) => Elector::builder(b.clone()),
        }
    }

    fn lease(&self) -> std::sync::Arc<dyn Backend> {
        match self {
            BoxedBackend::Sqlx(b) => std::sync::Arc::new(b.clone()),
            #[cfg(feature = "tokio-postgres")]
            BoxedBackend::TokioPg(b) => std::sync::Arc::new(b.clone()),
        }
    }
}

async fn load(driver: &str, run_for: Duration, hold: Duration) -> (Seen, Seen, usize) {
    let url = support::pg::database_url().await;
    let ns = Namespace::new(support::pg::unique("bench_fenced")).unwrap();
    let (ra, rb) = (Role::new("a").unwrap(), Role::new("b").unwrap());
    let stop = CancellationToken::new();
    let mut electors = Vec::new();
    let mut jobs = Vec::new();
    let committed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for i in 0..3 {
        let b = backend(driver, &url, &format!("bench-fenced-{i}")).await;
        if i == 0 {
            if let BoxedBackend::Sqlx(s) = &b {
                s.migrate().await.unwrap();
            }
            #[cfg(feature = "tokio-postgres")]
            if let BoxedBackend::TokioPg(t) = &b {
                t.migrate().await.unwrap();
            }
        }
        let e = b
            .elector()
            .namespace(ns.clone())
            .node_id(NodeId::new(format!("node-{i}")).unwrap())
            .config(Config::default())
            .build()
            .await
            .unwrap();
        let ha = e.spawn(ra.clone()).await.unwrap();
        let hb = e.spawn(rb.clone()).await.unwrap();
        let (stop, committed) = (stop.clone(), committed.clone());
        jobs.push(tokio::spawn(async move {
            let _keep_b = hb;
            ha.run_each_term(stop, move |cancel, fence| {
                let (b, committed) = (b.clone(), committed.clone());
                async move {
                    while !cancel.is_cancelled() {
                        if b.fenced_hold(&fence, hold).await {
                            committed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            })
            .await;
        }));
        electors.push(e);
    }
    let observer = backend(driver, &url, "bench-fenced-observer").await.lease();
    let (mut a, mut b) = (Seen::default(), Seen::default());
    let end = Instant::now() + run_for;
    while Instant::now() < end {
        if let Ok((now, rows)) = observer.read(&ns, &[ra.clone(), rb.clone()]).await {
            for (role, seen) in [(&ra, &mut a), (&rb, &mut b)] {
                seen.samples += 1;
                match rows.iter().find(|r| &r.role == role) {
                    Some(r) => {
                        seen.terms.insert(r.term.0);
                        seen.renewals.insert(r.renewed_at.as_micros());
                        if r.expired_at(now) {
                            seen.unled_samples += 1;
                        }
                    }
                    None => seen.unled_samples += 1,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    for e in &electors {
        e.shutdown().await;
    }
    for j in jobs {
        let _ = j.await;
    }
    (a, b, committed.load(std::sync::atomic::Ordering::Relaxed))
}
