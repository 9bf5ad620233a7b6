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
//! Errors are one line on stderr and exit status 2; a simulator run that
//! found a violation exits with 1; writing to a closed pipe
//! (`regent status | head -1`) ends quietly with 141.

#![forbid(unsafe_code)]

#[cfg(feature = "sqlx")]
mod db;
mod error;
#[cfg(feature = "sqlx")]
mod node;
mod out;
#[cfg(feature = "sim")]
mod sim;
#[cfg(feature = "sqlx")]
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::{CliError, EXIT_ERROR};
use crate::out::say;

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
    Migrate(db::DbArgs),
    /// Run a node that campaigns for roles and prints leadership changes;
    /// Ctrl-C resigns gracefully.
    #[cfg(feature = "sqlx")]
    Node(node::NodeArgs),
    /// Print who leads each role.
    #[cfg(feature = "sqlx")]
    Status(status::StatusArgs),
    /// Stream leadership changes as they happen.
    #[cfg(feature = "sqlx")]
    Watch(status::StatusArgs),
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
    say!("sqlx backend:           {}", on(cfg!(feature = "sqlx")));
    say!(
        "tokio-postgres backend: {}",
        on(cfg!(feature = "tokio-postgres"))
    );
    say!("simulator:              {}", on(cfg!(feature = "sim")));
    0
}

/// `regent migrate`
#[cfg(feature = "sqlx")]
async fn migrate(args: db::DbArgs) -> Result<u8, CliError> {
    let b = db::backend(&args, "regent-migrate").await?;
    b.migrate().await?;
    say!("lease table {} is ready", b.table());
    Ok(0)
}

/// A panic prints one line, not a backtrace. (Output never panics: see
/// [`out`].)
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
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
        Cmd::Migrate(args) => db::block_on(migrate(args)),
        #[cfg(feature = "sqlx")]
        Cmd::Node(args) => db::block_on(node::run(args, |_| None)),
        #[cfg(feature = "sqlx")]
        Cmd::Status(args) => db::block_on(status::status(args)),
        #[cfg(feature = "sqlx")]
        Cmd::Watch(args) => db::block_on(status::watch(args)),
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
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[cfg(feature = "sqlx")]
    #[test]
    fn durations_are_checked_when_parsing_flags() {
        let node = |lease: &str| {
            Cli::try_parse_from([
                "regent",
                "node",
                "--database-url",
                "x",
                "--role",
                "r",
                "--lease",
                lease,
            ])
        };
        assert!(node("1m30s").is_ok());
        let e = node("soon").unwrap_err().to_string();
        assert!(e.contains("such as 500ms"), "{e}");
        // `--interval` stays an alias of `watch --refresh`.
        let watch =
            Cli::try_parse_from(["regent", "watch", "--database-url", "x", "--interval", "2s"]);
        assert!(watch.is_ok());
    }
}
