//! The conformance kit (`regent-conformance`) on PostgreSQL, plus the
//! scenarios only PostgreSQL has (zombies planted with `pg_advisory_lock`,
//! privileges, one session connection per node, schemas, terminating every
//! connection), which talk to the server as an operator would through a
//! separate admin pool.
//!
//! Each backend's test file implements [`PgFactory`]; [`Pg`] turns a factory
//! into a kit [`Engine`], and [`pg_conformance_tests!`] generates the
//! PostgreSQL-only scenarios.

#![allow(dead_code)]

pub mod scenarios_pg;

use async_trait::async_trait;
use regent::{Backend, Namespace, NodeId, Role, Term};
use regent_conformance::support::unique;
use regent_conformance::{Engine, FenceError, FencedEntry, FencedWork, Fencing, Terminate};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// What a PostgreSQL backend provides to the suite.
#[async_trait]
pub trait PgFactory: Send + Sync + 'static {
    /// One node's backend (one session). Clones share the session.
    type Node: Backend + Clone;

    /// The backend's name in the kit's output.
    fn name(&self) -> &'static str;

    /// The superuser URL of the database under test.
    fn url(&self) -> &str;

    /// A new node with its own session whose connections carry
    /// `application_name = app`, connecting as `user` (trust auth) if given.
    async fn node(&self, app: &str, user: Option<&str>) -> Self::Node;

    /// A node for a URL that may not work (for the unreachable test).
    async fn node_for_url(&self, url: &str) -> Result<Self::Node, String>;

    /// A node whose lease table lives in `schema`.
    async fn node_in_schema(&self, app: &str, schema: &str) -> Self::Node;

    /// Creates the node's lease table.
    async fn migrate(&self, node: &Self::Node) -> Result<(), String>;

    /// `pg_backend_pid()` of the node's lock session, while one is open.
    fn session_pid(&self, node: &Self::Node) -> Option<i32>;

    /// Whether the nodes run in lease mode: no session to terminate, so the
    /// kit skips exactly those scenarios (and notifications only with a
    /// direct listener, see [`PgFactory::notifies`]).
    fn lease_mode(&self) -> bool {
        false
    }

    /// Whether the nodes get release notifications: always in session
    /// mode, in lease mode only with a direct listener URL.
    fn notifies(&self) -> bool {
        !self.lease_mode()
    }

    /// Opens a fenced transaction for `token` whose appends go to
    /// [`LOG_TABLE`] with [`APPEND_SQL`].
    async fn fenced(
        &self,
        node: &Self::Node,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        token: Term,
    ) -> Result<Box<dyn FencedWork>, FenceError>;
}

/// The kit's fenced log on PostgreSQL.
pub const LOG_TABLE: &str = "regent_conformance_log";

/// Appends one entry (`$1` namespace, `$2` role, `$3` holder, `$4` term)
/// numbered one past the entries the statement's snapshot sees: under READ
/// COMMITTED, exactly the entries committed before it ran.
pub const APPEND_SQL: &str =
    "INSERT INTO regent_conformance_log (namespace, role, holder, term, seq)
     SELECT $1, $2, $3, $4, count(*) + 1 FROM regent_conformance_log
     WHERE namespace = $1 AND role = $2";

/// A [`PgFactory`] as a conformance-kit engine.
pub struct Pg<F> {
    /// The backend's factory.
    pub factory: F,
    admin: PgPool,
}

impl<F: PgFactory> Pg<F> {
    /// Wraps `factory`, with an admin pool on its database.
    pub async fn new(factory: F) -> Self {
        let admin = admin(factory.url()).await;
        Self { factory, admin }
    }
}

#[async_trait]
impl<F: PgFactory> Engine for Pg<F> {
    type Node = F::Node;

    fn name(&self) -> &str {
        self.factory.name()
    }

    async fn node(&self, name: &str) -> F::Node {
        self.factory.node(&unique(name), None).await
    }

