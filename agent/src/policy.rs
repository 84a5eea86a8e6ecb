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

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tracing::{info, warn};
use weft_link::{
    control::{Objects, Rejection, TypedStore, Update},
    identity::SpiffeId,
};
use weft_proto::discovery::v1 as pb;

use crate::state::Workload;

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

// === evaluation ===

/// What the destination side knows about a connection's source.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The identity the source proved with its certificate; `None` for plaintext.
    pub identity: Option<&'a SpiffeId>,
    /// Its IP address as the destination sees it.
    pub ip: IpAddr,
    /// The workload at that IP, if the mesh knows one.
    pub workload: Option<&'a Workload>,
}

/// Three-valued match: `Unknown` means the rule needs facts this proxy does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    Yes,
    No,
    Unknown,
}

impl Match {
    fn from_bool(b: bool) -> Self {
        if b { Match::Yes } else { Match::No }
    }

    /// AND of two matches.
    fn and(self, other: Match) -> Match {
        match (self, other) {
            (Match::No, _) | (_, Match::No) => Match::No,
            (Match::Unknown, _) | (_, Match::Unknown) => Match::Unknown,
            _ => Match::Yes,
        }
    }

    /// OR over alternatives; an empty list matches.
    fn any(items: impl Iterator<Item = Match>) -> Match {
        let mut seen = false;
        let mut unknown = false;
        for m in items {
            seen = true;
            match m {
                Match::Yes => return Match::Yes,
                Match::Unknown => unknown = true,
                Match::No => {}
            }
        }
        if !seen {
            Match::Yes
        } else if unknown {
            Match::Unknown
        } else {
            Match::No
        }
    }
}

impl Peer {
    fn matches(&self, policy_ns: &str, src: &Source<'_>) -> Match {
        let principal = src.identity.map(|id| {
            id.as_str()
                .strip_prefix("spiffe://")
                .unwrap_or(id.as_str())
                .to_owned()
        });
        // The namespace comes from the proved identity; plaintext has none.
        let namespace = src.identity.map(|id| id.namespace());
        let mut m = Match::Yes;
        if !self.principals.is_empty() {
            m = m.and(Match::from_bool(principal.as_deref().is_some_and(|p| {
                self.principals.iter().any(|pat| pat.matches(p))
            })));
        }
        if !self.not_principals.is_empty() {
            m = m.and(Match::from_bool(!principal.as_deref().is_some_and(|p| {
                self.not_principals.iter().any(|pat| pat.matches(p))
            })));
        }
        if !self.namespaces.is_empty() {
            m = m.and(Match::from_bool(
                namespace.is_some_and(|ns| self.namespaces.iter().any(|n| n == ns)),
            ));
        }
        if !self.not_namespaces.is_empty() {
            m =
                m.and(Match::from_bool(!namespace.is_some_and(|ns| {
                    self.not_namespaces.iter().any(|n| n == ns)
                })));
        }
        if !self.ip_blocks.is_empty() {
            m = m.and(Match::from_bool(
                self.ip_blocks.iter().any(|b| b.contains(src.ip)),
            ));
        }
        if !self.not_ip_blocks.is_empty() {
            m = m.and(Match::from_bool(
                !self.not_ip_blocks.iter().any(|b| b.contains(src.ip)),
            ));
        }
        if let Some(sel) = &self.workload_selector {
            // A pod selector picks workloads of the policy's namespace, unless the peer
            // also names namespaces (checked above) or selects them by label.
            let in_scope = |w: &Workload| {
                !self.namespaces.is_empty()
                    || self.needs_namespace_labels
                    || w.namespace == policy_ns
            };
            m = m.and(Match::from_bool(
                src.workload
                    .is_some_and(|w| in_scope(w) && sel.matches(&w.labels)),
            ));
        }
        if self.needs_namespace_labels {
            m = m.and(Match::Unknown);
        }
        m
    }
}

