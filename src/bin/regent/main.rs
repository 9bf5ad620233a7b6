//! `regent`: see who leads, run a node, run the simulator.
//!
//! ```text
//! regent sim --seed 42 --nodes 5 --roles 3 --minutes 60 --faults all
//! regent migrate --database-url postgres://postgres@127.0.0.1/app
//! regent node    --database-url … --role scheduler --role billing
//! regent status  --database-url … [--namespace default]
//! regent watch   --database-url … [--namespace default]
//! ```
//!
//! Errors are one line on stderr and a non-zero exit code.

#![forbid(unsafe_code)]

#[cfg(feature = "sqlx")]
mod pg;
#[cfg(feature = "sim")]
mod sim;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Leader election on PostgreSQL, and its deterministic simulator.
#[derive(Debug, Parser)]
#[command(name = "regent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the deterministic simulator (needs no database).
    #[cfg(feature = "sim")]
    Sim(sim::SimArgs),
    /// Create the lease table (idempotent).
    #[cfg(feature = "sqlx")]
    Migrate(pg::DbArgs),
    /// Run a node that campaigns for roles and prints leadership changes;
    /// Ctrl-C resigns gracefully.
    #[cfg(feature = "sqlx")]
    Node(pg::NodeArgs),
    /// Print who leads each role.
    #[cfg(feature = "sqlx")]
    Status(pg::StatusArgs),
    /// Stream leadership changes as they happen.
    #[cfg(feature = "sqlx")]
    Watch(pg::StatusArgs),
    /// Print which backends and tools this build of regent includes.
    Features,
}

fn features() -> u8 {
    let on = |yes: bool| {
        if yes {
            "yes"
        } else {
            "no (rebuild with the feature)"
        }
    };
    println!("sqlx backend:           {}", on(cfg!(feature = "sqlx")));
    println!(
        "tokio-postgres backend: {}",
        on(cfg!(feature = "tokio-postgres"))
    );
    println!("simulator:              {}", on(cfg!(feature = "sim")));
    0
}

/// An error for the user: printed as one line.
#[derive(Debug)]
pub(crate) struct CliError(pub(crate) String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

/// The exit status of a run whose checks failed (a simulator violation).
pub(crate) const EXIT_VIOLATION: u8 = 1;
/// The exit status of an error (bad input, unreachable database).
pub(crate) const EXIT_ERROR: u8 = 2;

/// Parses `500ms`, `2s`, `1.5s`, `3m`.
#[cfg_attr(not(feature = "sqlx"), allow(dead_code))] // used by the database subcommands
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; write e.g. 500ms, 2s or 1m"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        other => return Err(format!("unknown unit {other:?} in {s:?}; use ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Writing to a closed pipe (`regent status | head -1`) ends the program
/// quietly, with the conventional SIGPIPE status; any other panic prints one
/// line, not a backtrace.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        eprintln!("error: internal error ({msg}); please report it");
    }));
}

fn main() -> ExitCode {
    install_panic_hook();
    let cli = Cli::parse();
    let result: Result<u8, CliError> = match cli.command {
        #[cfg(feature = "sim")]
        Cmd::Sim(args) => sim::run(&args),
        #[cfg(feature = "sqlx")]
        Cmd::Migrate(args) => pg::block_on(pg::migrate(args)),
        #[cfg(feature = "sqlx")]
        Cmd::Node(args) => pg::block_on(pg::node(args)),
        #[cfg(feature = "sqlx")]
        Cmd::Status(args) => pg::block_on(pg::status(args)),
        #[cfg(feature = "sqlx")]
        Cmd::Watch(args) => pg::block_on(pg::watch(args)),
        Cmd::Features => Ok(features()),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(CliError(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
