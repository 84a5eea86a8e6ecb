//! One table of the cases where policy must not over-allow (issue 22, item 3), run against
//! [`PolicyIndex::admit`], the one call the agent's data path makes for every inbound
//! connection (HBONE, same-node and plaintext) and when it re-checks live ones.

use weft_proto::discovery::v1 as pb;

use super::*;
use crate::testing::{self, index_in, policy_resource};

fn workload(ns: &str, sa: &str, app: &str, ip: &str) -> Workload {
    testing::workload(&format!("{ns}-{app}"), ns, sa, app, ip)
}

fn labels(app: &str) -> Option<pb::Selector> {
    Some(pb::Selector {
        match_labels: [("app".to_string(), app.to_string())].into(),
        match_expressions: vec![],
    })
}

/// A NetworkPolicy ingress as the control plane compiles it: an ALLOW of the network layer.
fn network_policy(selector: Option<pb::Selector>, rules: Vec<pb::Rule>) -> pb::Policy {
    pb::Policy {
        selector,
        direction: pb::PolicyDirection::Inbound.into(),
        action: pb::PolicyAction::Allow.into(),
        rules,
        source: pb::PolicySource::NetworkPolicy.into(),
        ..Default::default()
    }
}

fn authorization_policy(
    selector: Option<pb::Selector>,
    action: pb::PolicyAction,
    from: Vec<pb::Peer>,
) -> pb::Policy {
    pb::Policy {
        selector,
        direction: pb::PolicyDirection::Inbound.into(),
        action: action.into(),
        rules: vec![pb::Rule { from, to: vec![] }],
        source: pb::PolicySource::AuthorizationPolicy.into(),
        ..Default::default()
    }
}

fn strict(selector: Option<pb::Selector>) -> pb::Policy {
    pb::Policy {
        selector,
        mode: pb::PeerAuthMode::Strict.into(),
        source: pb::PolicySource::PeerAuthentication.into(),
        ..Default::default()
    }
}

fn from_pods(app: &str) -> pb::Peer {
    pb::Peer {
        workload_selector: labels(app),
        ..Default::default()
    }
}

fn tcp_or(protocol: pb::Protocol, port: u32) -> pb::Operation {
    pb::Operation {
        ports: vec![pb::PortRange {
            port,
            end_port: 0,
            protocol: protocol.into(),
        }],
        ..Default::default()
    }
}