    async fn prepare(&self, node: &F::Node) -> Result<(), String> {
        self.factory.migrate(node).await?;
        let mut tx = self.admin.begin().await.map_err(|e| e.to_string())?;
        // Concurrent CREATE TABLE IF NOT EXISTS can still collide.
        sqlx::query("SELECT pg_advisory_xact_lock(7291)")
            .execute(&mut *tx)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS regent_conformance_log (
                 id bigserial PRIMARY KEY, namespace text NOT NULL, role text NOT NULL,
                 holder text NOT NULL, term bigint NOT NULL, seq bigint NOT NULL)",
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())
    }

    fn notifies_releases(&self) -> bool {
        // Lease mode has no LISTEN unless a direct listener URL is set.
        self.factory.notifies()
    }

    fn crash_frees_lock(&self) -> bool {
        // Lease mode has no lock: every takeover waits the lease out.
        !self.factory.lease_mode()
    }

    fn terminate(&self) -> Option<&dyn Terminate<F::Node>> {
        // Lease mode keeps no session that an operator could end.
        (!self.factory.lease_mode()).then_some(self as &dyn Terminate<F::Node>)
    }

    fn fencing(&self) -> Option<&dyn Fencing<F::Node>> {
        Some(self)
    }

    async fn unreachable_node(&self) -> Option<Result<F::Node, String>> {
        Some(
            self.factory
                .node_for_url("postgres://postgres@127.0.0.1:1/test")
                .await,
        )
    }
}

#[async_trait]
impl<F: PgFactory> Terminate<F::Node> for Pg<F> {
    async fn terminate_session(&self, node: &F::Node) -> bool {
        let Some(pid) = self.factory.session_pid(node) else {
            return false;
        };
        let (done,): (bool,) = sqlx::query_as("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&self.admin)
            .await
            .expect("pg_terminate_backend");
        done
    }
}

#[async_trait]
impl<F: PgFactory> Fencing<F::Node> for Pg<F> {
    fn work_holds_off_takeover(&self) -> bool {
        true
    }

    async fn begin(
        &self,
        node: &F::Node,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        token: Term,
    ) -> Result<Box<dyn FencedWork>, FenceError> {
        self.factory
            .fenced(node, namespace, role, holder, token)
            .await
    }

    async fn log(&self, namespace: &Namespace, role: &Role) -> Result<Vec<FencedEntry>, String> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT holder, term, seq FROM regent_conformance_log
             WHERE namespace = $1 AND role = $2 ORDER BY seq, id",
        )
        .bind(namespace.as_str())
        .bind(role.as_str())
        .fetch_all(&self.admin)
        .await
        .map_err(|e| e.to_string())?;
        Ok(rows
            .into_iter()
            .map(|(holder, term, seq)| FencedEntry {
                holder,
                term: Term(term as u64),
                seq: seq as u64,
            })
            .collect())
    }
}

/// Where a factory's nodes connect and how: the database directly in
/// session or lease mode, or lease mode through a private PgBouncer in
/// transaction mode (kept running as long as the target lives). The admin
/// pool always connects directly.
pub struct Target {
    /// The URL the nodes use.
    pub node_url: String,
    /// Whether the nodes run in lease mode.
    pub lease: bool,
    /// The PgBouncer in between, if any.
    pub bouncer: Option<crate::support::pgbouncer::PgBouncer>,
    /// Lease mode's direct listener URL, if any.
    pub listener_url: Option<String>,
}

impl Target {
    /// Directly, in session mode (the default).
    pub fn session(url: &str) -> Self {
        Self {
            node_url: url.to_owned(),
            lease: false,
            bouncer: None,
            listener_url: None,
        }
    }

    /// Directly, in lease mode.
    pub fn lease(url: &str) -> Self {
        Self {
            lease: true,
            ..Self::session(url)
        }
    }

    /// Lease mode through a new PgBouncer in `pool_mode=transaction` in
    /// front of the server of `url`.
    pub fn lease_through_pgbouncer(url: &str) -> Self {
        use std::str::FromStr;
        let opts = sqlx::postgres::PgConnectOptions::from_str(url).expect("valid DATABASE_URL");
        let db = opts.get_database().unwrap_or("postgres").to_owned();
        let bouncer = crate::support::pgbouncer::PgBouncer::start(
            opts.get_port(),
            crate::support::pgbouncer::PoolMode::Transaction,
        );
        Self {
            node_url: bouncer.url(&db),
            lease: true,
            bouncer: Some(bouncer),
            listener_url: None,
        }
    }

