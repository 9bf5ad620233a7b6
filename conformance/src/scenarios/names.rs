//! Scenarios about many roles, names and namespaces.

use std::time::Duration;

use regent_core::{Lease, NameError, Namespace, Role, TakeoverPolicy};

use crate::support::{
    campaign, elector, eventually, fast_config, leaders, namespace, role, throughout, unique,
};
use crate::{Engine, Outcome};

/// 200 roles on one node all lead.
pub async fn many_roles_one_node<E: Engine>(e: &E) -> Outcome {
    let ns = namespace("many");
    let node = e.node("node-a").await;
    e.prepare(&node).await.expect("prepare");
    let el = elector(
        &node,
        &ns,
        "node-a",
        fast_config(TakeoverPolicy::WaitForLease),
    )
    .await;
    let mut handles = Vec::new();
    for i in 0..200 {
        handles.push(
            el.spawn(role(&format!("shard-{i}")))
                .await
                .expect("campaign starts"),
        );
    }
    eventually("all 200 roles lead", || leaders(&handles).len() == 200).await;
    let rows = node.list(Some(&ns)).await.expect("list");
    assert_eq!(rows.len(), 200, "one lease row per role");
    el.shutdown().await;
    Outcome::Passed
}

/// Odd but valid names round-trip through the store; invalid ones are
/// typed errors.
pub async fn names_round_trip<E: Engine>(e: &E) -> Outcome {
    let ns = Namespace::new(format!("ns '\"%;ü {}", unique("n"))).expect("valid namespace");
    let names = [
        "quo'te \"double\"".to_owned(),
        "ünïcødé ✓ 🦀".to_owned(),
        "100%_off".to_owned(),
        "semi;colon; DROP TABLE regent_leases; --".to_owned(),
        "x".repeat(63),
        "€".repeat(21),
    ];
    let node = e.node("node-a").await;
    e.prepare(&node).await.expect("prepare");
    let el = elector(
        &node,
        &ns,
        "node-a",
        fast_config(TakeoverPolicy::WaitForLease),
    )
    .await;
    let mut handles = Vec::new();
    for n in &names {
        handles.push(el.spawn(role(n)).await.expect("campaign starts"));
    }
    eventually("every odd name leads", || {
        leaders(&handles).len() == names.len()
    })
    .await;
    let mut listed: Vec<String> = node
        .list(Some(&ns))
        .await
        .expect("list")
        .into_iter()
        .map(|r| {
            assert_eq!(r.namespace, ns);
            r.role.as_str().to_owned()
        })
        .collect();
    listed.sort();
    let mut want = names.to_vec();
    want.sort();
    assert_eq!(listed, want);
    assert!(matches!(Role::new(""), Err(NameError::Empty { .. })));
    assert!(matches!(
        Role::new("x".repeat(64)),
        Err(NameError::TooLong { .. })
    ));
    assert!(matches!(
        Role::new("€".repeat(22)),
        Err(NameError::TooLong { .. })
    ));
    assert!(matches!(
        Namespace::new("a\0b"),
        Err(NameError::ControlCharacter { .. })
    ));
    el.shutdown().await;
    Outcome::Passed
}

/// The same role in two namespaces has two independent leaders: a release
/// in one leaves the other leading at the same term.
pub async fn namespaces_do_not_interfere<E: Engine>(e: &E) -> Outcome {
    let role = role("scheduler");
    let ns1 = namespace("ns1");
    let ns2 = namespace("ns2");
    let a = e.node("node-a").await;
    e.prepare(&a).await.expect("prepare");
    let b = e.node("node-b").await;
    let cfg = fast_config(TakeoverPolicy::WaitForLease);
    let (ea, ha) = campaign(&a, &ns1, "node-a", &role, cfg.clone()).await;
    let (eb, hb) = campaign(&b, &ns2, "node-b", &role, cfg).await;
    eventually("both namespaces have a leader", || {
        ha.is_leader() && hb.is_leader()
    })
    .await;
    let term = hb.token();
    ha.resign().await;
    throughout(Duration::from_secs(1), || {
        assert!(
            hb.is_leader() && hb.token() == term,
            "a release in one namespace disturbed the other"
        );
    })
    .await;
    ea.shutdown().await;
    eb.shutdown().await;
    Outcome::Passed
}