impl Operation {
    fn matches(&self, port: u16) -> Match {
        let within = |r: &PortRange| (r.first..=r.last).contains(&port);
        let mut m = Match::Yes;
        if !self.ports.is_empty() {
            m = m.and(Match::from_bool(self.ports.iter().any(within)));
        }
        if !self.not_ports.is_empty() {
            m = m.and(Match::from_bool(!self.not_ports.iter().any(within)));
        }
        if self.needs_l7 {
            m = m.and(Match::Unknown);
        }
        m
    }
}

impl Policy {
    /// Whether this policy governs `dst`.
    fn selects(&self, dst: &Workload) -> bool {
        if self.namespace == dst.namespace {
            return self.selector.matches(&dst.labels);
        }
        self.namespace == ROOT_NAMESPACE && self.selector.is_empty()
    }

    fn matches(&self, src: &Source<'_>, port: u16) -> Match {
        Match::any(self.rules.iter().map(|r| {
            Match::any(r.from.iter().map(|p| p.matches(&self.namespace, src)))
                .and(Match::any(r.to.iter().map(|o| o.matches(port))))
        }))
        // No rules at all: nothing matches (an ALLOW without rules denies everything).
        .and(Match::from_bool(!self.rules.is_empty()))
    }
}

/// The outcome of authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Denied, with the reason for the log (never sent to the peer).
    Deny(String),
}

/// Every policy, indexed for evaluation; replaced whole on each update.
#[derive(Debug, Default)]
pub struct PolicyIndex {
    by_namespace: HashMap<String, Vec<Arc<Policy>>>,
}

impl PolicyIndex {
    pub fn new(policies: &Objects<Policy>) -> Self {
        let mut by_namespace: HashMap<String, Vec<Arc<Policy>>> = HashMap::new();
        for p in policies.values() {
            by_namespace
                .entry(p.namespace.clone())
                .or_default()
                .push(p.clone());
        }
        PolicyIndex { by_namespace }
    }

    pub fn len(&self) -> usize {
        self.by_namespace.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Policies that may apply to `dst`: its namespace's and the root namespace's.
    fn candidates<'a>(&'a self, dst: &'a Workload) -> impl Iterator<Item = &'a Arc<Policy>> {
        let own = self.by_namespace.get(&dst.namespace);
        let root = (dst.namespace != ROOT_NAMESPACE)
            .then(|| self.by_namespace.get(ROOT_NAMESPACE))
            .flatten();
        own.into_iter()
            .chain(root)
            .flatten()
            .filter(move |p| p.selects(dst))
    }

    /// Authorizes a connection from `src` to port `port` of `dst`.
    pub fn authorize_inbound(&self, src: &Source<'_>, dst: &Workload, port: u16) -> Verdict {
        let mut allow_policies = 0usize;
        for p in self.candidates(dst) {
            if p.direction != Direction::Inbound {
                continue;
            }
            match p.action {
                Action::Deny => {
                    // Unknown facts count as a match: a DENY Weft cannot fully check denies.
                    if p.matches(src, port) != Match::No {
                        return Verdict::Deny(format!(
                            "DENY policy {}/{} matches",
                            p.namespace, p.name
                        ));
                    }
                }
                Action::Allow => {
                    allow_policies += 1;
                    if p.matches(src, port) == Match::Yes {
                        return self.check_denies_after_allow(src, dst, port);
                    }
                }
                Action::None => {}
            }
        }
        if allow_policies > 0 {
            Verdict::Deny(format!(
                "no rule of the {allow_policies} ALLOW polic{} selecting the workload matches",
                if allow_policies == 1 { "y" } else { "ies" }
            ))
        } else {
            Verdict::Allow
        }
    }

    /// An ALLOW matched early; a DENY later in the list still wins.
    fn check_denies_after_allow(&self, src: &Source<'_>, dst: &Workload, port: u16) -> Verdict {
        for p in self.candidates(dst) {
            if p.direction == Direction::Inbound
                && p.action == Action::Deny
                && p.matches(src, port) != Match::No
            {
                return Verdict::Deny(format!("DENY policy {}/{} matches", p.namespace, p.name));
            }
        }
        Verdict::Allow
    }

    /// Whether plaintext may reach port `port` of `dst`.
    pub fn peer_auth_mode(&self, dst: &Workload, port: u16) -> PeerAuthMode {
        // Most specific first: workload selector, namespace-wide, mesh-wide.
        let mut workload: Option<&Policy> = None;
        let mut namespace: Option<&Policy> = None;
        let mut mesh: Option<&Policy> = None;
        for p in self.candidates(dst) {
            if p.mode.is_none() && p.port_modes.is_empty() {
                continue;
            }
            let slot = if p.namespace == dst.namespace && !p.selector.is_empty() {
                &mut workload
            } else if p.namespace == dst.namespace && p.namespace != ROOT_NAMESPACE {
                &mut namespace
            } else {
                &mut mesh
            };
            // Two policies at one level: the older name wins, deterministically.
            if slot.is_none_or(|s| p.name < s.name) {
                *slot = Some(p);
            }
        }
        if let Some(p) = workload {
            if let Some(m) = p.port_modes.get(&port) {
                return *m;
            }
            if let Some(m) = p.mode {
                return m;
            }
        }
        [namespace, mesh]
            .into_iter()
            .flatten()
            .find_map(|p| p.mode)
            .unwrap_or(PeerAuthMode::Permissive)
    }
}

/// Applies policy updates: converts all, then swaps the index the data path reads.
pub struct PolicyHandler {
    store: TypedStore<Policy>,
    index: Arc<ArcSwap<PolicyIndex>>,
}

impl PolicyHandler {
    pub fn new(index: Arc<ArcSwap<PolicyIndex>>) -> Self {
        PolicyHandler {
            store: TypedStore::new(),
            index,
        }
    }

