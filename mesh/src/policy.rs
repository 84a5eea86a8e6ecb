//! Inbound authorization and peer authentication at L4, as ztunnel evaluates Istio's
//! `AuthorizationPolicy` and `PeerAuthentication` (and Weft maps Kubernetes `NetworkPolicy`
//! onto the same shape).
//!
//! Policies arrive from the control plane as `Policy` resources and are converted here (and
//! nowhere else). Evaluation, for one connection to one workload:
//!
//! - **authorization**: if any DENY policy matches, deny; else if ALLOW policies apply to the
//!   workload and none matches, deny; else allow. A rule that needs facts an L4 proxy does not
//!   have (HTTP methods, paths, hosts; namespace labels) never matches in an ALLOW policy and
//!   always matches in a DENY policy, so a policy Weft cannot fully check errs towards denying;
//! - **peer authentication**: the most specific `PeerAuthentication` wins (workload selector,
//!   then namespace-wide, then mesh-wide in the root namespace); port-level modes override the
//!   workload's; the default is PERMISSIVE. STRICT refuses plaintext.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use weft_proto::discovery::v1 as pb;

use crate::workload::Workload;

/// Policies here with no selector apply to every workload of the mesh.
pub const ROOT_NAMESPACE: &str = "weft-system";

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
    namespaces: Vec<String>,
    not_namespaces: Vec<String>,
    ip_blocks: Vec<IpBlock>,
    not_ip_blocks: Vec<IpBlock>,
    workload_selector: Option<Selector>,
    /// A non-empty namespace selector: the agent does not know namespace labels.
    needs_namespace_labels: bool,
}

#[derive(Debug, Clone, Copy)]
struct PortRange {
    first: u16,
    last: u16,
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
        .filter(|(_, r)| {
            // UDP and SCTP rules never match a TCP connection; keep TCP (and unspecified).
            matches!(
                pb::Protocol::try_from(r.protocol),
                Ok(pb::Protocol::Unspecified | pb::Protocol::Tcp)
            )
        })
        .map(|(i, r)| {
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
            Ok(PortRange { first, last })
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
                let needs_namespace_labels = peer
                    .namespace_selector
                    .as_ref()
                    .is_some_and(|s| !s.match_labels.is_empty() || !s.match_expressions.is_empty());
                from.push(Peer {
                    principals: pattern(peer.principals),
                    not_principals: pattern(peer.not_principals),
                    namespaces: peer.namespaces,
                    not_namespaces: peer.not_namespaces,
                    ip_blocks: ip_blocks(peer.ip_blocks, &format!("{at}.ip_blocks"))?,
                    not_ip_blocks: ip_blocks(peer.not_ip_blocks, &format!("{at}.not_ip_blocks"))?,
                    workload_selector: peer
                        .workload_selector
                        .map(|s| selector(Some(s), &format!("{at}.workload_selector")))
                        .transpose()?,
                    needs_namespace_labels,
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
        Ok(Policy {
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
pub use eval::{PolicyIndex, Source, Verdict};

#[cfg(test)]
mod tests;
