//! What the PostgreSQL subcommands share: where the lease table is, the
//! connection, the runtime, durations, time stamps and Ctrl-C.

use std::future::Future;
use std::time::{Duration, SystemTime};

use clap::Args;
use regent::sqlx::SqlxBackend;

use crate::error::CliError;

/// How long to wait for the database before giving up with an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the lease table is.
#[derive(Debug, Args)]
pub(crate) struct DbArgs {
    /// PostgreSQL URL, e.g. postgres://user@host:5432/db.
    #[arg(long, env = "DATABASE_URL")]
    pub(crate) database_url: String,
    /// Schema of the lease table.
    #[arg(long, default_value = "public")]
    pub(crate) schema: String,
    /// Name of the lease table.
    #[arg(long, default_value = "regent_leases")]
    pub(crate) table: String,
}

/// Parses a duration such as `500ms`, `2s`, `1.5s` or `1m30s` (humantime's
/// syntax), with an error that shows how to write one.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e}; write a duration such as 500ms, 2s, 1.5s or 1m30s"))
}

/// Runs `fut` on a fresh multi-threaded runtime.
pub(crate) fn block_on<F: Future<Output = Result<u8, CliError>>>(fut: F) -> Result<u8, CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(fut)
}

/// A backend for the lease table of `db`, connected within
/// [`CONNECT_TIMEOUT`].
pub(crate) async fn backend(db: &DbArgs, application_name: &str) -> Result<SqlxBackend, CliError> {
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

/// The wall-clock time of day in UTC, `HH:MM:SS.mmm`, that starts every
/// line `node` and `watch` print.
pub(crate) fn now_utc() -> String {
    time_of_day(SystemTime::now())
}

/// `HH:MM:SS.mmm` (UTC) of `t`: the time part of its RFC 3339 form.
fn time_of_day(t: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_millis(t).to_string();
    // `YYYY-MM-DDTHH:MM:SS.mmmZ`: the time is bytes 11..23.
    stamp.get(11..23).unwrap_or(&stamp).to_owned()
}

/// Waits for Ctrl-C or (on Unix) SIGTERM.
pub(crate) async fn shutdown_signal() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        let e = duration("soon").unwrap_err();
        assert!(e.contains("such as 500ms"), "{e}");
        assert!(duration("1.5").is_err(), "a unit is required");
    }

    #[test]
    fn time_of_day_is_utc_hh_mm_ss_millis() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(86_400_000 + 3_723_045);
        assert_eq!(time_of_day(t), "01:02:03.045");
    }
}
