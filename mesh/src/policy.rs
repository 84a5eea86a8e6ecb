//! Inbound authorization and peer authentication at L4, as ztunnel evaluates Istio's
//! `AuthorizationPolicy` and `PeerAuthentication` (and Weft maps Kubernetes `NetworkPolicy`
//! onto the same shape).
//!
//! Policies arrive from the control plane as `Policy` resources and are converted here (and
//! nowhere else). Evaluation, for one connection to one workload ([`PolicyIndex::admit`], the
//! one call every inbound path makes, and makes again when policy changes):
//!
//! - **source**: a peer that proved an identity from the address of a workload with another
//!   identity is refused, so it is never matched as that workload;
//! - **peer authentication**: the most specific `PeerAuthentication` wins (workload selector,
//!   then namespace-wide, then mesh-wide in the root namespace); port-level modes override the
//!   workload's; the default is PERMISSIVE. STRICT refuses a source with no proved identity;
//! - **authorization**, in two layers that must both allow, Kubernetes `NetworkPolicy` and
//!   Istio `AuthorizationPolicy`, as a cluster running both enforces both (the CNI and the
//!   mesh): in each layer, if any DENY policy matches, deny; else if ALLOW policies apply to
//!   the workload and none matches, deny; else allow. A rule that needs facts an L4 proxy does
//!   not have (HTTP methods, paths, hosts; namespace labels) never matches in an ALLOW policy
//!   and always matches in a DENY policy, so a policy Weft cannot fully check errs towards
//!   denying.
//!
//! A policy in Istio's root namespace (`istio-system` unless configured otherwise) applies in
//! every namespace: without a selector to every workload, with one to the matching workloads
//! of every namespace, as istiod scopes it.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use weft_proto::discovery::v1 as pb;

use crate::workload::Workload;

/// Istio's default root namespace (meshConfig `rootNamespace`): a policy there applies in
/// every namespace. The same default means documents written for Istio mean the same here.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("resource is not a Policy")]
    WrongKind,
    #[error("field {field}: {problem}")]
    Field { field: String, problem: String },
}

fn field_err(field: impl Into<String>, problem: impl Into<String>) -> PolicyError {
    PolicyError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

// === domain types ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// Which of the two authorization layers a policy belongs to; a connection must pass both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// Kubernetes NetworkPolicy.
    Network,
    /// Istio AuthorizationPolicy (and PeerAuthentication, which authorizes nothing).
    Authorization,
}

impl Layer {
    pub const ALL: [Layer; 2] = [Layer::Network, Layer::Authorization];

    fn name(self) -> &'static str {
        match self {
            Layer::Network => "NetworkPolicy",
            Layer::Authorization => "AuthorizationPolicy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    /// Peer-authentication-only policies authorize nothing.
    None,
}

/// Whether plaintext (traffic not carried by HBONE) may reach a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PeerAuthMode {
    Permissive,
    Strict,
}

#[derive(Debug, Clone, Default)]
pub struct Selector {
    labels: BTreeMap<String, String>,
    expressions: Vec<LabelExpression>,
}

