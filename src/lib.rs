#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub use regent_core::*;

/// The PostgreSQL backend on sqlx (feature `sqlx`).
/// The PostgreSQL engine both PostgreSQL backends share: statements, DDL,
/// key derivation, settings.
#[cfg(any(feature = "sqlx", feature = "tokio-postgres"))]
pub use regent_postgres as postgres;

/// The PostgreSQL backend on sqlx (feature `sqlx`): regent's backend crate
/// `regent-sqlx`, not sqlx itself — that one is re-exported inside it, as
/// `regent::sqlx::sqlx`.
#[cfg(feature = "sqlx")]
pub use regent_sqlx as sqlx;

/// The PostgreSQL backend on tokio-postgres + deadpool-postgres (feature
/// `tokio-postgres`): regent's crate `regent-tokio-postgres`; the drivers
/// themselves are `regent::tokio_postgres::{tokio_postgres,
/// deadpool_postgres}`.
#[cfg(feature = "tokio-postgres")]
pub use regent_tokio_postgres as tokio_postgres;

/// The deterministic simulator (feature `sim`).
#[cfg(feature = "sim")]
pub use regent_sim as sim;
