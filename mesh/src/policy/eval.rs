//! Evaluation of converted policies for one connection to one workload.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use weft_link::{control::Objects, identity::SpiffeId};

use super::*;

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
        let any = |patterns: &[Pattern], value: Option<&str>| {
            value.is_some_and(|v| patterns.iter().any(|p| p.matches(v)))
        };
        let mut m = Match::Yes;
        if !self.principals.is_empty() {
            m = m.and(Match::from_bool(any(
                &self.principals,
                principal.as_deref(),
            )));
        }
        if !self.not_principals.is_empty() {
            m = m.and(Match::from_bool(!any(
                &self.not_principals,
                principal.as_deref(),
            )));
        }
        if !self.namespaces.is_empty() {
            m = m.and(Match::from_bool(any(&self.namespaces, namespace)));
        }
        if !self.not_namespaces.is_empty() {
            m = m.and(Match::from_bool(!any(&self.not_namespaces, namespace)));
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
            // also names namespaces (checked above) or has a namespace selector.
            let in_scope = |w: &Workload| {
                !self.namespaces.is_empty()
                    || self.namespace_selector != NamespaceSelector::Absent
                    || w.namespace == policy_ns
            };
            m = m.and(Match::from_bool(
                src.workload
                    .is_some_and(|w| in_scope(w) && sel.matches(&w.labels)),
            ));
        }
        match self.namespace_selector {
            NamespaceSelector::Absent => {}
            // Every namespace of the cluster: a pod of the cluster, never any address.
            NamespaceSelector::Every => m = m.and(Match::from_bool(src.workload.is_some())),
            NamespaceSelector::ByLabels => m = m.and(Match::Unknown),
        }
        m
    }
}

impl Operation {
    fn matches(&self, port: u16) -> Match {
        let within = |r: &&PortRange| r.tcp && (r.first..=r.last).contains(&port);
        let mut m = Match::Yes;
        if !self.ports.is_empty() {
            // Only UDP or SCTP listed: no TCP port matches.
            m = m.and(Match::from_bool(self.ports.iter().any(|r| within(&r))));
        }
        if !self.not_ports.is_empty() {
            m = m.and(Match::from_bool(!self.not_ports.iter().any(|r| within(&r))));
        }
        if self.needs_l7 {
            m = m.and(Match::Unknown);
        }
        m
    }
}

impl Policy {
    /// Whether this policy governs `dst`: one in its namespace that selects it, or one in the
    /// root namespace that selects it (Istio: a root-namespace policy applies in every
    /// namespace, to the workloads its selector matches).
    fn selects(&self, dst: &Workload, root: &str) -> bool {
        (self.namespace == dst.namespace || self.namespace == root)
            && self.selector.matches(&dst.labels)
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

/// What kind of refusal a denial is, for metrics and for closing live connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialKind {
    /// A NetworkPolicy or AuthorizationPolicy does not allow it.
    Authorization,
    /// No proved identity, to a workload and port whose PeerAuthentication is STRICT.
    PeerAuthStrict,
    /// The source address belongs to a workload whose identity is not the one the peer
    /// proved.
    SourceMismatch,
}

/// Why [`PolicyIndex::admit`] refused a connection; the reason is for the log, never sent to
/// the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Denial {
    pub kind: DenialKind,
    pub reason: String,
}

/// Every policy, indexed for evaluation; replaced whole on each update.
#[derive(Debug)]
pub struct PolicyIndex {
    by_namespace: HashMap<String, Vec<Arc<Policy>>>,
    /// Istio's root namespace: its policies apply in every namespace.
    root: String,
}

impl Default for PolicyIndex {
    fn default() -> Self {
        PolicyIndex {
            by_namespace: HashMap::new(),
            root: DEFAULT_ROOT_NAMESPACE.to_string(),
        }
    }
}

