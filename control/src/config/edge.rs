//! The edge gateway's configuration across documents: which Secrets a `weft` Gateway's
//! listeners present, which Backends routes send to, which routes attach to which
//! listeners, which `ApiPolicy` governs each route (Gateway API policy attachment: a
//! policy on the route, else one on its Gateway; the oldest wins a conflict), and which
//! Plans consumers and policies name.
//!
//! | document | resource | `Resource.name` |
//! |---|---|---|
//! | `Gateway` (class `weft`), per listener | `Listener` | `namespace/gateway/listener` |
//! | `HTTPRoute` with a `weft` Gateway parent | `ApiRoute` (kind HTTP) | `namespace/name` |
//! | `GRPCRoute` with a `weft` Gateway parent | `ApiRoute` (kind GRPC) | `namespace/grpc/name` |
//! | `HTTPRoute` with a Service parent | `Route` (mesh) | `namespace/name` |
//! | `Consumer`, `Plan` | `Consumer`, `Plan` | `namespace/name` |
//!
//! `Secret`, `Backend` and `ApiPolicy` documents become no resource of their own: they are
//! folded into the listeners and routes that reference them.

use std::{
    borrow::Borrow,
    collections::{BTreeMap, BTreeSet},
};

use weft_proto::discovery::v1::{self as pb, resource::Kind as PbKind};

use super::{
    Diagnostic,
    document::{Body, Kind, Meta, ParsedDocument},
    gateway::{self, GATEWAY_CLASS, GatewayListener},
    route::{self, CompiledRoute},
    validate::Checker,
};

/// The resources one document compiled to.
pub struct Output {
    /// The document's index in the compiled list.
    pub index: usize,
    pub meta: Meta,
    pub resources: Vec<(String, PbKind)>,
}

/// A Secret as a certificate source.
enum SecretState {
    Tls(pb::TlsCertificate),
    OtherType(String),
    Invalid,
}

/// A `weft` Gateway's listeners, for routes to attach to.
struct WeftGateway {
    listeners: Vec<GatewayListener>,
}

/// One policy's claim on one target, for conflict resolution.
#[derive(Clone)]
struct Claim {
    created_at_unix_ms: u64,
    /// `namespace/name` of the policy.
    policy: String,
    /// Index into `documents`, and into the policy's targetRefs.
    doc: usize,
    target: usize,
}

