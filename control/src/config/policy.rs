//! Authorization documents — Kubernetes NetworkPolicy, Istio-shaped AuthorizationPolicy and
//! PeerAuthentication — mapped onto the one `Policy` resource.

use std::collections::BTreeMap;

use serde::Deserialize;
use weft_proto::discovery::v1 as pb;

use super::{
    document::{IntOrString, LabelSelector, Meta, PortProtocol, WorkloadSelector},
    validate::{self, Checker},
};

// === NetworkPolicy ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Which pods of the namespace the policy isolates; empty selects all.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// `Ingress`, `Egress`; defaults as in Kubernetes: Ingress, plus Egress if `egress`
    /// is given.
    pub policy_types: Option<Vec<PolicyType>>,
    pub ingress: Option<Vec<NetworkPolicyRule>>,
    pub egress: Option<Vec<NetworkPolicyRule>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PolicyType {
    Ingress,
    Egress,
}

/// An ingress rule (`from`) or egress rule (`to`); both have the same shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyRule {
    pub from: Option<Vec<NetworkPolicyPeer>>,
    pub to: Option<Vec<NetworkPolicyPeer>>,
    pub ports: Option<Vec<NetworkPolicyPort>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyPeer {
    pub pod_selector: Option<LabelSelector>,
    pub namespace_selector: Option<LabelSelector>,
    pub ip_block: Option<IpBlockSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpBlockSpec {
    pub cidr: String,
    #[serde(default)]
    pub except: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyPort {
    pub protocol: Option<PortProtocol>,
    pub port: Option<IntOrString>,
    pub end_port: Option<i64>,
}

/// One `Policy` per direction the NetworkPolicy governs, keyed by direction.
pub fn network_policy(
    meta: &Meta,
    spec: &NetworkPolicySpec,
    c: &mut Checker<'_>,
) -> Vec<(&'static str, pb::Policy)> {
    let selector = c.selector("spec.podSelector", &spec.pod_selector);
    let types = spec.policy_types.clone().unwrap_or_else(|| {
        let mut t = vec![PolicyType::Ingress];
        if spec.egress.is_some() {
            t.push(PolicyType::Egress);
        }
        t
    });
    refuse_egress(spec, c);
    let mut out = Vec::new();
    for (ty, field, peer_field, direction, suffix) in [
        (
            PolicyType::Ingress,
            "ingress",
            "from",
            pb::PolicyDirection::Inbound,
            "ingress",
        ),
        (
            PolicyType::Egress,
            "egress",
            "to",
            pb::PolicyDirection::Outbound,
            "egress",
        ),
    ] {
        let rules = if ty == PolicyType::Ingress {
            &spec.ingress
        } else {
            &spec.egress
        };
        if !types.contains(&ty) {
            if rules.is_some() {
                c.error(
                    format!("spec.{field}"),
                    format!("given, but spec.policyTypes does not include {ty:?}"),
                );
            }
            continue;
        }
        let mut converted = Vec::new();
        for (i, rule) in rules.iter().flatten().enumerate() {
            let at = format!("spec.{field}[{i}]");
            let (peers, wrong) = if ty == PolicyType::Ingress {
                (&rule.from, rule.to.is_some().then_some("to"))
            } else {
                (&rule.to, rule.from.is_some().then_some("from"))
            };
            if let Some(wrong) = wrong {
                c.error(
                    format!("{at}.{wrong}"),
                    format!("{field} rules use `{peer_field}`, not `{wrong}`"),
                );
            }
            converted.push(np_rule(&at, peer_field, peers, &rule.ports, c));
        }
        out.push((
            suffix,
            pb::Policy {
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                selector: Some(selector.clone()),
                direction: direction.into(),
                // NetworkPolicy is allow-list only: selected pods are isolated and each rule
                // opens a hole, exactly an ALLOW policy (no rules = deny all).
                action: pb::PolicyAction::Allow.into(),
                rules: converted,
                source: pb::PolicySource::NetworkPolicy.into(),
                mode: pb::PeerAuthMode::Unspecified.into(),
                port_modes: BTreeMap::new(),
            },
        ));
    }
    out
}

/// Agents enforce policy at the destination only. An egress part accepted and not enforced
/// would let through what its author meant to stop, so the document is refused instead
/// (ingress part included, as any document with an error is).
fn refuse_egress(spec: &NetworkPolicySpec, c: &mut Checker<'_>) {
    const NOT_ENFORCED: &str = "egress is not enforced yet: Weft enforces NetworkPolicy \
                                ingress only; remove the egress part (spec.egress and Egress \
                                in spec.policyTypes) or enforce it outside Weft";
    if spec.egress.is_some() {
        c.error("spec.egress", NOT_ENFORCED);
    }
    for (i, ty) in spec.policy_types.iter().flatten().enumerate() {
        if *ty == PolicyType::Egress {
            c.error(format!("spec.policyTypes[{i}]"), NOT_ENFORCED);
        }
    }
}

fn np_rule(
    at: &str,
    peer_field: &str,
    peers: &Option<Vec<NetworkPolicyPeer>>,
    ports: &Option<Vec<NetworkPolicyPort>>,
    c: &mut Checker<'_>,
) -> pb::Rule {
    let mut from = Vec::new();
    for (j, peer) in peers.iter().flatten().enumerate() {
        let pat = format!("{at}.{peer_field}[{j}]");
        let mut p = pb::Peer::default();
        match (&peer.ip_block, &peer.pod_selector, &peer.namespace_selector) {
            (None, None, None) => {
                c.error(&pat, "must set podSelector, namespaceSelector or ipBlock")
            }
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => c.error(
                &pat,
                "ipBlock cannot be combined with podSelector or namespaceSelector",
            ),
            _ => {}
        }
        if let Some(block) = &peer.ip_block {
            p.ip_blocks
                .push(ip_block(&format!("{pat}.ipBlock"), block, c));
        }
        if let Some(sel) = &peer.pod_selector {
            p.workload_selector = Some(c.selector(&format!("{pat}.podSelector"), sel));
        }
        if let Some(sel) = &peer.namespace_selector {
            p.namespace_selector = Some(c.selector(&format!("{pat}.namespaceSelector"), sel));
        }
        from.push(p);
    }
    let mut op = pb::Operation::default();
    for (j, port) in ports.iter().flatten().enumerate() {
        let pat = format!("{at}.ports[{j}]");
        let first = port
            .port
            .as_ref()
            .and_then(|p| c.check(format!("{pat}.port"), validate::numeric_port(p)));
        let end = port
            .end_port
            .and_then(|e| c.check(format!("{pat}.endPort"), validate::port(e)));
        if let (Some(first), Some(end)) = (first, end)
            && end < first
        {
            c.error(
                format!("{pat}.endPort"),
                format!("must not be below port {first}, got {end}"),
            );
        }
        if port.end_port.is_some() && port.port.is_none() {
            c.error(format!("{pat}.endPort"), "needs port");
        }
        op.ports.push(pb::PortRange {
            // An absent port means every port of the protocol.
            port: first.unwrap_or(1),
            end_port: end.unwrap_or(if first.is_none() { 65535 } else { 0 }),
            protocol: validate::protocol(port.protocol).into(),
        });
    }
    pb::Rule {
        from,
        to: if op.ports.is_empty() {
            vec![]
        } else {
            vec![op]
        },
    }
}

fn ip_block(at: &str, block: &IpBlockSpec, c: &mut Checker<'_>) -> pb::IpBlock {
    let net = c.check(format!("{at}.cidr"), validate::cidr(&block.cidr));
    for (k, e) in block.except.iter().enumerate() {
        if let Some(hole) = c.check(format!("{at}.except[{k}]"), validate::cidr(e))
            && let Some(net) = net
            && !net.contains(&hole)
        {
            c.error(
                format!("{at}.except[{k}]"),
                format!("{hole} is not inside {net}"),
            );
        }
    }
    pb::IpBlock {
        cidr: net.map(|n| n.to_string()).unwrap_or_default(),
        except: block.except.clone(),
    }
}

// === AuthorizationPolicy ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub selector: Option<WorkloadSelector>,
    /// `ALLOW` (default) or `DENY`.
    pub action: Option<Action>,
    pub rules: Option<Vec<AuthorizationRule>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub enum Action {
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRule {
    #[serde(default)]
    pub from: Vec<SourceClause>,
    #[serde(default)]
    pub to: Vec<OperationClause>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceClause {
    pub source: Source,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationClause {
    pub operation: OperationSpec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OperationSpec {
    /// Istio writes ports as strings.
    #[serde(default)]
    pub ports: Vec<IntOrString>,
    #[serde(default)]
    pub not_ports: Vec<IntOrString>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
}

pub fn authorization_policy(
    meta: &Meta,
    spec: &AuthorizationPolicySpec,
    c: &mut Checker<'_>,
) -> pb::Policy {
    let selector = workload_selector(spec.selector.as_ref(), c);
    let mut rules = Vec::new();
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        let at = format!("spec.rules[{i}]");
        let mut from = Vec::new();
        for (j, clause) in rule.from.iter().enumerate() {
            let s = &clause.source;
            let pat = format!("{at}.from[{j}].source");
            for (field, list) in [
                ("principals", &s.principals),
                ("notPrincipals", &s.not_principals),
            ] {
                for (k, p) in list.iter().enumerate() {
                    if p.is_empty() || p.starts_with("spiffe://") {
                        c.error(
                            format!("{pat}.{field}[{k}]"),
                            format!(
                                "write principals without the spiffe:// scheme, e.g. \
                                 cluster.local/ns/default/sa/web, got {p:?}"
                            ),
                        );
                    }
                }
            }
            for (field, list) in [
                ("namespaces", &s.namespaces),
                ("notNamespaces", &s.not_namespaces),
            ] {
                for (k, ns) in list.iter().enumerate() {
                    c.check(format!("{pat}.{field}[{k}]"), namespace_pattern(ns));
                }
            }
            let mut blocks = |field: &str, list: &[String]| -> Vec<pb::IpBlock> {
                list.iter()
                    .enumerate()
                    .filter_map(|(k, b)| c.check(format!("{pat}.{field}[{k}]"), validate::cidr(b)))
                    .map(|net| pb::IpBlock {
                        cidr: net.to_string(),
                        except: vec![],
                    })
                    .collect()
            };
            let ip_blocks = blocks("ipBlocks", &s.ip_blocks);
            let not_ip_blocks = blocks("notIpBlocks", &s.not_ip_blocks);
            from.push(pb::Peer {
                principals: s.principals.clone(),
                not_principals: s.not_principals.clone(),
                namespaces: s.namespaces.clone(),
                not_namespaces: s.not_namespaces.clone(),
                ip_blocks,
                not_ip_blocks,
                workload_selector: None,
                namespace_selector: None,
            });
        }
        let mut to = Vec::new();
        for (j, clause) in rule.to.iter().enumerate() {
            let o = &clause.operation;
            let pat = format!("{at}.to[{j}].operation");
            let mut ports = |field: &str, list: &[IntOrString]| -> Vec<pb::PortRange> {
                list.iter()
                    .enumerate()
                    .filter_map(|(k, p)| {
                        c.check(format!("{pat}.{field}[{k}]"), validate::numeric_port(p))
                    })
                    .map(|port| pb::PortRange {
                        port,
                        end_port: 0,
                        protocol: pb::Protocol::Tcp.into(),
                    })
                    .collect()
            };
            let port_ranges = ports("ports", &o.ports);
            let not_ports = ports("notPorts", &o.not_ports);
            for (k, m) in o.methods.iter().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    c.error(
                        format!("{pat}.methods[{k}]"),
                        format!("must be an upper-case HTTP method such as GET, got {m:?}"),
                    );
                }
            }
            to.push(pb::Operation {
                ports: port_ranges,
                not_ports,
                methods: o.methods.clone(),
                paths: o.paths.clone(),
                hosts: o.hosts.clone(),
            });
        }
        rules.push(pb::Rule { from, to });
    }
    pb::Policy {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        selector: Some(selector),
        direction: pb::PolicyDirection::Inbound.into(),
        action: match spec.action.unwrap_or(Action::Allow) {
            Action::Allow => pb::PolicyAction::Allow,
            Action::Deny => pb::PolicyAction::Deny,
        }
        .into(),
        rules,
        source: pb::PolicySource::AuthorizationPolicy.into(),
        mode: pb::PeerAuthMode::Unspecified.into(),
        port_modes: BTreeMap::new(),
    }
}

/// A namespace pattern as Istio takes it, the way principals are matched: `*`, `prefix*`,
/// `*suffix` or a namespace name.
fn namespace_pattern(p: &str) -> Result<&str, String> {
    if p == "*" {
        return Ok(p);
    }
    let fixed = p
        .strip_prefix('*')
        .or_else(|| p.strip_suffix('*'))
        .unwrap_or(p);
    if fixed.contains('*') {
        return Err(format!(
            "a pattern has '*' only at the start or the end (or is \"*\"), got {p:?}"
        ));
    }
    if fixed == p {
        return validate::dns_label(p);
    }
    let part = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    if fixed.is_empty() || fixed.len() > 62 || !fixed.bytes().all(part) {
        return Err(format!(
            "the fixed part of a namespace pattern has lower-case letters, digits and '-', \
             got {p:?}"
        ));
    }
    Ok(p)
}

fn workload_selector(selector: Option<&WorkloadSelector>, c: &mut Checker<'_>) -> pb::Selector {
    let labels = selector.map(|s| s.match_labels.clone()).unwrap_or_default();
    c.labels("spec.selector.matchLabels", &labels);
    pb::Selector {
        match_labels: labels,
        match_expressions: vec![],
    }
}

// === PeerAuthentication ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    pub selector: Option<WorkloadSelector>,
    pub mtls: Option<Mtls>,
    /// Keyed by port number.
    pub port_level_mtls: Option<BTreeMap<String, Mtls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mtls {
    pub mode: Option<MtlsMode>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub enum MtlsMode {
    #[serde(rename = "UNSET")]
    Unset,
    #[serde(rename = "PERMISSIVE")]
    Permissive,
    #[serde(rename = "STRICT")]
    Strict,
    #[serde(rename = "DISABLE")]
    Disable,
}

pub fn peer_authentication(
    meta: &Meta,
    spec: &PeerAuthenticationSpec,
    c: &mut Checker<'_>,
) -> pb::Policy {
    let selector = workload_selector(spec.selector.as_ref(), c);
    let top = mtls_mode(c, "spec.mtls.mode", spec.mtls.as_ref().and_then(|m| m.mode));
    let mut port_modes = BTreeMap::new();
    for (port, m) in spec.port_level_mtls.iter().flatten() {
        let at = format!("spec.portLevelMtls.{port}");
        let m = mtls_mode(c, &format!("{at}.mode"), m.mode);
        match port
            .parse::<i64>()
            .map_err(|_| format!("{port:?} is not a port number"))
            .and_then(validate::port)
        {
            Ok(p) => {
                port_modes.insert(p, i32::from(m));
            }
            Err(e) => c.error(&at, e),
        }
    }
    pb::Policy {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        selector: Some(selector),
        direction: pb::PolicyDirection::Inbound.into(),
        action: pb::PolicyAction::Unspecified.into(),
        rules: vec![],
        source: pb::PolicySource::PeerAuthentication.into(),
        mode: top.into(),
        port_modes,
    }
}

fn mtls_mode(c: &mut Checker<'_>, path: &str, mode: Option<MtlsMode>) -> pb::PeerAuthMode {
    match mode {
        None | Some(MtlsMode::Unset) => pb::PeerAuthMode::Unspecified,
        Some(MtlsMode::Permissive) => pb::PeerAuthMode::Permissive,
        Some(MtlsMode::Strict) => pb::PeerAuthMode::Strict,
        Some(MtlsMode::Disable) => {
            // Ambient meshes carry mesh traffic in HBONE; there is no plaintext-only mode.
            c.error(
                path,
                "DISABLE is not supported; use PERMISSIVE to accept plaintext",
            );
            pb::PeerAuthMode::Unspecified
        }
    }
}
