use std::sync::atomic::Ordering;

use weft_proto::discovery::v1::{self as pb, ClientKind, ResourceType};

use super::*;
use crate::config::{Loaded, ResourceSet};

fn workloads(names: &[&str]) -> Loaded {
    let mut resources = ResourceSet::default();
    for n in names {
        resources.insert(pb::Resource {
            name: n.to_string(),
            kind: Some(pb::resource::Kind::Workload(pb::Workload {
                uid: n.to_string(),
                ..Default::default()
            })),
        });
    }
    Loaded {
        resources,
        ..Default::default()
    }
}

fn hello(types: &[ResourceType]) -> pb::ClientHello {
    pb::ClientHello {
        kind: ClientKind::Agent.into(),
        name: "a".into(),
        node: "n".into(),
        client_version: String::new(),
        resource_types: types.iter().map(|t| (*t).into()).collect(),
    }
}

#[test]
fn publishes_deltas_only_to_interested_subscribers() {
    let store = Store::new(workloads(&["a"]), "test".into(), 4);
    let mut wl = store.subscribe(hello(&[ResourceType::Workload]), "p".into());
    let mut svc = store.subscribe(hello(&[ResourceType::Service]), "p".into());
    assert_eq!(wl.version, 1);
    assert_eq!(wl.resources.count(ResourceType::Workload), 1);

    assert_eq!(
        store.apply(workloads(&["a", "b"])),
        ApplyOutcome::Applied { version: 2 }
    );
    let change = wl.queue.try_recv().unwrap();
    assert_eq!(change.version, 2);
    let delta = &change.deltas[&ResourceType::Workload];
    assert_eq!(delta.upserted.len(), 1);
    assert_eq!(delta.upserted[0].name, "b");
    assert!(svc.queue.try_recv().is_err());

    // The same configuration again publishes nothing.
    assert_eq!(store.apply(workloads(&["a", "b"])), ApplyOutcome::Unchanged);
    assert!(wl.queue.try_recv().is_err());
}

#[test]
fn an_invalid_configuration_changes_nothing() {
    let store = Store::new(workloads(&["a"]), "test".into(), 4);
    let mut sub = store.subscribe(hello(&[ResourceType::Workload]), "p".into());
    let mut bad = workloads(&[]);
    bad.diagnostics.push(crate::config::Diagnostic::error(
        crate::config::Origin::file_doc("x.yaml", 0),
        "spec",
        "broken",
    ));
    assert_eq!(store.apply(bad), ApplyOutcome::Rejected { errors: 1 });
    assert!(sub.queue.try_recv().is_err());
    let (version, resources) = store.current();
    assert_eq!((version, resources.count(ResourceType::Workload)), (1, 1));
    let status = store.status("v");
    assert!(status.last_reload_rejected);
    assert_eq!(
        status.config_problems,
        ["x.yaml: document 0 (0-based): spec: broken"]
    );
}

#[test]
fn a_subscriber_that_falls_behind_is_marked_for_a_snapshot_without_blocking() {
    let store = Store::new(workloads(&["a"]), "test".into(), 1);
    let mut slow = store.subscribe(hello(&[ResourceType::Workload]), "p".into());
    let mut fast = store.subscribe(hello(&[ResourceType::Workload]), "p".into());
    let mut names = vec!["a".to_string()];
    for i in 0..5 {
        names.push(format!("w{i}"));
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        assert!(matches!(
            store.apply(workloads(&refs)),
            ApplyOutcome::Applied { .. }
        ));
        // The fast subscriber drains its queue and sees every version.
        assert_eq!(fast.queue.try_recv().unwrap().version, i + 2);
    }
    // The slow one got the first change, then overflowed: no more queueing, a resync due.
    assert!(slow.resync.needed.load(Ordering::Acquire));
    assert_eq!(slow.queue.try_recv().unwrap().version, 2);
    assert!(slow.queue.try_recv().is_err());
    let (version, resources) = store.resync(&slow.resync);
    assert_eq!(version, 6);
    assert_eq!(resources.count(ResourceType::Workload), 6);
    assert!(!slow.resync.needed.load(Ordering::Acquire));

    // Once resynchronised it receives deltas again.
    names.push("late".into());
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    store.apply(workloads(&refs));
    assert_eq!(slow.queue.try_recv().unwrap().version, 7);
}

#[test]
fn identity_on_node_matches_namespace_service_account_and_node() {
    let mut resources = ResourceSet::default();
    for (name, ns, sa, node) in [
        ("web-0", "shop", "web", "node-a"),
        ("db-0", "shop", "db", "node-b"),
    ] {
        resources.insert(pb::Resource {
            name: format!("{ns}/{name}"),
            kind: Some(pb::resource::Kind::Workload(pb::Workload {
                uid: name.into(),
                name: name.into(),
                namespace: ns.into(),
                service_account: sa.into(),
                node: node.into(),
                ..Default::default()
            })),
        });
    }
    let store = Store::new(
        Loaded {
            resources,
            ..Default::default()
        },
        "test".into(),
        4,
    );
    assert!(store.identity_on_node("node-a", "shop", "web"));
    assert!(store.identity_on_node("node-b", "shop", "db"));
    assert!(!store.identity_on_node("node-a", "shop", "db"));
    assert!(!store.identity_on_node("node-b", "shop", "web"));
    assert!(!store.identity_on_node("node-a", "other", "web"));
    assert!(!store.identity_on_node("", "shop", "web"));
}
