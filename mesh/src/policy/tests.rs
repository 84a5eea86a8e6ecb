use weft_link::{
    control::{TypedStore, Update},
    identity::SpiffeId,
};
use weft_proto::discovery::v1 as pb;

use super::*;
use crate::testing;

fn workload(ns: &str, sa: &str, app: &str) -> Workload {
    testing::workload(&format!("{ns}-{app}"), ns, sa, app, "10.0.0.9")
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn policy(name: &str, ns: &str, p: pb::Policy) -> pb::Resource {
    testing::policy_resource(name, ns, p)
}

fn index(resources: Vec<pb::Resource>) -> PolicyIndex {
    testing::index_in(DEFAULT_ROOT_NAMESPACE, resources)
}

fn allow_principals(principals: &[&str]) -> pb::Policy {
    pb::Policy {
        action: pb::PolicyAction::Allow.into(),
        rules: vec![pb::Rule {
            from: vec![pb::Peer {
                principals: principals.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }],
            to: vec![],
        }],
        ..Default::default()
    }
}

fn src<'a>(identity: Option<&'a SpiffeId>) -> Source<'a> {
    Source {
        identity,
        ip: "10.0.0.1".parse().unwrap(),
        workload: None,
    }
}

#[test]
fn no_policy_allows_and_defaults_to_permissive() {
    let idx = index(vec![]);
    let dst = workload("default", "server", "server");
    assert_eq!(idx.authorize_inbound(&src(None), &dst, 80), Verdict::Allow);
    assert_eq!(idx.peer_auth_mode(&dst, 80), PeerAuthMode::Permissive);
}

#[test]
fn allow_by_principal_admits_only_that_identity() {
    let idx = index(vec![policy(
        "only-client",
        "default",
        allow_principals(&["cluster.local/ns/default/sa/client"]),
    )]);
    let dst = workload("default", "server", "server");
    let client = id("spiffe://cluster.local/ns/default/sa/client");
    let other = id("spiffe://cluster.local/ns/default/sa/other");
    assert_eq!(
        idx.authorize_inbound(&src(Some(&client)), &dst, 80),
        Verdict::Allow
    );
    assert!(matches!(
        idx.authorize_inbound(&src(Some(&other)), &dst, 80),
        Verdict::Deny(_)
    ));
    assert!(matches!(
        idx.authorize_inbound(&src(None), &dst, 80),
        Verdict::Deny(_)
    ));
    // Another namespace's workloads are not governed by it.
    let elsewhere = workload("other", "server", "server");
    assert_eq!(
        idx.authorize_inbound(&src(Some(&other)), &elsewhere, 80),
        Verdict::Allow
    );
}

#[test]
fn deny_wins_and_unknown_l7_facts_deny() {
    let mut deny = allow_principals(&["*"]);
    deny.action = pb::PolicyAction::Deny.into();
    deny.rules[0].to = vec![pb::Operation {
        methods: vec!["POST".into()],
        ..Default::default()
    }];
    let idx = index(vec![
        policy("all", "default", allow_principals(&["*"])),
        policy("no-post", "default", deny),
    ]);
    let dst = workload("default", "server", "server");
    let client = id("spiffe://cluster.local/ns/default/sa/client");
    assert!(matches!(
        idx.authorize_inbound(&src(Some(&client)), &dst, 80),
        Verdict::Deny(r) if r.contains("no-post")
    ));
}

#[test]
fn allow_with_l7_rule_never_matches_at_l4() {
    let mut allow = allow_principals(&["*"]);
    allow.rules[0].to = vec![pb::Operation {
        paths: vec!["/public/*".into()],
        ..Default::default()
    }];
    let idx = index(vec![policy("paths", "default", allow)]);
    let dst = workload("default", "server", "server");
    let client = id("spiffe://cluster.local/ns/default/sa/client");
    assert!(matches!(
        idx.authorize_inbound(&src(Some(&client)), &dst, 80),
        Verdict::Deny(_)
    ));
}

#[test]
fn ports_and_ip_blocks_match() {
    let p = pb::Policy {
        action: pb::PolicyAction::Allow.into(),
        rules: vec![pb::Rule {
            from: vec![pb::Peer {
                ip_blocks: vec![pb::IpBlock {
                    cidr: "10.0.0.0/24".into(),
                    except: vec!["10.0.0.128/25".into()],
                }],
                ..Default::default()
            }],
            to: vec![pb::Operation {
                ports: vec![pb::PortRange {
                    port: 8000,
                    end_port: 8100,
                    protocol: 0,
                }],
                ..Default::default()
            }],
        }],
        ..Default::default()
    };
    let idx = index(vec![policy("net", "default", p)]);
    let dst = workload("default", "server", "server");
    let at = |ip: &str| Source {
        identity: None,
        ip: ip.parse().unwrap(),
        workload: None,
    };
    assert_eq!(
        idx.authorize_inbound(&at("10.0.0.1"), &dst, 8080),
        Verdict::Allow
    );
    assert!(matches!(
        idx.authorize_inbound(&at("10.0.0.1"), &dst, 9000),
        Verdict::Deny(_)
    ));
    assert!(matches!(
        idx.authorize_inbound(&at("10.0.0.200"), &dst, 8080),
        Verdict::Deny(_)
    ));
}

#[test]
fn peer_authentication_most_specific_wins() {
    let strict = |selector: Option<pb::Selector>| pb::Policy {
        selector,
        mode: pb::PeerAuthMode::Strict.into(),
        ..Default::default()
    };
    let permissive_port = pb::Policy {
        selector: Some(pb::Selector {
            match_labels: [("app".to_string(), "server".to_string())].into(),
            ..Default::default()
        }),
        mode: pb::PeerAuthMode::Unspecified.into(),
        port_modes: [(9090, pb::PeerAuthMode::Permissive.into())].into(),
        ..Default::default()
    };
    let idx = index(vec![
        policy("mesh", DEFAULT_ROOT_NAMESPACE, strict(None)),
        policy("server", "default", permissive_port),
    ]);
    let server = workload("default", "server", "server");
    let other = workload("default", "other", "other");
    assert_eq!(idx.peer_auth_mode(&server, 8080), PeerAuthMode::Strict);
    assert_eq!(idx.peer_auth_mode(&server, 9090), PeerAuthMode::Permissive);
    assert_eq!(idx.peer_auth_mode(&other, 9090), PeerAuthMode::Strict);
    // The mesh-wide STRICT has no authorization effect.
    assert_eq!(
        idx.authorize_inbound(&src(None), &other, 80),
        Verdict::Allow
    );
}

#[test]
fn bad_policies_are_rejected_with_the_field() {
    let mut p = allow_principals(&["*"]);
    p.rules[0].from[0].ip_blocks = vec![pb::IpBlock {
        cidr: "10.0.0.0/33".into(),
        except: vec![],
    }];
    let err = TypedStore::<Policy>::new()
        .apply(Update {
            resource_type: pb::ResourceType::Policy,
            version: 1,
            snapshot: true,
            resources: vec![policy("bad", "default", p)],
            removed: vec![],
        })
        .unwrap_err();
    assert_eq!(err.resource_name, "default/bad");
    assert!(
        err.reason.contains("rules[0].from[0].ip_blocks[0].cidr"),
        "{}",
        err.reason
    );
}