#[derive(Debug, Clone)]
struct LabelExpression {
    key: String,
    op: LabelOp,
    values: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
enum LabelOp {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Selector {
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.expressions.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.op {
                    LabelOp::In => value.is_some_and(|v| e.values.contains(v)),
                    LabelOp::NotIn => !value.is_some_and(|v| e.values.contains(v)),
                    LabelOp::Exists => value.is_some(),
                    LabelOp::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// An IP block with holes.
#[derive(Debug, Clone)]
struct IpBlock {
    cidr: IpNet,
    except: Vec<IpNet>,
}

impl IpBlock {
    fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// A principal pattern without the `spiffe://` scheme; `*` at either end is a wildcard.
#[derive(Debug, Clone)]
struct Pattern(String);

impl Pattern {
    fn matches(&self, value: &str) -> bool {
        let p = self.0.as_str();
        if p == "*" {
            return true;
        }
        if let Some(suffix) = p.strip_prefix('*') {
            return value.ends_with(suffix);
        }
        if let Some(prefix) = p.strip_suffix('*') {
            return value.starts_with(prefix);
        }
        value == p
    }
}

#[derive(Debug, Clone, Default)]
struct Peer {
    principals: Vec<Pattern>,
    not_principals: Vec<Pattern>,
    /// Patterns as for principals: `*`, `prefix-*`, `*-suffix` or exact.
    namespaces: Vec<Pattern>,
    not_namespaces: Vec<Pattern>,
    ip_blocks: Vec<IpBlock>,
    not_ip_blocks: Vec<IpBlock>,
    workload_selector: Option<Selector>,
    namespace_selector: NamespaceSelector,
}

/// A NetworkPolicy peer's `namespaceSelector`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum NamespaceSelector {
    /// Absent: a `podSelector` picks pods of the policy's own namespace.
    #[default]
    Absent,
    /// `{}`: every namespace of the cluster, so the source must be a workload of the mesh.
    Every,
    /// By labels, which the agent does not know: an unknown fact.
    ByLabels,
}

#[derive(Debug, Clone, Copy)]
struct PortRange {
    first: u16,
    last: u16,
    /// Only TCP ranges can match a connection; a UDP or SCTP range is kept so that a rule
    /// listing only those opens no port at all (dropping them would leave a rule with no
    /// ports, which matches every port).
    tcp: bool,
}

#[derive(Debug, Clone, Default)]
struct Operation {
    ports: Vec<PortRange>,
    not_ports: Vec<PortRange>,
    /// Methods, paths or hosts: HTTP facts an L4 proxy does not see.
    needs_l7: bool,
}

#[derive(Debug, Clone, Default)]
struct Rule {
    from: Vec<Peer>,
    to: Vec<Operation>,
}

/// One converted `Policy` resource.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    pub layer: Layer,
    selector: Selector,
    pub direction: Direction,
    pub action: Action,
    rules: Vec<Rule>,
    mode: Option<PeerAuthMode>,
    port_modes: BTreeMap<u16, PeerAuthMode>,
}

// === conversion ===

fn selector(s: Option<pb::Selector>, at: &str) -> Result<Selector, PolicyError> {
    let Some(s) = s else {
        return Ok(Selector::default());
    };
    let mut expressions = Vec::with_capacity(s.match_expressions.len());
    for (i, e) in s.match_expressions.into_iter().enumerate() {
        let op = match pb::LabelOperator::try_from(e.operator) {
            Ok(pb::LabelOperator::In) => LabelOp::In,
            Ok(pb::LabelOperator::NotIn) => LabelOp::NotIn,
            Ok(pb::LabelOperator::Exists) => LabelOp::Exists,
            Ok(pb::LabelOperator::DoesNotExist) => LabelOp::DoesNotExist,
            _ => {
                return Err(field_err(
                    format!("{at}.match_expressions[{i}].operator"),
                    format!("unknown operator {}", e.operator),
                ));
            }
        };
        expressions.push(LabelExpression {
            key: e.key,
            op,
            values: e.values,
        });
    }
    Ok(Selector {
        labels: s.match_labels.into_iter().collect(),
        expressions,
    })
}

fn ip_blocks(blocks: Vec<pb::IpBlock>, at: &str) -> Result<Vec<IpBlock>, PolicyError> {
    let net = |s: &str, field: String| {
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map_err(|e| field_err(field, format!("{s:?}: {e}")))
    };
    blocks
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let at = format!("{at}[{i}]");
            Ok(IpBlock {
                cidr: net(&b.cidr, format!("{at}.cidr"))?,
                except: b
                    .except
                    .iter()
                    .enumerate()
                    .map(|(j, e)| net(e, format!("{at}.except[{j}]")))
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect()
}

fn ports(ranges: Vec<pb::PortRange>, at: &str) -> Result<Vec<PortRange>, PolicyError> {
    ranges
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let tcp = match pb::Protocol::try_from(r.protocol) {
                Ok(pb::Protocol::Unspecified | pb::Protocol::Tcp) => true,
                Ok(pb::Protocol::Udp | pb::Protocol::Sctp) => false,
                Err(_) => {
                    return Err(field_err(
                        format!("{at}[{i}].protocol"),
                        format!("unknown protocol {}", r.protocol),
                    ));
                }
            };
            let port = |p: u32, f: &str| {
                u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
                    field_err(format!("{at}[{i}].{f}"), format!("{p} is not a port"))
                })
            };
            let first = port(r.port, "port")?;
            let last = if r.end_port == 0 {
                first
            } else {
                port(r.end_port, "end_port")?
            };
            if last < first {
                return Err(field_err(
                    format!("{at}[{i}].end_port"),
                    format!("{last} is below port {first}"),
                ));
            }
            Ok(PortRange { first, last, tcp })
        })
        .collect()
}

fn mode(value: i32, at: &str) -> Result<Option<PeerAuthMode>, PolicyError> {
    match pb::PeerAuthMode::try_from(value) {
        Ok(pb::PeerAuthMode::Unspecified) => Ok(None),
        Ok(pb::PeerAuthMode::Permissive) => Ok(Some(PeerAuthMode::Permissive)),
        Ok(pb::PeerAuthMode::Strict) => Ok(Some(PeerAuthMode::Strict)),
        Err(_) => Err(field_err(at, format!("unknown mode {value}"))),
    }
}

impl TryFrom<pb::Resource> for Policy {
    type Error = PolicyError;

