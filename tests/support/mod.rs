//! Test support shared by the integration tests.

#![allow(dead_code)]

pub mod cluster;
#[cfg(feature = "sqlx")]
pub mod fault;
#[cfg(all(feature = "cli", feature = "sqlx"))]
pub mod node;
pub mod pg;
pub mod pgbouncer;
pub mod proxy;
