//! Builders for tests of policy evaluation, here and in the crates that use it (the agent's
//! connection registry): a workload, a policy resource, and an index built through the same
//! store the control client fills.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: bad literals are test bugs"
)]

use std::collections::BTreeMap;

use weft_link::control::{TypedStore, Update};
use weft_proto::discovery::v1 as pb;

use crate::policy::{Policy, PolicyIndex};
use crate::workload::{TunnelProtocol, Workload, WorkloadUid};

/// A workload `uid` named after its app, labelled `app=<app>`, on node-1 at `ip`.
pub fn workload(uid: &str, ns: &str, sa: &str, app: &str, ip: &str) -> Workload {
    Workload {
        uid: WorkloadUid(uid.into()),
        name: app.into(),
        namespace: ns.into(),
        service_account: sa.into(),
        node: "node-1".into(),
        ips: vec![ip.parse().unwrap()],
        labels: BTreeMap::from([("app".to_string(), app.to_string())]),
        protocol: TunnelProtocol::Hbone,
        ..Workload::default()
    }
}

/// `p` as the resource `<ns>/<name>`, with its name and namespace set.
pub fn policy_resource(name: &str, ns: &str, p: pb::Policy) -> pb::Resource {
    pb::Resource {
        name: format!("{ns}/{name}"),
        kind: Some(pb::resource::Kind::Policy(pb::Policy {
            name: name.into(),
            namespace: ns.into(),
            ..p
        })),
    }
}

/// The index of `resources` as one snapshot version, with `root` as the root namespace.
pub fn index_in(root: &str, resources: Vec<pb::Resource>) -> PolicyIndex {
    let store = TypedStore::<Policy>::new();
    store
        .apply(Update {
            resource_type: pb::ResourceType::Policy,
            version: 1,
            snapshot: true,
            resources,
            removed: vec![],
        })
        .unwrap();
    PolicyIndex::new(&store.snapshot(), root)
}