    pub fn apply(&mut self, update: Update) -> Result<(), Rejection> {
        let version = update.version;
        if let Err(rejection) = self.store.apply(update) {
            warn!(version, resource = %rejection.resource_name, reason = %rejection.reason, "rejecting policy update");
            return Err(rejection);
        }
        let index = PolicyIndex::new(&self.store.snapshot());
        info!(version, policies = index.len(), "policies updated");
        self.index.store(Arc::new(index));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use weft_link::control::Update;
    use weft_proto::discovery::v1 as pb;

    use super::*;
    use crate::state::WorkloadUid;

    fn workload(ns: &str, sa: &str, app: &str) -> Workload {
        Workload {
            uid: WorkloadUid(format!("{ns}-{app}")),
            name: app.into(),
            namespace: ns.into(),
            service_account: sa.into(),
            node: "node-1".into(),
            ips: vec!["10.0.0.9".parse().unwrap()],
            labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            protocol: crate::state::TunnelProtocol::Hbone,
        }
    }

    fn id(s: &str) -> SpiffeId {
        s.parse().unwrap()
    }

    fn policy(name: &str, ns: &str, p: pb::Policy) -> pb::Resource {
        pb::Resource {
            name: format!("x/{ns}/{name}"),
            kind: Some(pb::resource::Kind::Policy(pb::Policy {
                name: name.into(),
                namespace: ns.into(),
                ..p
            })),
        }
    }

    fn index(resources: Vec<pb::Resource>) -> PolicyIndex {
        let shared = Arc::new(ArcSwap::from_pointee(PolicyIndex::default()));
        let mut handler = PolicyHandler::new(shared.clone());
        handler
            .apply(Update {
                resource_type: pb::ResourceType::Policy,
                version: 1,
                snapshot: true,
                resources,
                removed: vec![],
            })
            .unwrap();
        Arc::try_unwrap(shared.swap(Arc::default())).unwrap()
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
            policy("mesh", ROOT_NAMESPACE, strict(None)),
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
        let shared = Arc::new(ArcSwap::from_pointee(PolicyIndex::default()));
        let mut handler = PolicyHandler::new(shared);
        let err = handler
            .apply(Update {
                resource_type: pb::ResourceType::Policy,
                version: 1,
                snapshot: true,
                resources: vec![policy("bad", "default", p)],
                removed: vec![],
            })
            .unwrap_err();
        assert_eq!(err.resource_name, "x/default/bad");
        assert!(
            err.reason.contains("rules[0].from[0].ip_blocks[0].cidr"),
            "{}",
            err.reason
        );
    }
}
