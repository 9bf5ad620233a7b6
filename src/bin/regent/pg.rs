//! The PostgreSQL subcommands: `migrate`, `node`, `status`, `watch`.

mod fenced;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use clap::Args;
use regent::sqlx::SqlxBackend;
use regent::{
    Config, DbTimestamp, Elector, Leadership, Lease, LeaseRecord, Namespace, NodeId, Role,
    TakeoverPolicy,
};

use crate::{CliError, parse_duration};

/// How long to wait for the database before giving up with an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the lease table is.
#[derive(Debug, Args)]
pub(crate) struct DbArgs {
    /// PostgreSQL URL, e.g. postgres://user@host:5432/db.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Schema of the lease table.
    #[arg(long, default_value = "public")]
    schema: String,
    /// Name of the lease table.
    #[arg(long, default_value = "regent_leases")]
    table: String,
}

/// Arguments of `regent node`.
#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    #[command(flatten)]
    db: DbArgs,
    /// A role to campaign for (repeat for several).
    #[arg(long = "role", required = true)]
    roles: Vec<String>,
    /// This node's id (default: host name + random suffix).
    #[arg(long)]
    node_id: Option<String>,
    /// Namespace of the roles.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Lease duration.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    lease: Duration,
    /// Renew interval (less than half the lease).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    renew: Duration,
    /// Follower retry interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    retry: Duration,
    /// Lock validation interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    validate: Duration,
    /// Takeover policy: wait-for-lease or immediate.
    #[arg(long, default_value = "wait-for-lease")]
    policy: String,
    /// Terminate zombie holders whose lease expired more than the grace ago
    /// (needs pg_signal_backend).
    #[arg(long)]
    preempt_zombies: bool,
    /// Zombie grace period.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    zombie_grace: Duration,
    /// application_name of the node's session connection.
    #[arg(long, default_value = "regent")]
    application_name: String,
    /// While leading, increment a counter row in this table (created if
    /// missing) inside a fenced transaction every ~100 ms and print each
    /// outcome (`fenced-write ok term N`, `fenced-write refused term N`);
    /// for fault tests and demos.
    #[arg(long, value_parser = fenced::CounterTable::parse)]
    fenced_counter: Option<fenced::CounterTable>,
}

/// Arguments of `regent status` and `regent watch`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Only this namespace (default: all).
    #[arg(long)]
    namespace: Option<String>,
    /// How often `watch` polls.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    interval: Duration,
}

/// Runs `fut` on a fresh multi-threaded runtime.
pub(crate) fn block_on<F: Future<Output = Result<u8, CliError>>>(fut: F) -> Result<u8, CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(fut)
}

async fn backend(db: &DbArgs, application_name: &str) -> Result<SqlxBackend, CliError> {
    let connect = SqlxBackend::builder()
        .schema(&db.schema)
        .table(&db.table)
        .application_name(application_name)
        .connect(&db.database_url);
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(CliError(format!(
            "could not connect to PostgreSQL within {CONNECT_TIMEOUT:?}; check that the server \
             runs and that --database-url is right"
        ))),
    }
}

/// `regent migrate`
pub(crate) async fn migrate(db: DbArgs) -> Result<u8, CliError> {
    let b = backend(&db, "regent-migrate").await?;
    b.migrate().await?;
    println!("lease table {} is ready", b.table());
    Ok(0)
}

/// The wall-clock time of day in UTC, `HH:MM:SS.mmm`, that starts every
/// line `node` prints.
fn now_utc() -> String {
    chrono::Utc::now().format("%H:%M:%S%.3f").to_string()
}