/// Compiles the edge documents. `edge` lists the index and validated metadata of every
/// document of an edge kind (Gateway, Secret, Backend, ApiPolicy, Consumer, Plan, HTTPRoute,
/// GRPCRoute).
pub fn compile<D: Borrow<ParsedDocument>>(
    documents: &[D],
    edge: &[(usize, Meta)],
    diagnostics: &mut Vec<Diagnostic>,
) -> Vec<Output> {
    let doc = |i: usize| -> &ParsedDocument { documents[i].borrow() };
    let of_kind = |kind: Kind| edge.iter().filter(move |(i, _)| doc(*i).kind == kind);
    let mut out: Vec<Output> = Vec::new();
    let mut emit = |index: usize, meta: &Meta, resources: Vec<(String, PbKind)>| {
        out.push(Output {
            index,
            meta: meta.clone(),
            resources,
        })
    };

    // Plans first: consumers and policies name them.
    let plans: BTreeSet<String> = of_kind(Kind::Plan).map(|(_, m)| m.key()).collect();
    for (i, meta) in of_kind(Kind::Plan) {
        let d = doc(*i);
        let Body::Plan(spec) = &d.body else { continue };
        let mut c = Checker::new(&d.origin, d.kind, diagnostics);
        let plan = gateway::plan(meta, spec, &mut c);
        emit(*i, meta, vec![(meta.key(), PbKind::Plan(plan))]);
    }

    // Secrets and Backends: sources for listeners and routes.
    let mut secrets: BTreeMap<String, SecretState> = BTreeMap::new();
    for (i, meta) in of_kind(Kind::Secret) {
        let d = doc(*i);
        let Body::Secret(spec) = &d.body else {
            continue;
        };
        let before = diagnostics.len();
        let mut c = Checker::new(&d.origin, d.kind, diagnostics);
        let state = match gateway::tls_secret(meta, spec, &mut c) {
            Some(cert) if diagnostics.len() == before => SecretState::Tls(cert),
            Some(_) => SecretState::Invalid,
            None if spec.secret_type.as_deref() == Some(gateway::TLS_SECRET_TYPE) => {
                SecretState::Invalid
            }
            None => SecretState::OtherType(spec.secret_type.clone().unwrap_or_default()),
        };
        secrets.insert(meta.key(), state);
    }
    let mut backends: route::Backends = BTreeMap::new();
    for (i, meta) in of_kind(Kind::Backend) {
        let d = doc(*i);
        let Body::Backend(spec) = &d.body else {
            continue;
        };
        let mut c = Checker::new(&d.origin, d.kind, diagnostics);
        if let Some(b) = gateway::backend(spec, &mut c) {
            backends.insert(meta.key(), b);
        }
    }

    // Gateways.
    let mut weft_gateways: BTreeMap<String, WeftGateway> = BTreeMap::new();
    let mut other_gateways: BTreeSet<String> = BTreeSet::new();
    // Across every weft Gateway, since one gateway process binds them all.
    let mut ports: BTreeMap<u32, (i32, String)> = BTreeMap::new();
    let mut hosts: BTreeMap<(u32, String), String> = BTreeMap::new();
    for (i, meta) in of_kind(Kind::Gateway) {
        let d = doc(*i);
        let Body::Gateway(spec) = &d.body else {
            continue;
        };
        let mut c = Checker::new(&d.origin, d.kind, diagnostics);
        if spec.gateway_class_name != GATEWAY_CLASS {
            c.warning(
                "spec.gatewayClassName",
                format!(
                    "class {:?} is not {GATEWAY_CLASS:?}: this Gateway belongs to another \
                     implementation and is skipped",
                    spec.gateway_class_name
                ),
            );
            other_gateways.insert(meta.key());
            continue;
        }
        let mut listeners = gateway::gateway(meta, spec, &mut c);
        let mut resources = Vec::new();
        let mut kept = Vec::new();
        for mut l in listeners.drain(..) {
            let at = format!("spec.listeners[{}]", l.index);
            let what = format!("{}/{}", meta.key(), l.listener.name);
            if l.listener.port != 0 {
                match ports.get(&l.listener.port) {
                    Some((protocol, first)) if *protocol != l.listener.protocol => c.error(
                        format!("{at}.protocol"),
                        format!(
                            "port {} is already {} on listener {first}; listeners sharing a \
                             port must agree on the protocol",
                            l.listener.port,
                            pb::ListenerProtocol::try_from(*protocol)
                                .map(|p| p.as_str_name())
                                .unwrap_or("another protocol")
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        ports.insert(l.listener.port, (l.listener.protocol, what.clone()));
                    }
                }
                let host_key = (l.listener.port, l.listener.hostname.clone());
                if let Some(first) = hosts.get(&host_key) {
                    c.error(
                        format!("{at}.hostname"),
                        format!(
                            "port {} with hostname {:?} is already served by listener {first}",
                            l.listener.port,
                            if l.listener.hostname.is_empty() {
                                "(any)"
                            } else {
                                &l.listener.hostname
                            }
                        ),
                    );
                } else {
                    hosts.insert(host_key, what.clone());
                }
            }
            let mut missing = false;
            for (j, name) in l.certificate_refs.iter().enumerate() {
                let rat = format!("{at}.tls.certificateRefs[{j}].name");
                let key = format!("{}/{name}", meta.namespace);
                match secrets.get(&key) {
                    Some(SecretState::Tls(cert)) => l.listener.certificates.push(cert.clone()),
                    Some(SecretState::OtherType(t)) => c.error(
                        rat,
                        format!(
                            "Secret {key} is of type {t:?}, not {}",
                            gateway::TLS_SECRET_TYPE
                        ),
                    ),
                    Some(SecretState::Invalid) => c.error(
                        rat,
                        format!("Secret {key} is invalid (its own errors say why)"),
                    ),
                    None => {
                        c.warning(
                            rat,
                            format!(
                                "no Secret {key} is defined: listener {:?} is left out until \
                                 it is",
                                l.listener.name
                            ),
                        );
                        missing = true;
                    }
                }
            }
            if !missing {
                resources.push((
                    format!("{}/{}", meta.key(), l.listener.name),
                    PbKind::Listener(l.listener.clone()),
                ));
            }
            kept.push(l);
        }
        weft_gateways.insert(meta.key(), WeftGateway { listeners: kept });
        emit(*i, meta, resources);
    }

    // Consumers.
    let mut key_hashes: BTreeMap<String, String> = BTreeMap::new();
    for (i, meta) in of_kind(Kind::Consumer) {
        let d = doc(*i);
        let Body::Consumer(spec) = &d.body else {
            continue;
        };
        let mut c = Checker::new(&d.origin, d.kind, diagnostics);
        let exists = |p: &str| plans.contains(&format!("{}/{p}", meta.namespace));
        let consumer = gateway::consumer(meta, spec, &exists, &mut c);
        for (k, hash) in consumer.api_key_sha256.iter().enumerate() {
            if let Some(first) = key_hashes.get(hash) {
                c.error(
                    format!("spec.apiKeySha256[{k}]"),
                    format!("the same API key already identifies consumer {first}"),
                );
            } else {
                key_hashes.insert(hash.clone(), meta.key());
            }
        }
        emit(*i, meta, vec![(meta.key(), PbKind::Consumer(consumer))]);
    }

    // Routes, compiled before policies attach to them.
    let mut routes: Vec<(usize, &Meta, &'static str, CompiledRoute)> = Vec::new();
    for (i, meta) in edge {
        let d = doc(*i);
        let mut c = Checker::new(&d.origin, d.kind, diagnostics);
        match &d.body {
            Body::HttpRoute(spec) => routes.push((
                *i,
                meta,
                "HTTPRoute",
                route::http_route(meta, spec, &backends, &mut c),
            )),
            Body::GrpcRoute(spec) => routes.push((
                *i,
                meta,
                "GRPCRoute",
                route::grpc_route(meta, spec, &backends, &mut c),
            )),
            _ => {}
        }
    }
    let route_keys: BTreeSet<(&str, String)> =
        routes.iter().map(|(_, m, k, _)| (*k, m.key())).collect();

    // Policies, and the targets they claim.
    let mut policies: BTreeMap<String, pb::ApiPolicy> = BTreeMap::new();
    let mut policy_created: BTreeMap<String, u64> = BTreeMap::new();
    // Policies with errors. A route they govern is refused too: where a bad object is
    // skipped (the Kubernetes source), the route must not be served without its policy.
    let mut invalid_policies: BTreeSet<String> = BTreeSet::new();
    let mut claims: BTreeMap<(&str, String), Vec<Claim>> = BTreeMap::new();
    for (i, meta) in of_kind(Kind::ApiPolicy) {
        let d = doc(*i);
        let Body::ApiPolicy(spec) = &d.body else {
            continue;
        };
        let errors_before = error_count(diagnostics);
        let mut c = Checker::new(&d.origin, d.kind, diagnostics);
        let exists = |p: &str| plans.contains(&format!("{}/{p}", meta.namespace));
        let policy = gateway::api_policy(meta, spec, &exists, &mut c);
        let valid = error_count(c.diagnostics()) == errors_before;
        for (t, target) in spec.target_refs.iter().enumerate() {
            let key = format!("{}/{}", meta.namespace, target.name);
            let kind: &'static str = match target.kind.as_str() {
                "HTTPRoute" => "HTTPRoute",
                "GRPCRoute" => "GRPCRoute",
                "Gateway" => "Gateway",
                _ => continue,
            };
            let known = if kind == "Gateway" {
                if other_gateways.contains(&key) {
                    c.warning(
                        format!("spec.targetRefs[{t}]"),
                        format!("Gateway {key} is not of class {GATEWAY_CLASS:?}: not attached"),
                    );
                    continue;
                }
                weft_gateways.contains_key(&key)
            } else {
                route_keys.contains(&(kind, key.clone()))
            };
            if !known {
                c.warning(
                    format!("spec.targetRefs[{t}]"),
                    format!("no {kind} {key} is defined: this target is not attached"),
                );
                continue;
            }
            claims.entry((kind, key)).or_default().push(Claim {
                created_at_unix_ms: meta.created_at_unix_ms,
                policy: meta.key(),
                doc: *i,
                target: t,
            });
        }
        policies.insert(meta.key(), policy);
        policy_created.insert(meta.key(), meta.created_at_unix_ms);
        if !valid {
            invalid_policies.insert(meta.key());
        }
    }
    // The oldest policy wins each target, then the first by name; the others are told.
    let mut winners: BTreeMap<(&str, String), String> = BTreeMap::new();
    for (target, mut list) in claims {
        list.sort_by(|a, b| {
            (a.created_at_unix_ms, &a.policy).cmp(&(b.created_at_unix_ms, &b.policy))
        });
        let winner = list[0].policy.clone();
        for loser in &list[1..] {
            let d = doc(loser.doc);
            let mut c = Checker::new(&d.origin, d.kind, diagnostics);
            c.warning(
                format!("spec.targetRefs[{}]", loser.target),
                format!(
                    "{} {} is already targeted by ApiPolicy {winner}, which is older (or \
                     first by name): this policy does not apply to it",
                    target.0, target.1
                ),
            );
        }
        winners.insert(target, winner);
    }

    // Routes into resources.
    for (i, meta, kind, compiled) in routes {
        let d = doc(i);
        let mut c = Checker::new(&d.origin, d.kind, diagnostics);
        let mut resources = Vec::new();
        if compiled.parents.iter().any(|p| p.kind == "Service") {
            resources.push((
                meta.key(),
                PbKind::Route(route::mesh_route(meta, &compiled)),
            ));
        }
        let mut parents = Vec::new();
        let mut gateways = Vec::new();
        for (p_index, p) in gateway_parents(d, kind) {
            let at = format!("spec.parentRefs[{p_index}]");
            let ns = if p.namespace.is_empty() {
                meta.namespace.clone()
            } else {
                p.namespace.clone()
            };
            let key = format!("{ns}/{}", p.name);
            let Some(gw) = weft_gateways.get(&key) else {
                if !other_gateways.contains(&key) {
                    c.warning(
                        format!("{at}.name"),
                        format!("no Gateway {key} is defined: the route is not attached to it"),
                    );
                }
                continue;
            };
            let named: Vec<&GatewayListener> = gw
                .listeners
                .iter()
                .filter(|l| p.section_name.is_empty() || l.listener.name == p.section_name)
                .filter(|l| p.port == 0 || l.listener.port == p.port)
                .collect();
            if named.is_empty() {
                let what = match (p.section_name.is_empty(), p.port) {
                    (false, 0) => format!("no listener {:?}", p.section_name),
                    (true, port) => format!("no listener on port {port}"),
                    (false, port) => {
                        format!("no listener {:?} on port {port}", p.section_name)
                    }
                };
                let field = if p.section_name.is_empty() {
                    "port"
                } else {
                    "sectionName"
                };
                c.warning(
                    format!("{at}.{field}"),
                    format!("Gateway {key} has {what}: the route is not attached to it"),
                );
                continue;
            }
            let allowed = named.iter().any(|l| {
                (l.all_namespaces || ns == meta.namespace) && l.kinds.iter().any(|k| k == kind)
            });
            if !allowed {
                c.warning(
                    at,
                    format!(
                        "the listeners of Gateway {key} do not allow {kind}s from namespace \
                         {:?} (allowedRoutes): the route is not attached to it",
                        meta.namespace
                    ),
                );
                continue;
            }
            let host_ok = named.iter().any(|l| {
                compiled.hostnames.is_empty()
                    || compiled
                        .hostnames
                        .iter()
                        .any(|h| hosts_intersect(h, &l.listener.hostname))
            });
            if !host_ok {
                c.warning(
                    "spec.hostnames",
                    format!(
                        "no hostname of the route matches the hostname of a listener of \
                         Gateway {key}: the route is not attached to it"
                    ),
                );
                continue;
            }
            parents.push(pb::ParentRef {
                namespace: ns,
                ..p.clone()
            });
            gateways.push(key);
        }
        if !parents.is_empty() {
            let policy = winners
                .get(&(kind, meta.key()))
                .or_else(|| {
                    // A Gateway's policy governs the routes with none of their own; with
                    // several Gateways, the oldest policy among theirs.
                    gateways
                        .iter()
                        .filter_map(|g| winners.get(&("Gateway", g.clone())))
                        .min_by_key(|p| {
                            (policy_created.get(*p).copied().unwrap_or(0), (*p).clone())
                        })
                })
                .and_then(|p| policies.get(p))
                .cloned();
            if let Some(p) = &policy
                && invalid_policies.contains(&p.name)
            {
                c.error(
                    "",
                    format!(
                        "its ApiPolicy {} is invalid (its own errors say why): the route is \
                         refused rather than served without it",
                        p.name
                    ),
                );
            }
            let (name, api_kind) = match kind {
                "GRPCRoute" => (
                    format!("{}/grpc/{}", meta.namespace, meta.name),
                    pb::ApiRouteKind::Grpc,
                ),
                _ => (meta.key(), pb::ApiRouteKind::Http),
            };
            resources.push((
                name,
                PbKind::ApiRoute(pb::ApiRoute {
                    name: meta.name.clone(),
                    namespace: meta.namespace.clone(),
                    kind: api_kind.into(),
                    parents,
                    route_hostnames: compiled.hostnames.clone(),
                    rules: compiled.rules.clone(),
                    policy,
                    created_at_unix_ms: meta.created_at_unix_ms,
                }),
            ));
        }
        emit(i, meta, resources);
    }
    out
}

fn error_count(diagnostics: &[Diagnostic]) -> usize {
    diagnostics.iter().filter(|d| d.is_error()).count()
}

/// A route's Gateway parents with their index in `spec.parentRefs`, as compiled wire refs.
fn gateway_parents(d: &ParsedDocument, kind: &str) -> Vec<(usize, pb::ParentRef)> {
    let refs = match (&d.body, kind) {
        (Body::HttpRoute(spec), _) => &spec.parent_refs,
        (Body::GrpcRoute(spec), _) => &spec.parent_refs,
        _ => return Vec::new(),
    };
    refs.iter()
        .enumerate()
        .filter(|(_, p)| p.kind.as_deref().unwrap_or("Gateway") == "Gateway")
        .map(|(i, p)| {
            (
                i,
                pb::ParentRef {
                    kind: "Gateway".to_string(),
                    name: p.name.clone(),
                    namespace: p.namespace.clone().unwrap_or_default(),
                    port: p
                        .port
                        .and_then(|p| u32::try_from(p).ok())
                        .filter(|p| *p <= 65535)
                        .unwrap_or(0),
                    section_name: p.section_name.clone().unwrap_or_default(),
                },
            )
        })
        .collect()
}

/// Whether a request can match both a route host name and a listener host name, as
/// Gateway API attaches routes: empty means any, and `*.example.com` matches one or more
/// labels before `.example.com`. Both are lower case (validated).
fn hosts_intersect(route: &str, listener: &str) -> bool {
    if route.is_empty() || listener.is_empty() {
        return true;
    }
    let covers = |wildcard: &str, host: &str| match wildcard.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => wildcard == host,
    };
    match (route.strip_prefix('*'), listener.strip_prefix('*')) {
        (None, None) => route == listener,
        (None, Some(_)) => covers(listener, route),
        (Some(_), None) => covers(route, listener),
        (Some(r), Some(l)) => r.ends_with(l) || l.ends_with(r),
    }
}

#[cfg(test)]
mod tests {
    use super::hosts_intersect;

    #[test]
    fn host_names_intersect_as_gateway_api_says() {
        for (route, listener, want) in [
            ("", "a.example.com", true),
            ("a.example.com", "", true),
            ("a.example.com", "a.example.com", true),
            ("a.example.com", "b.example.com", false),
            ("a.example.com", "*.example.com", true),
            ("a.b.example.com", "*.example.com", true),
            ("example.com", "*.example.com", false),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.a.example.com", "*.example.com", true),
            ("*.example.com", "*.a.example.com", true),
            ("*.example.org", "*.example.com", false),
        ] {
            assert_eq!(hosts_intersect(route, listener), want, "{route} {listener}");
        }
    }
}