    fn try_from(resource: pb::Resource) -> Result<Self, Self::Error> {
        let Some(pb::resource::Kind::Policy(p)) = resource.kind else {
            return Err(PolicyError::WrongKind);
        };
        if p.namespace.is_empty() {
            return Err(field_err("namespace", "must not be empty"));
        }
        let direction = match pb::PolicyDirection::try_from(p.direction) {
            Ok(pb::PolicyDirection::Unspecified | pb::PolicyDirection::Inbound) => {
                Direction::Inbound
            }
            Ok(pb::PolicyDirection::Outbound) => Direction::Outbound,
            Err(_) => return Err(field_err("direction", format!("unknown {}", p.direction))),
        };
        let action = match pb::PolicyAction::try_from(p.action) {
            Ok(pb::PolicyAction::Unspecified) => Action::None,
            Ok(pb::PolicyAction::Allow) => Action::Allow,
            Ok(pb::PolicyAction::Deny) => Action::Deny,
            Err(_) => return Err(field_err("action", format!("unknown {}", p.action))),
        };
        let mut rules = Vec::with_capacity(p.rules.len());
        for (i, r) in p.rules.into_iter().enumerate() {
            let mut from = Vec::with_capacity(r.from.len());
            for (j, peer) in r.from.into_iter().enumerate() {
                let at = format!("rules[{i}].from[{j}]");
                let pattern = |v: Vec<String>| v.into_iter().map(Pattern).collect();
                let namespace_selector = match &peer.namespace_selector {
                    None => NamespaceSelector::Absent,
                    Some(s) if s.match_labels.is_empty() && s.match_expressions.is_empty() => {
                        NamespaceSelector::Every
                    }
                    Some(_) => NamespaceSelector::ByLabels,
                };
                from.push(Peer {
                    principals: pattern(peer.principals),
                    not_principals: pattern(peer.not_principals),
                    namespaces: pattern(peer.namespaces),
                    not_namespaces: pattern(peer.not_namespaces),
                    ip_blocks: ip_blocks(peer.ip_blocks, &format!("{at}.ip_blocks"))?,
                    not_ip_blocks: ip_blocks(peer.not_ip_blocks, &format!("{at}.not_ip_blocks"))?,
                    workload_selector: peer
                        .workload_selector
                        .map(|s| selector(Some(s), &format!("{at}.workload_selector")))
                        .transpose()?,
                    namespace_selector,
                });
            }
            let mut to = Vec::with_capacity(r.to.len());
            for (j, op) in r.to.into_iter().enumerate() {
                let at = format!("rules[{i}].to[{j}]");
                to.push(Operation {
                    ports: ports(op.ports, &format!("{at}.ports"))?,
                    not_ports: ports(op.not_ports, &format!("{at}.not_ports"))?,
                    needs_l7: !op.methods.is_empty()
                        || !op.paths.is_empty()
                        || !op.hosts.is_empty(),
                });
            }
            rules.push(Rule { from, to });
        }
        let mut port_modes = BTreeMap::new();
        for (port, m) in p.port_modes {
            let at = format!("port_modes[{port}]");
            let port = u16::try_from(port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| field_err(&at, format!("{port} is not a port")))?;
            if let Some(m) = mode(m, &at)? {
                port_modes.insert(port, m);
            }
        }
        let layer = match pb::PolicySource::try_from(p.source) {
            Ok(pb::PolicySource::NetworkPolicy) => Layer::Network,
            Ok(
                pb::PolicySource::Unspecified
                | pb::PolicySource::AuthorizationPolicy
                | pb::PolicySource::PeerAuthentication,
            ) => Layer::Authorization,
            Err(_) => return Err(field_err("source", format!("unknown {}", p.source))),
        };
        Ok(Policy {
            layer,
            selector: selector(p.selector, "selector")?,
            name: p.name,
            namespace: p.namespace,
            direction,
            action,
            rules,
            mode: mode(p.mode, "mode")?,
            port_modes,
        })
    }
}

mod eval;
pub use eval::{Denial, DenialKind, PolicyIndex, Source, Verdict};

#[cfg(test)]
mod table_tests;
#[cfg(test)]
mod tests;
