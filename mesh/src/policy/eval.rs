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
