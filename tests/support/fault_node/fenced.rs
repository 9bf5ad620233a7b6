//! `regent-fault-node --fenced-counter TABLE`: while leading, increment a
//! counter row inside a fenced transaction every ~100 ms, so fault tests
//! can watch a leader's side effects from outside the process.
//!
//! The counter table has one row per role:
//! `(role text PRIMARY KEY, value int8, last_token int8)`. Each write runs
//! `UPDATE … SET value = value + 1, last_token = $token WHERE role = $role
//! AND last_token <= $token` inside [`SqlxBackend::fenced`], and prints one
//! of:
//!
//! ```text
//! HH:MM:SS.mmm scheduler            fenced-write ok term 4
//! HH:MM:SS.mmm scheduler            fenced-write refused term 3      (stale token: the fence said no)
//! HH:MM:SS.mmm scheduler            fenced-write stale-at-counter term 3   (the fence let a stale token through!)
//! HH:MM:SS.mmm scheduler            fenced-write error term 3: …     (database error; nothing written)
//! ```
//!
//! `stale-at-counter` would mean a safety violation: the lease row
//! accepted a token older than one the counter already saw.

use std::time::Duration;

use regent::sqlx::{FencedError, SqlxBackend};
use regent::{LeaderHandle, Namespace, NodeId, Role, Term};
use tokio::task::JoinHandle;

use crate::db::now_utc;
use crate::error::CliError;
use crate::out::say;

/// How often a leader writes.
const PERIOD: Duration = Duration::from_millis(100);

/// A validated counter table name: a plain lower-case SQL identifier,
/// optionally schema-qualified (`schema.table`).
#[derive(Debug, Clone)]
pub(crate) struct CounterTable(String);

impl CounterTable {
    /// Checks `name`: one or two dot-separated identifiers of `[a-z0-9_]`,
    /// not starting with a digit, at most 63 bytes each.
    pub(crate) fn parse(name: &str) -> Result<Self, String> {
        let ok_ident = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && !s.starts_with(|c: char| c.is_ascii_digit())
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() <= 2 && parts.iter().all(|p| ok_ident(p)) {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!(
                "{name:?} is not a plain table name; use lower-case letters, digits and _ \
                 (optionally schema.table)"
            ))
        }
    }

    /// Creates the table if missing and makes sure `roles` have a row.
    pub(crate) async fn prepare(&self, b: &SqlxBackend, roles: &[Role]) -> Result<(), CliError> {
        let t = &self.0;
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {t} (role text PRIMARY KEY, \
             value int8 NOT NULL DEFAULT 0, last_token int8 NOT NULL DEFAULT 0)"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(create))
            .execute(b.pool())
            .await
            .map_err(|e| CliError(format!("cannot create fenced counter table {t}: {e}")))?;
        let insert = format!("INSERT INTO {t} (role) VALUES ($1) ON CONFLICT DO NOTHING");
        for role in roles {
            sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                .bind(role.as_str())
                .execute(b.pool())
                .await
                .map_err(|e| CliError(format!("cannot add role to counter table {t}: {e}")))?;
        }
        Ok(())
    }
}

/// What one fenced write came to.
enum Outcome {
    Ok,
    Refused,
    StaleAtCounter,
    Error(String),
}

/// Everything a writer needs to know about its role.
pub(crate) struct Writer {
    /// The node's backend.
    pub(crate) backend: SqlxBackend,
    /// The counter table.
    pub(crate) table: CounterTable,
    /// The roles' namespace.
    pub(crate) namespace: Namespace,
    /// The role written for.
    pub(crate) role: Role,
    /// This node (the lease holder the fence checks).
    pub(crate) holder: NodeId,
    /// The role's handle, asked for the token before every write.
    pub(crate) handle: LeaderHandle,
}

impl Writer {
    /// Runs the write loop until the role stops.
    pub(crate) fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if self.handle.leadership() == regent::Leadership::Stopped {
                    return;
                }
                let Some(token) = self.handle.token() else {
                    continue;
                };
                let line = match self.write(token).await {
                    Outcome::Ok => format!("fenced-write ok term {token}"),
                    Outcome::Refused => format!("fenced-write refused term {token}"),
                    Outcome::StaleAtCounter => {
                        format!("fenced-write stale-at-counter term {token}")
                    }
                    Outcome::Error(e) => format!("fenced-write error term {token}: {e}"),
                };
                say!("{} {:<20} {line}", now_utc(), self.role);
            }
        })
    }

    async fn write(&self, token: Term) -> Outcome {
        let mut tx = match self
            .backend
            .fenced(&regent::Fence::new(
                self.namespace.clone(),
                self.role.clone(),
                self.holder.clone(),
                token,
            ))
            .await
        {
            Ok(tx) => tx,
            Err(FencedError::Stale { .. }) => return Outcome::Refused,
            Err(e) => return Outcome::Error(e.to_string()),
        };
        let update = format!(
            "UPDATE {} SET value = value + 1, last_token = $1 \
             WHERE role = $2 AND last_token <= $1",
            self.table.0
        );
        let token = i64::try_from(token.0).unwrap_or(i64::MAX);
        let result = sqlx::query(sqlx::AssertSqlSafe(update))
            .bind(token)
            .bind(self.role.as_str())
            .execute(&mut *tx)
            .await;
        match result {
            Ok(done) if done.rows_affected() == 1 => match tx.commit().await {
                Ok(()) => Outcome::Ok,
                Err(e) => Outcome::Error(e.to_string()),
            },
            // Dropping `tx` rolls it back.
            Ok(_) => Outcome::StaleAtCounter,
            Err(e) => Outcome::Error(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CounterTable;

    #[test]
    fn counter_table_names_are_checked() {
        assert!(CounterTable::parse("counter").is_ok());
        assert!(CounterTable::parse("app.counter_2").is_ok());
        assert!(CounterTable::parse("").is_err());
        assert!(CounterTable::parse("a;drop").is_err());
        assert!(CounterTable::parse("A").is_err());
        assert!(CounterTable::parse("1abc").is_err());
        assert!(CounterTable::parse("a.b.c").is_err());
    }
}