impl PolicyIndex {
    pub fn new(policies: &Objects<Policy>, root_namespace: &str) -> Self {
        let mut by_namespace: HashMap<String, Vec<Arc<Policy>>> = HashMap::new();
        for p in policies.values() {
            by_namespace
                .entry(p.namespace.clone())
                .or_default()
                .push(p.clone());
        }
        PolicyIndex {
            by_namespace,
            root: root_namespace.to_string(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_namespace.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn root_namespace(&self) -> &str {
        &self.root
    }

    /// Policies that may apply to `dst`: its namespace's and the root namespace's.
    fn candidates<'a>(&'a self, dst: &'a Workload) -> impl Iterator<Item = &'a Arc<Policy>> {
        let own = self.by_namespace.get(&dst.namespace);
        let root = (dst.namespace != self.root)
            .then(|| self.by_namespace.get(&self.root))
            .flatten();
        own.into_iter()
            .chain(root)
            .flatten()
            .filter(move |p| p.selects(dst, &self.root))
    }

    /// Whether a connection from `src` to port `port` of `dst` may proceed: the one decision
    /// every inbound path (HBONE, same node, plaintext) makes, and makes again for live
    /// connections when policy or workloads change.
    pub fn admit(&self, src: &Source<'_>, dst: &Workload, port: u16) -> Result<(), Denial> {
        if let (Some(id), Some(w)) = (src.identity, src.workload)
            && w.identity(id.trust_domain()).as_ref() != Some(id)
        {
            // Matching it as that workload would hand the peer the other identity's pod
            // selectors and IP blocks.
            return Err(Denial {
                kind: DenialKind::SourceMismatch,
                reason: format!(
                    "source address {} belongs to workload {}/{} (service account {}), not to \
                     the peer's identity {id}",
                    src.ip, w.namespace, w.name, w.service_account
                ),
            });
        }
        if src.identity.is_none() && self.peer_auth_mode(dst, port) == PeerAuthMode::Strict {
            return Err(Denial {
                kind: DenialKind::PeerAuthStrict,
                reason: "PeerAuthentication is STRICT for this workload and port and the source \
                         proved no identity"
                    .into(),
            });
        }
        match self.authorize_inbound(src, dst, port) {
            Verdict::Allow => Ok(()),
            Verdict::Deny(reason) => Err(Denial {
                kind: DenialKind::Authorization,
                reason,
            }),
        }
    }

    /// Authorizes a connection from `src` to port `port` of `dst`: each layer must allow it.
    pub fn authorize_inbound(&self, src: &Source<'_>, dst: &Workload, port: u16) -> Verdict {
        for layer in Layer::ALL {
            if let Verdict::Deny(reason) = self.authorize_layer(layer, src, dst, port) {
                return Verdict::Deny(reason);
            }
        }
        Verdict::Allow
    }

    /// One layer: any matching DENY denies; else ALLOW policies selecting the workload must
    /// have a matching rule.
    fn authorize_layer(
        &self,
        layer: Layer,
        src: &Source<'_>,
        dst: &Workload,
        port: u16,
    ) -> Verdict {
        let policies = || {
            self.candidates(dst)
                .filter(move |p| p.layer == layer && p.direction == Direction::Inbound)
        };
        // Unknown facts count as a match: a DENY Weft cannot fully check denies.
        if let Some(p) = policies()
            .filter(|p| p.action == Action::Deny)
            .find(|p| p.matches(src, port) != Match::No)
        {
            return Verdict::Deny(format!(
                "DENY {} {}/{} matches",
                layer.name(),
                p.namespace,
                p.name
            ));
        }
        let mut allow_policies = 0usize;
        for p in policies().filter(|p| p.action == Action::Allow) {
            if p.matches(src, port) == Match::Yes {
                return Verdict::Allow;
            }
            allow_policies += 1;
        }
        if allow_policies > 0 {
            Verdict::Deny(format!(
                "no rule of the {allow_policies} ALLOW {} selecting the workload matches",
                layer.name()
            ))
        } else {
            Verdict::Allow
        }
    }

    /// Whether plaintext may reach port `port` of `dst`.
    pub fn peer_auth_mode(&self, dst: &Workload, port: u16) -> PeerAuthMode {
        // Most specific first: workload selector (its namespace's or the root's), then
        // namespace-wide, then mesh-wide.
        let mut workload: Option<&Policy> = None;
        let mut namespace: Option<&Policy> = None;
        let mut mesh: Option<&Policy> = None;
        for p in self.candidates(dst) {
            if p.mode.is_none() && p.port_modes.is_empty() {
                continue;
            }
            let slot = if !p.selector.is_empty() {
                &mut workload
            } else if p.namespace == dst.namespace && p.namespace != self.root {
                &mut namespace
            } else {
                &mut mesh
            };
            // Two policies at one level: its own namespace's first, then the older name, so
            // the choice is deterministic.
            let rank = |q: &Policy| (q.namespace != dst.namespace, q.name.clone());
            if slot.is_none_or(|s| rank(p) < rank(s)) {
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