    /// As [`Target::lease_through_pgbouncer`], with release listeners
    /// connecting to `url` directly (NOTIFY-speed handover).
    pub fn lease_through_pgbouncer_listening_directly(url: &str) -> Self {
        Self {
            listener_url: Some(url.to_owned()),
            ..Self::lease_through_pgbouncer(url)
        }
    }

    /// Whether the nodes get release notifications.
    pub fn notifies(&self) -> bool {
        !self.lease || self.listener_url.is_some()
    }
}

/// An admin pool on the database under test.
pub async fn admin(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {url}: {e}"))
}

/// Generates one `#[tokio::test]` per PostgreSQL-only scenario that also
/// holds in lease mode, for a lease-mode factory expression (the others are
/// about sessions, advisory locks and zombies, which lease mode has none of).
#[macro_export]
macro_rules! pg_lease_tests {
    ($factory:expr) => {
        $crate::pg_conformance_tests!(@each $factory;
            concurrent_migrate,
            migrate_upgrades_an_old_table,
            same_node_id_is_not_the_same_holder,
            resign_hands_over_by_polling,
            abandoned_claim_is_ended,
        );
    };
}

/// Generates one `#[tokio::test]` per PostgreSQL-only scenario for a
/// factory expression.
#[macro_export]
macro_rules! pg_conformance_tests {
    ($factory:expr) => {
        $crate::pg_conformance_tests!(@each $factory;
            zombie_preempted_when_privileged,
            zombie_never_preempted_while_lease_valid,
            zombie_refused_without_privilege,
            many_roles_one_session,
            concurrent_migrate,
            all_connections_dropped_then_recovery,
            migrate_upgrades_an_old_table,
            same_node_id_is_not_the_same_holder,
        );
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let factory = $factory;
                $crate::conformance::scenarios_pg::$name(&factory).await;
            }
        )*
    };
}

/// Every conformance suite a PostgreSQL driver runs, for its factory type
/// `$f` (with constructors `new`, `lease`, `lease_through_pgbouncer` and
/// `lease_through_pgbouncer_listening_directly`): the kit and the
/// PostgreSQL-only scenarios in session mode, and in lease mode directly,
/// through PgBouncer in `pool_mode=transaction`, and through it with a
/// direct release listener. Written once so both drivers run the same list.
#[macro_export]
macro_rules! all_pg_suites {
    ($f:ident) => {
        /// The engine-neutral kit.
        mod kit {
            use super::*;
            regent_conformance::conformance_tests!(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                conformance::Pg::new($f::new().await).await
            );
        }

        /// The PostgreSQL-only scenarios.
        mod pg {
            use super::*;
            pg_conformance_tests!($f::new().await);
        }

        /// The kit in lease mode, directly against PostgreSQL.
        mod kit_lease {
            use super::*;
            regent_conformance::conformance_tests!(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                conformance::Pg::new($f::lease().await).await
            );
        }

        /// The kit in lease mode through PgBouncer, with release listeners
        /// connecting to PostgreSQL directly (`listener_url`): the
        /// notification scenario runs too.
        mod kit_lease_pgbouncer_listening {
            use super::*;
            regent_conformance::conformance_tests!(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                conformance::Pg::new($f::lease_through_pgbouncer_listening_directly().await).await
            );
        }

        /// The PostgreSQL-only scenarios that hold in lease mode, directly ...
        mod pg_lease {
            use super::*;
            pg_lease_tests!($f::lease().await);
        }

        /// ... and through PgBouncer in `pool_mode=transaction`.
        mod pg_lease_pgbouncer {
            use super::*;
            pg_lease_tests!($f::lease_through_pgbouncer().await);
        }

        /// The kit in lease mode through a real PgBouncer in
        /// `pool_mode=transaction`.
        mod kit_lease_pgbouncer {
            use super::*;
            regent_conformance::conformance_tests!(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                conformance::Pg::new($f::lease_through_pgbouncer().await).await
            );
        }
    };
}