/// Who connects, as the data path describes them to the evaluation.
#[derive(Clone, Copy)]
enum Client {
    /// A workload of the mesh over HBONE (or same-node, where its identity is its own).
    Mesh(&'static str),
    /// Plaintext from an address with no workload (outside the mesh).
    Outside(&'static str),
    /// Plaintext from a workload of the mesh (PERMISSIVE 15006, or same-node with no
    /// identity).
    PlainPod(&'static str),
    /// An HBONE stream proving `identity` from the address of workload `pod`.
    Claiming {
        identity: &'static str,
        pod: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Allow,
    Deny,
}

struct Case {
    name: &'static str,
    root: &'static str,
    policies: Vec<pb::Resource>,
    from: Client,
    /// The destination workload (by app name) and port.
    to: (&'static str, u16),
    want: Want,
}

/// The mesh of every case: `client` and `other` in `default`, `client` in `team-a`, the
/// `server` in `default` and `web` in `team-b`.
fn mesh() -> Vec<Workload> {
    vec![
        workload("default", "client", "client", "10.0.0.1"),
        workload("default", "other", "other", "10.0.0.2"),
        workload("team-a", "client", "a-client", "10.0.1.1"),
        workload("default", "server", "server", "10.0.0.9"),
        workload("team-b", "web", "web", "10.0.2.9"),
    ]
}

fn cases() -> Vec<Case> {
    let np_from_client = || {
        policy_resource(
            "np",
            "default",
            network_policy(
                labels("server"),
                vec![pb::Rule {
                    from: vec![from_pods("client")],
                    to: vec![],
                }],
            ),
        )
    };
    let ap_allow_all_mesh = || {
        policy_resource(
            "ap",
            "default",
            authorization_policy(
                labels("server"),
                pb::PolicyAction::Allow,
                vec![pb::Peer {
                    principals: vec!["*".into()],
                    ..Default::default()
                }],
            ),
        )
    };
    let np_ports = |protocol: pb::Protocol, port: u32| {
        policy_resource(
            "np-ports",
            "default",
            network_policy(
                labels("server"),
                vec![pb::Rule {
                    from: vec![],
                    to: vec![tcp_or(protocol, port)],
                }],
            ),
        )
    };
    let np_namespace_selector = |pods: Option<&str>| {
        policy_resource(
            "np-ns",
            "default",
            network_policy(
                labels("server"),
                vec![pb::Rule {
                    from: vec![pb::Peer {
                        namespace_selector: Some(pb::Selector::default()),
                        workload_selector: pods.and_then(labels),
                        ..Default::default()
                    }],
                    to: vec![],
                }],
            ),
        )
    };
    let deny_from_all = |ns: &str, selector: Option<pb::Selector>| {
        policy_resource(
            "deny",
            ns,
            authorization_policy(selector, pb::PolicyAction::Deny, vec![pb::Peer::default()]),
        )
    };
    let ap_namespaces = |action: pb::PolicyAction, namespaces: &[&str]| {
        policy_resource(
            "ap-ns",
            "default",
            authorization_policy(
                labels("server"),
                action,
                vec![pb::Peer {
                    namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                }],
            ),
        )
    };
    vec![
        // --- two layers: NetworkPolicy and AuthorizationPolicy must both allow ---
        Case {
            name: "an AuthorizationPolicy ALLOW does not open what a NetworkPolicy closes",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![np_from_client(), ap_allow_all_mesh()],
            from: Client::Mesh("other"),
            to: ("server", 80),
            want: Want::Deny,
        },
        Case {
            name: "a NetworkPolicy ALLOW does not open what an AuthorizationPolicy closes",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![np_from_client(), ap_allow_all_mesh()],
            from: Client::PlainPod("client"),
            to: ("server", 80),
            want: Want::Deny,
        },
        Case {
            name: "both layers allowing allows",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![np_from_client(), ap_allow_all_mesh()],
            from: Client::Mesh("client"),
            to: ("server", 80),
            want: Want::Allow,
        },
        // --- NetworkPolicy ports and namespaceSelector ---
        Case {
            name: "a rule listing only a UDP port opens no TCP port",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![np_ports(pb::Protocol::Udp, 53)],
            from: Client::Mesh("client"),
            to: ("server", 80),
            want: Want::Deny,
        },
        Case {
            name: "a rule listing only a UDP port does not open that port for TCP",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![np_ports(pb::Protocol::Udp, 53)],
            from: Client::Mesh("client"),
            to: ("server", 53),
            want: Want::Deny,
        },
        Case {
            name: "a rule listing only an SCTP port opens no TCP port",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![np_ports(pb::Protocol::Sctp, 80)],
            from: Client::Mesh("client"),
            to: ("server", 80),
            want: Want::Deny,
        },
        Case {
            name: "a TCP port rule opens its port",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![np_ports(pb::Protocol::Tcp, 80)],
            from: Client::Mesh("client"),
            to: ("server", 80),
            want: Want::Allow,
        },
        Case {
            name: "namespaceSelector {} does not admit a source outside the cluster",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![np_namespace_selector(None)],
            from: Client::Outside("192.0.2.7"),
            to: ("server", 80),
            want: Want::Deny,
        },
        Case {
            name: "namespaceSelector {} admits a pod of another namespace",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![np_namespace_selector(None)],
            from: Client::Mesh("a-client"),
            to: ("server", 80),
            want: Want::Allow,
        },
        Case {
            name: "namespaceSelector {} with a podSelector admits matching pods of every namespace",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![np_namespace_selector(Some("a-client"))],
            from: Client::Mesh("a-client"),
            to: ("server", 80),
            want: Want::Allow,
        },
        Case {
            name: "namespaceSelector {} with a podSelector admits no other pod",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![np_namespace_selector(Some("a-client"))],
            from: Client::Mesh("client"),
            to: ("server", 80),
            want: Want::Deny,
        },
        // --- Istio: the root namespace ---
        Case {
            name: "a DENY with a selector in istio-system applies in every namespace",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![deny_from_all("istio-system", labels("server"))],
            from: Client::Mesh("client"),
            to: ("server", 80),
            want: Want::Deny,
        },
        Case {
            name: "a root-namespace DENY with a selector spares workloads it does not select",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![deny_from_all("istio-system", labels("server"))],
            from: Client::Mesh("client"),
            to: ("web", 80),
            want: Want::Allow,
        },
        Case {
            name: "a DENY without a selector in istio-system applies in every namespace",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![deny_from_all("istio-system", None)],
            from: Client::Mesh("client"),
            to: ("web", 80),
            want: Want::Deny,
        },
        Case {
            name: "a mesh-wide STRICT in istio-system refuses plaintext",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![policy_resource("strict", "istio-system", strict(None))],
            from: Client::Outside("192.0.2.7"),
            to: ("web", 80),
            want: Want::Deny,
        },
        Case {
            name: "the root namespace is configurable",
            root: "mesh-root",
            policies: vec![deny_from_all("mesh-root", labels("server"))],
            from: Client::Mesh("client"),
            to: ("server", 80),
            want: Want::Deny,
        },
        Case {
            name: "istio-system is an ordinary namespace when another is the root",
            root: "mesh-root",
            policies: vec![deny_from_all("istio-system", None)],
            from: Client::Mesh("client"),
            to: ("server", 80),
            want: Want::Allow,
        },
        // --- Istio: namespace patterns ---
        Case {
            name: "namespaces [\"*\"] admits any mesh namespace",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![ap_namespaces(pb::PolicyAction::Allow, &["*"])],
            from: Client::Mesh("a-client"),
            to: ("server", 80),
            want: Want::Allow,
        },
        Case {
            name: "namespaces [\"*\"] does not admit plaintext",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![ap_namespaces(pb::PolicyAction::Allow, &["*"])],
            from: Client::Outside("192.0.2.7"),
            to: ("server", 80),
            want: Want::Deny,
        },
        Case {
            name: "a DENY on namespaces [\"team-*\"] matches by prefix",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![ap_namespaces(pb::PolicyAction::Deny, &["team-*"])],
            from: Client::Mesh("a-client"),
            to: ("server", 80),
            want: Want::Deny,
        },
        Case {
            name: "a DENY on namespaces [\"*-a\"] matches by suffix",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![ap_namespaces(pb::PolicyAction::Deny, &["*-a"])],
            from: Client::Mesh("a-client"),
            to: ("server", 80),
            want: Want::Deny,
        },
        // --- same node: no workload entry means no identity, held to STRICT ---
        Case {
            name: "STRICT refuses a same-node source that has no workload entry",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![policy_resource("strict", "default", strict(None))],
            from: Client::Outside("10.0.0.77"),
            to: ("server", 80),
            want: Want::Deny,
        },
        Case {
            name: "STRICT admits a same-node source with its workload's identity",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![policy_resource("strict", "default", strict(None))],
            from: Client::Mesh("client"),
            to: ("server", 80),
            want: Want::Allow,
        },
        // --- HBONE: the source workload must agree with the proved identity ---
        Case {
            name: "a stream from a pod's address with another identity is refused",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![],
            from: Client::Claiming {
                identity: "spiffe://cluster.local/ns/default/sa/other",
                pod: "client",
            },
            to: ("server", 80),
            want: Want::Deny,
        },
        Case {
            name: "a stream from a pod's address with another identity is not matched as that pod",
            root: DEFAULT_ROOT_NAMESPACE,
            policies: vec![np_from_client()],
            from: Client::Claiming {
                identity: "spiffe://cluster.local/ns/default/sa/other",
                pod: "client",
            },
            to: ("server", 80),
            want: Want::Deny,
        },
    ]
}

#[test]
fn policy_never_over_allows() {
    let workloads = mesh();
    let by_app = |app: &str| {
        workloads
            .iter()
            .find(|w| w.name == app)
            .unwrap_or_else(|| panic!("no workload {app}"))
    };
    let td: weft_link::identity::TrustDomain = "cluster.local".parse().unwrap();
    let mut failures = Vec::new();
    for case in cases() {
        let idx = index_in(case.root, case.policies);
        let (identity, ip, workload) = match case.from {
            Client::Mesh(app) => {
                let w = by_app(app);
                (w.identity(&td), w.ips[0], Some(w))
            }
            Client::Outside(ip) => (None, ip.parse().unwrap(), None),
            Client::PlainPod(app) => {
                let w = by_app(app);
                (None, w.ips[0], Some(w))
            }
            Client::Claiming { identity, pod } => {
                let w = by_app(pod);
                (Some(identity.parse().unwrap()), w.ips[0], Some(w))
            }
        };
        let src = Source {
            identity: identity.as_ref(),
            ip,
            workload,
        };
        let (dst, port) = (by_app(case.to.0), case.to.1);
        let got = match idx.admit(&src, dst, port) {
            Ok(()) => Want::Allow,
            Err(_) => Want::Deny,
        };
        if got != case.want {
            failures.push(format!(
                "{}: want {:?}, got {:?}",
                case.name, case.want, got
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
