//! A leader-only job on the sqlx backend: every node runs this program; one
//! of them at a time increments a counter, fenced by its token so a deposed
//! leader's late write is refused.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --example leader_job -- node-a
//! ```
//! Start it in two terminals with different node names, stop the leader
//! with Ctrl-C (graceful handover) or kill it (takeover after the lease).

use std::time::Duration;

use regent::sqlx::SqlxBackend;
use regent::{Config, Elector, Namespace, NodeId, Role};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "node-a".to_owned());

    let backend = SqlxBackend::connect(&url).await?;
    backend.migrate().await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS regent_example_counter (
             id int PRIMARY KEY, value bigint NOT NULL, token bigint NOT NULL)",
    )
    .execute(backend.pool())
    .await?;

    let namespace = Namespace::new("examples")?;
    let role = Role::new("counter")?;
    let me = NodeId::new(name.as_str())?;
    let config = Config::builder()
        .lease_duration(Duration::from_secs(5))
        .renew_interval(Duration::from_secs(1))
        .attempt_timeout(Duration::from_millis(800))
        .build()?;
    let leader = Elector::builder(backend.clone())
        .namespace(namespace.clone())
        .node_id(me.clone())
        .config(config)
        .spawn(role.clone())
        .await?;
    println!("{me}: campaigning for {role}");

    // Run the job every time this node leads, until Ctrl-C.
    let stop = regent::CancellationToken::new();
    let job = {
        let (leader, stop) = (leader.clone(), stop.clone());
        tokio::spawn(async move {
            leader
                .run_each_term(stop, |cancel, fence| {
                    let backend = backend.clone();
                    async move { count_while_leading(&backend, &fence, cancel).await }
                })
                .await;
        })
    };

    tokio::signal::ctrl_c().await?;
    println!("{me}: shutting down (drain, release, notify)");
    stop.cancel();
    leader.shutdown().await;
    let _ = job.await;
    Ok(())
}

/// The leader-only work of one term: increment the counter every 500 ms,
/// each write fenced so that it commits only while `fence` still holds.
async fn count_while_leading(
    backend: &SqlxBackend,
    fence: &regent::Fence,
    cancel: regent::CancellationToken,
) {
    println!("{}: leading ({fence})", fence.holder());
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let mut tx = match backend.fenced(fence).await {
            Ok(tx) => tx,
            Err(e) => {
                eprintln!("{}: fenced write refused: {e}", fence.holder());
                break;
            }
        };
        let value: Result<(i64,), _> = sqlx::query_as(
            "INSERT INTO regent_example_counter (id, value, token)
             VALUES (1, 1, $1)
             ON CONFLICT (id) DO UPDATE
                SET value = regent_example_counter.value + 1, token = $1
             RETURNING value",
        )
        .bind(fence.term())
        .fetch_one(&mut *tx)
        .await;
        match value {
            Ok((value,)) if tx.commit().await.is_ok() => {
                println!(
                    "{}: counter = {value} (term {})",
                    fence.holder(),
                    fence.term()
                );
            }
            _ => eprintln!("{}: write failed; retrying", fence.holder()),
        }
    }
    println!("{}: no longer leader", fence.holder());
}