/// `regent node`
pub(crate) async fn node(args: NodeArgs) -> Result<u8, CliError> {
    let policy: TakeoverPolicy = args.policy.parse()?;
    let config = Config::builder()
        .lease_duration(args.lease)
        .renew_interval(args.renew)
        .retry_interval(args.retry)
        .retry_jitter(args.retry / 4)
        .validate_interval(args.validate)
        .attempt_timeout((args.renew * 3 / 4).min(args.lease / 3))
        .takeover_policy(policy)
        .preempt_zombies(args.preempt_zombies)
        .zombie_grace(args.zombie_grace)
        .build()?;
    let namespace = Namespace::new(args.namespace.as_str())?;
    let roles = args
        .roles
        .iter()
        .map(|r| Role::new(r.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    let b = backend(&args.db, &args.application_name).await?;
    if let Some(table) = &args.fenced_counter {
        table.prepare(&b, &roles).await?;
    }
    let mut builder = Elector::builder(b.clone())
        .namespace(namespace.clone())
        .config(config);
    if let Some(id) = &args.node_id {
        builder = builder.node_id(NodeId::new(id.as_str())?);
    }
    let elector = builder.build().await?;
    println!(
        "{} node {} campaigning in namespace {} for: {}",
        now_utc(),
        elector.node_id(),
        namespace,
        args.roles.join(", ")
    );
    let mut watchers = Vec::new();
    for role in roles {
        let handle = elector.spawn(role.clone()).await?;
        if let Some(table) = &args.fenced_counter {
            let writer = fenced::Writer {
                backend: b.clone(),
                table: table.clone(),
                namespace: namespace.clone(),
                role: role.clone(),
                holder: elector.node_id().clone(),
                handle: handle.clone(),
            };
            watchers.push(writer.spawn());
        }
        let mut rx = handle.watch();
        watchers.push(tokio::spawn(async move {
            loop {
                let line = match &*rx.borrow_and_update() {
                    Leadership::Leader { token, .. } => format!("LEADER    term {token}"),
                    Leadership::Follower { leader: Some(l) } => format!("follower  leader {l}"),
                    Leadership::Follower { leader: None } => "follower  no leader seen".to_owned(),
                    Leadership::Stopped => "stopped".to_owned(),
                };
                println!("{} {role:<20} {line}", now_utc());
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }));
    }
    shutdown_signal().await;
    println!("{} resigning and releasing every role", now_utc());
    elector.shutdown().await;
    for w in watchers {
        let _ = w.await;
    }
    println!("{} released; bye", now_utc());
    Ok(0)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

struct Snapshot {
    db_now: DbTimestamp,
    rows: Vec<LeaseRecord>,
    alive: Vec<i64>,
}

async fn snapshot(b: &SqlxBackend, namespace: Option<&Namespace>) -> Result<Snapshot, CliError> {
    let rows = b.list(namespace).await?;
    let (now,): (chrono::DateTime<chrono::Utc>,) = sqlx_now(b).await?;
    let pids: Vec<i32> = rows
        .iter()
        .filter_map(|r| r.session.and_then(|p| i32::try_from(p).ok()))
        .collect();
    let alive = alive_pids(b, &pids).await?;
    Ok(Snapshot {
        db_now: DbTimestamp::from_micros(now.timestamp_micros()),
        rows,
        alive,
    })
}

async fn sqlx_now(b: &SqlxBackend) -> Result<(chrono::DateTime<chrono::Utc>,), CliError> {
    Ok(sqlx::query_as("SELECT now()").fetch_one(b.pool()).await?)
}

async fn alive_pids(b: &SqlxBackend, pids: &[i32]) -> Result<Vec<i64>, CliError> {
    let rows: Vec<(i32,)> = sqlx::query_as("SELECT pid FROM pg_stat_activity WHERE pid = ANY($1)")
        .bind(pids)
        .fetch_all(b.pool())
        .await?;
    Ok(rows.into_iter().map(|(p,)| i64::from(p)).collect())
}

fn remaining(row: &LeaseRecord, now: DbTimestamp) -> String {
    if row.lease_until > now {
        let left = row.lease_until.saturating_since(now);
        format!("{:.1}s", left.as_secs_f64())
    } else {
        let ago = now.saturating_since(row.lease_until);
        format!("expired {:.1}s ago", ago.as_secs_f64())
    }
}

fn backend_state(row: &LeaseRecord, alive: &[i64]) -> String {
    match row.session {
        Some(pid) if alive.contains(&pid) => format!("alive (pid {pid})"),
        Some(pid) => format!("gone (pid {pid})"),
        None => "unknown".to_owned(),
    }
}

/// `regent status`
pub(crate) async fn status(args: StatusArgs) -> Result<u8, CliError> {
    let namespace = args.namespace.as_deref().map(Namespace::new).transpose()?;
    let b = backend(&args.db, "regent-status").await?;
    let snap = snapshot(&b, namespace.as_ref()).await?;
    if snap.rows.is_empty() {
        println!("no leases yet");
        return Ok(0);
    }
    let mut table = vec![[
        "NAMESPACE".to_owned(),
        "ROLE".to_owned(),
        "HOLDER".to_owned(),
        "TERM".to_owned(),
        "LEASE LEFT".to_owned(),
        "HOLDER BACKEND".to_owned(),
    ]];
    for row in &snap.rows {
        table.push([
            row.namespace.to_string(),
            row.role.to_string(),
            row.holder.clone(),
            row.term.to_string(),
            remaining(row, snap.db_now),
            backend_state(row, &snap.alive),
        ]);
    }
    print!("{}", render(&table));
    Ok(0)
}

fn render(table: &[[String; 6]]) -> String {
    let mut widths = [0usize; 6];
    for row in table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in table {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `regent watch`
pub(crate) async fn watch(args: StatusArgs) -> Result<u8, CliError> {
    let namespace = args.namespace.as_deref().map(Namespace::new).transpose()?;
    let b = backend(&args.db, "regent-watch").await?;
    let mut seen: BTreeMap<(String, String), Option<(String, u64)>> = BTreeMap::new();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let snap = snapshot(&b, namespace.as_ref()).await?;
        for row in &snap.rows {
            let key = (row.namespace.to_string(), row.role.to_string());
            let now = if row.expired_at(snap.db_now) {
                None
            } else {
                Some((row.holder.clone(), row.term.0))
            };
            if seen.get(&key) != Some(&now) {
                match &now {
                    Some((holder, term)) => println!(
                        "{} {}/{}  leader {holder}  term {term}",
                        now_utc(),
                        key.0,
                        key.1
                    ),
                    None => println!(
                        "{} {}/{}  no leader (lease expired)",
                        now_utc(),
                        key.0,
                        key.1
                    ),
                }
                seen.insert(key, now);
            }
        }
        tokio::select! {
            () = &mut stop => return Ok(0),
            () = tokio::time::sleep(args.interval) => {}
        }
    }
}
