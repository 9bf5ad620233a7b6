//! A service as it runs in production: an HTTP server with a health
//! endpoint that reports leadership, a leader-only job, and a graceful
//! shutdown on SIGTERM (Kubernetes, systemd) or Ctrl-C that drains the job,
//! releases the lease (so a standby leads within milliseconds) and stops
//! the HTTP server.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --example service -- 127.0.0.1:8080
//! curl -s 127.0.0.1:8080/healthz     # 200 while the elector is healthy
//! curl -s 127.0.0.1:8080/leader      # who leads, as this node sees it
//! ```
//!
//! Size the termination grace period above [`Elector::shutdown_bound`]
//! (12.5 s with the default config): this program prints it at start.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use regent::sqlx::SqlxBackend;
use regent::{CancellationToken, Elector, Fence, LeaderHandle, Role, RoleStatus};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned())
        .parse()?;

    let backend = SqlxBackend::connect(&url).await?;
    backend.migrate().await?;
    let elector = Elector::builder(backend.clone()).build().await?;
    let leader = elector.spawn(Role::new("billing-run")?).await?;
    println!(
        "{addr}: campaigning; shutdown takes at most {:?}",
        elector.shutdown_bound()
    );

    // The leader-only job, every term this node leads.
    let stop = CancellationToken::new();
    let job = tokio::spawn({
        let (leader, stop) = (leader.clone(), stop.clone());
        async move { leader.run_each_term(stop, bill_while_leading).await }
    });

    // The HTTP server, stopped by the same signal.
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/leader", get(who_leads))
        .with_state(leader.clone());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let http = tokio::spawn({
        let stop = stop.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
    });

    // SIGTERM or Ctrl-C: stop taking work, hand the role over, then stop.
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => println!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => println!("Ctrl-C"),
    }
    stop.cancel();
    // Drains the job (bounded by the config's drain timeout), expires the
    // lease, unlocks and notifies: a standby leads in milliseconds.
    elector.shutdown().await;
    job.await?;
    http.await??;
    Ok(())
}

/// The leader-only work of one term.
async fn bill_while_leading(cancel: CancellationToken, fence: Fence) {
    println!("leading: {fence}");
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                // Real work writes through `backend.fenced(&fence)`; see
                // examples/leader_job.rs.
                println!("billing as {} (term {})", fence.holder(), fence.term());
            }
        }
    }
    println!("stopped leading: {fence}");
}

/// 200 while the elector works (leading, following or at risk), 503 while it
/// cannot campaign (session down, misconfigured) or has stopped: what a
/// load balancer or an orchestrator's probe should see.
async fn healthz(State(leader): State<LeaderHandle>) -> (StatusCode, String) {
    match leader.status() {
        RoleStatus::Unhealthy { reason } => (StatusCode::SERVICE_UNAVAILABLE, reason.to_string()),
        RoleStatus::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "stopped".to_owned()),
        _ => (StatusCode::OK, "ok".to_owned()),
    }
}

/// Who leads, as this node sees it.
async fn who_leads(State(leader): State<LeaderHandle>) -> String {
    match leader.status() {
        RoleStatus::Leading { term, since, .. } => {
            let secs = since.elapsed().map(|d| d.as_secs()).unwrap_or(0);
            format!("this node leads (term {term}, for {secs} s)\n")
        }
        RoleStatus::AtRisk { term, deadline, .. } => format!(
            "this node leads (term {term}) but renewals fail; steps down in {:?}\n",
            deadline.saturating_duration_since(tokio::time::Instant::now())
        ),
        RoleStatus::Following {
            leader: Some(observed),
        } => format!("{} leads (term {})\n", observed.holder, observed.term),
        RoleStatus::Following { leader: None } => "nobody leads right now\n".to_owned(),
        other => format!("{other:?}\n"),
    }
}
