//! The generated mesh must be one the control plane accepts, and a round's change must be
//! exactly one Policy delta; the percentiles must be nearest-rank.

use std::time::Duration;

use weft_control::config::load_paths;
use weft_proto::discovery::v1::ResourceType;

use crate::{
    mesh::{self, Shape},
    report::Percentiles,
};

const SMALL: Shape = Shape {
    workloads: 120,
    services: 24,
    namespaces: 6,
    nodes: 5,
};

#[test]
fn generated_mesh_loads_without_problems() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = mesh::generate(dir.path(), SMALL).unwrap();
    let loaded = load_paths(std::slice::from_ref(&mesh.dir));
    assert!(loaded.diagnostics.is_empty(), "{:#?}", loaded.diagnostics);
    assert_eq!(loaded.documents, mesh.documents);
    let r = &loaded.resources;
    assert_eq!(r.count(ResourceType::Workload), 120);
    assert_eq!(r.count(ResourceType::Service), 24);
    // 6 NetworkPolicies (ingress only), 6 AuthorizationPolicies, 1 PeerAuthentication.
    assert_eq!(r.count(ResourceType::Policy), 13);
    assert_eq!(mesh.rewritable(), 6);
    // Every service selects its equal share of the workloads, dual-stack.
    for s in r.of_type(ResourceType::Service) {
        let Some(weft_proto::discovery::v1::resource::Kind::Service(s)) = &s.kind else {
            panic!("not a service");
        };
        assert_eq!(s.workload_uids.len(), 5, "{}", s.name);
        assert_eq!(s.vips.len(), 2);
    }
}

#[test]
fn a_staged_change_is_one_policy_delta() {
    let dir = tempfile::tempdir().unwrap();
    let mut mesh = mesh::generate(dir.path(), SMALL).unwrap();
    let mut before = load_paths(std::slice::from_ref(&mesh.dir)).resources;
    for round in 0..8 {
        let staged = mesh.stage_change(round).unwrap();
        staged.commit().unwrap();
        let after = load_paths(std::slice::from_ref(&mesh.dir)).resources;
        let diff = before.diff(&after);
        assert_eq!(diff.len(), 1, "round {round}: {diff:?}");
        let delta = &diff[&ResourceType::Policy];
        assert!(delta.removed.is_empty());
        let names: Vec<&str> = delta.upserted.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, [staged.resource.as_str()], "round {round}");
        // The next round compares with the configuration as it is now.
        before = after;
    }
}

#[test]
fn percentiles_are_nearest_rank() {
    let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
    let p = Percentiles::of(&samples);
    assert_eq!(
        (p.count, p.min_ms, p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms),
        (100, 1.0, 50.0, 90.0, 99.0, 100.0)
    );
    let one = Percentiles::of(&[Duration::from_millis(7)]);
    assert_eq!((one.min_ms, one.p99_ms, one.max_ms), (7.0, 7.0, 7.0));
    assert_eq!(Percentiles::of(&[]).count, 0);
    let med = Percentiles::median(&[p, one, p]).unwrap();
    assert_eq!(med.p50_ms, 50.0);
}
