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

    let job = {
        let leader = leader.clone();
        let me = me.clone();
        tokio::spawn(async move {
            loop {
                let run = leader
                    .run_while_leader(|cancel, token| {
                        let (backend, namespace, role, me) =
                            (backend.clone(), namespace.clone(), role.clone(), me.clone());
                        async move {
                            println!("{me}: leading with token {token}");
                            loop {
                                tokio::select! {
                                    () = cancel.cancelled() => break,
                                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                                }
                                // The write happens only if the lease still
                                // names us at this term.
                                let mut tx =
                                    match backend.fenced(&namespace, &role, &me, token).await {
                                        Ok(tx) => tx,
                                        Err(e) => {
                                            eprintln!("{me}: fenced write refused: {e}");
                                            break;
                                        }
                                    };
                                let value: (i64,) = sqlx::query_as(
                                    "INSERT INTO regent_example_counter (id, value, token)
                                     VALUES (1, 1, $1)
                                     ON CONFLICT (id) DO UPDATE
                                        SET value = regent_example_counter.value + 1, token = $1
                                     RETURNING value",
                                )
                                .bind(token.0 as i64)
                                .fetch_one(&mut *tx)
                                .await
                                .unwrap_or((-1,));
                                if tx.commit().await.is_ok() {
                                    println!("{me}: counter = {} (token {token})", value.0);
                                }
                            }
                            println!("{me}: no longer leader");
                        }
                    })
                    .await;
                if run.is_err() {
                    return; // stopped
                }
            }
        })
    };

    tokio::signal::ctrl_c().await?;
    println!("{me}: shutting down (drain, release, notify)");
    leader.shutdown().await;
    job.abort();
    Ok(())
}
