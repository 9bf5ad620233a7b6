//! `regent-fault-node`: test support, not a tool for users. It is
//! `regent node` (the same flags and output, from the CLI's own source
//! files) plus `--fenced-counter TABLE`: while leading, each role writes a
//! counter row in a fenced transaction every ~100 ms and prints the outcome
//! (see [`fenced`]), so the fault tests (`tests/support/node.rs`) can see
//! a leader's side effects — and any stale token the fence let through —
//! from outside the process.

#![forbid(unsafe_code)]

#[path = "../../../src/bin/regent/db.rs"]
mod db;
#[allow(dead_code)] // `EXIT_VIOLATION` is the simulator's
#[path = "../../../src/bin/regent/error.rs"]
mod error;
mod fenced;
#[path = "../../../src/bin/regent/node.rs"]
mod node;
#[allow(dead_code)] // `out::text` is for the simulator's reports
#[path = "../../../src/bin/regent/out.rs"]
mod out;

use std::process::ExitCode;

use clap::Parser;

use crate::error::{CliError, EXIT_ERROR};

/// `regent node` with fenced counter writes, for fault tests.
#[derive(Debug, Parser)]
#[command(name = "regent-fault-node")]
struct Args {
    #[command(flatten)]
    node: node::NodeArgs,
    /// While leading, increment a counter row in this table (created if
    /// missing) inside a fenced transaction every ~100 ms and print each
    /// outcome (`fenced-write ok term N`, `fenced-write refused term N`).
    #[arg(long, value_parser = fenced::CounterTable::parse)]
    fenced_counter: Option<fenced::CounterTable>,
}

async fn run(args: Args) -> Result<u8, CliError> {
    let Some(table) = args.fenced_counter else {
        return node::run(args.node, |_| None).await;
    };
    let roles = args
        .node
        .roles
        .iter()
        .map(|r| regent::Role::new(r.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    let b = db::backend(&args.node.db, "regent-fault-node-prepare").await?;
    table.prepare(&b, &roles).await?;
    b.pool().close().await;
    node::run(args.node, |c| {
        let writer = fenced::Writer {
            backend: c.backend.clone(),
            table: table.clone(),
            namespace: c.namespace.clone(),
            role: c.role.clone(),
            holder: c.node_id.clone(),
            handle: c.handle.clone(),
        };
        Some(writer.spawn())
    })
    .await
}

fn main() -> ExitCode {
    let args = Args::parse();
    match db::block_on(run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(CliError(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
