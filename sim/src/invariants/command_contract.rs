//! **Always**: the machine keeps its driver contract (`Command` docs): at
//! most one command of each batch kind (try-lock, renew, validate, ping,
//! preempt, reset) in flight, and never a second command about one role's
//! lock (try-lock, claim, release) while another is in flight. A command
//! stops being in flight when its result is delivered or when the machine's
//! attempt timeout has passed on the node's clock. Checked for the real
//! machine only (mutants fake results the world never sees).

use std::collections::BTreeMap;

use regent_core::LocalInstant;

use crate::report::{Coverage, Violation};
use crate::time::SimTime;

#[derive(Debug, Clone)]
struct Flight {
    kind: &'static str,
    /// `kind`, classified once (comparing codes is cheaper than names).
    code: Kind,
    roles: Vec<usize>,
    expires: LocalInstant,
}

/// A command kind as the contract sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    /// Index in `BATCH` (or `OTHER`), then in `LOCK` for `claim`/`release`.
    id: u8,
    batch: bool,
    lock: bool,
}

const OTHER: u8 = u8::MAX;

impl Kind {
    fn of(kind: &str) -> Self {
        let batch = BATCH.iter().position(|k| *k == kind);
        let lock = LOCK.contains(&kind);
        let id = match (batch, kind) {
            (Some(i), _) => i as u8,
            (None, "claim") => BATCH.len() as u8,
            (None, "release") => BATCH.len() as u8 + 1,
            (None, _) => OTHER,
        };
        Self {
            id,
            batch: batch.is_some(),
            lock,
        }
    }

    fn same(self, other: Self) -> bool {
        self.id != OTHER && self.id == other.id
    }
}

/// Commands in flight, per node.
#[derive(Debug)]
pub struct CommandContract {
    open: Vec<BTreeMap<u64, Flight>>,
}

const BATCH: [&str; 6] = [
    "try_lock",
    "renew",
    "validate",
    "ping",
    "preempt",
    "reset_session",
];
const LOCK: [&str; 3] = ["try_lock", "claim", "release"];

impl CommandContract {
    pub(crate) fn new(nodes: usize) -> Self {
        Self {
            open: vec![BTreeMap::new(); nodes],
        }
    }

    /// Node `node` sends command `id` of `kind` about `roles` at its local
    /// `now`; it is in flight until `expires` unless a result comes first.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_send(
        &mut self,
        at: SimTime,
        node: usize,
        id: u64,
        kind: &'static str,
        roles: Vec<usize>,
        now: LocalInstant,
        expires: LocalInstant,
        cov: &mut Coverage,
    ) -> Option<Violation> {
        let open = self.open.get_mut(node)?;
        open.retain(|_, f| f.expires > now);
        let code = Kind::of(kind);
        let mut found = None;
        if code.batch && open.values().any(|f| code.same(f.code)) {
            found = Some(format!("a second {kind} while one is in flight"));
        }
        if code.lock {
            for f in open.values().filter(|f| f.code.lock) {
                if let Some(r) = roles.iter().find(|r| f.roles.contains(r)) {
                    found = Some(format!(
                        "{kind} about the lock of r{r} while {} about it is in flight",
                        f.kind
                    ));
                }
            }
        }
        if kind == "reset_session" && open.values().any(|f| f.code.lock) {
            found = Some("reset_session while a lock command is in flight".to_owned());
        }
        if (kind == "claim" || kind == "release") && open.values().any(|f| code.same(f.code)) {
            // Per-role kinds: several roles may have one each in flight.
            *cov.entry(if kind == "claim" {
                "claims_in_flight_for_two_roles"
            } else {
                "releases_in_flight_for_two_roles"
            })
            .or_default() += 1;
        }
        open.insert(
            id,
            Flight {
                kind,
                code,
                roles,
                expires,
            },
        );
        found.map(|what| Violation {
            at,
            invariant: "command_contract",
            message: format!("n{node} sent #{id}: {what}"),
        })
    }

    /// The result of `id` reached node `node`.
    pub(crate) fn on_result(&mut self, node: usize, id: u64) {
        if let Some(open) = self.open.get_mut(node) {
            open.remove(&id);
        }
    }

    /// Node `node` runs a fresh machine: nothing of the old one is in flight.
    pub(crate) fn on_restart(&mut self, node: usize) {
        if let Some(open) = self.open.get_mut(node) {
            open.clear();
        }
    }
}
