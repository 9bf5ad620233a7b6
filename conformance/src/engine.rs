//! What an engine provides to the kit: [`Engine`] (required), and the
//! optional capabilities [`Terminate`] and [`Fencing`]. An engine without a
//! capability returns `None` for it, and the scenarios that need it are
//! skipped, saying so, while every other scenario still runs.

use std::fmt;

use async_trait::async_trait;
use regent_core::{Backend, Lock, Namespace, NodeId, Role, Term};

/// One engine under test: how to make nodes and break them.
///
/// The kit never talks to the engine's storage directly; everything it
/// checks goes through the core's backend traits ([`Backend`]) and the
/// driver's handles, plus the capabilities below.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// One node's backend (one session). Clones share the session.
    type Node: Backend + Clone;

    /// The engine's name in the kit's output (`"sqlx"`, `"sim"`, ...).
    fn name(&self) -> &str;

    /// A new node with its own session. `name` is the node id the scenario
    /// campaigns with (`"node-a"`); it is unique within one scenario but not
    /// across scenarios that run at the same time on a shared store.
    async fn node(&self, name: &str) -> Self::Node;

    /// Makes the store ready for `node` (creates tables, ...). Called once
    /// per scenario, before anything campaigns. Must be idempotent.
    async fn prepare(&self, node: &Self::Node) -> Result<(), String>;

    /// The node's process dies: close its session without releasing
    /// anything, the way the engine sees a client vanish. The kit freezes
    /// every later call through the node itself (see
    /// [`Crashable`](crate::Crashable)). The default is [`Lock::reset`](regent_core::Lock::reset).
    async fn crash(&self, node: &Self::Node) {
        node.reset().await;
    }

    /// Whether [`Notify`](regent_core::Notify) really delivers releases to
    /// other nodes. An engine that only polls says `false`, and the
    /// hand-over-by-notification scenario is skipped.
    fn notifies_releases(&self) -> bool {
        true
    }

    /// Whether a crashed node's hold on its roles ends with its session,
    /// before its lease runs out (a session-bound lock), so that a standby
    /// under [`TakeoverPolicy::Immediate`](regent_core::TakeoverPolicy)
    /// leads before the old lease ends. An engine with lease rows only
    /// (PostgreSQL's lease mode) says `false`: a crashed holder cannot be
    /// told apart from a paused one, so even `Immediate` waits the lease
    /// out, and `crash_immediate` checks exactly that instead.
    fn crash_frees_lock(&self) -> bool {
        true
    }

    /// An operator's way to end a node's session from outside, if the
    /// engine has one.
    fn terminate(&self) -> Option<&dyn Terminate<Self::Node>> {
        None
    }

    /// Fenced work, if the engine supports it.
    fn fencing(&self) -> Option<&dyn Fencing<Self::Node>> {
        None
    }

    /// A node for a store that cannot be reached, if the engine can make
    /// one (`Err` when making it already fails, which also passes).
    async fn unreachable_node(&self) -> Option<Result<Self::Node, String>> {
        None
    }
}

/// Ending a node's session from outside (PostgreSQL's
/// `pg_terminate_backend`).
#[async_trait]
pub trait Terminate<N>: Send + Sync {
    /// Ends `node`'s current session; `false` if it had none.
    async fn terminate_session(&self, node: &N) -> bool;
}

/// Why fenced work did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceError {
    /// The token is stale: someone else holds the lease now.
    Stale,
    /// Anything else.
    Other(String),
}

impl fmt::Display for FenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FenceError::Stale => f.write_str("stale fencing token"),
            FenceError::Other(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for FenceError {}

/// One entry of a role's fenced log, as committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencedEntry {
    /// The node that wrote it.
    pub holder: String,
    /// The fencing token it wrote with.
    pub term: Term,
    /// One more than the number of the role's entries the writing work
    /// could see when it wrote: entries committed in order number 1, 2, 3,
    /// ...; a write that did not see an earlier one repeats its number.
    pub seq: u64,
}

/// Leader-only work that only a current holder can commit: the engine's
/// fenced transactions.
#[async_trait]
pub trait Fencing<N>: Send + Sync {
    /// Whether fenced work still in flight holds off a takeover of its role
    /// until it ends (PostgreSQL: the lease row is read `FOR KEY SHARE`, so
    /// a claim finds it busy). Engines whose fenced writes are atomic
    /// checks say `false`; the scenarios about in-flight work are skipped.
    fn work_holds_off_takeover(&self) -> bool;

    /// Opens fenced work on `node` for `holder` at `token`. May already
    /// fail with [`FenceError::Stale`].
    async fn begin(
        &self,
        node: &N,
        namespace: &Namespace,
        role: &Role,
        holder: &NodeId,
        token: Term,
    ) -> Result<Box<dyn FencedWork>, FenceError>;

    /// The role's committed fenced log, in `seq` order.
    async fn log(&self, namespace: &Namespace, role: &Role) -> Result<Vec<FencedEntry>, String>;
}

/// Fenced work in flight, made by [`Fencing::begin`]. Dropping it without
/// [`FencedWork::commit`] abandons it.
#[async_trait]
pub trait FencedWork: Send {
    /// Appends an entry naming this work's holder and token to the role's
    /// fenced log, numbered as [`FencedEntry::seq`] says.
    async fn append(&mut self) -> Result<(), FenceError>;

    /// Commits; [`FenceError::Stale`] if the token went stale and the
    /// engine checks at commit.
    async fn commit(self: Box<Self>) -> Result<(), FenceError>;
}
