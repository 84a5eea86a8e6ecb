//! The routing table of one listener: built once per configuration version, then asked
//! for every request.
//!
//! Build time does the work: routes are attached (parentRef names the listener), their
//! host names intersected with the listener's, and for every host name that can be asked
//! for a candidate list of (route, rule, match) is sorted by Gateway API precedence. A
//! request then costs one or a few hash lookups and a linear scan that stops at the first
//! candidate that matches; nothing is allocated unless the Host has upper-case letters or a
//! matched header is repeated.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, Method, Uri};
use weft_proto::discovery::v1 as pb;

use super::RouteError;
use super::host::{HostPattern, request_host};
use super::model::{Match, Route, Rule};

/// The listener a table is built for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerRef {
    /// The Gateway's namespace.
    pub gateway_namespace: String,
    /// The Gateway's name.
    pub gateway: String,
    /// The listener's name (what a parentRef's `sectionName` names).
    pub name: String,
    /// Its port.
    pub port: u16,
    /// The host names it serves; `None` means any.
    pub hostname: Option<HostPattern>,
}

impl TryFrom<&pb::Listener> for ListenerRef {
    type Error = RouteError;

    fn try_from(l: &pb::Listener) -> Result<Self, RouteError> {
        let object = format!("listener {}/{}/{}", l.namespace, l.gateway, l.name);
        let invalid = |field: &str, reason: String| RouteError::Invalid {
            object: object.clone(),
            field: field.to_string(),
            reason,
        };
        let port = u16::try_from(l.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid("port", format!("{}: must be 1-65535", l.port)))?;
        let hostname = match l.hostname.as_str() {
            "" => None,
            h => Some(HostPattern::parse(h).map_err(|e| invalid("hostname", e))?),
        };
        Ok(Self {
            gateway_namespace: l.namespace.clone(),
            gateway: l.gateway.clone(),
            name: l.name.clone(),
            port,
            hostname,
        })
    }
}

impl ListenerRef {
    /// Whether the route names this listener in a parentRef: its Gateway, and no
    /// `sectionName` or this listener's, and no port or this listener's.
    pub fn attaches(&self, route: &Route) -> bool {
        route.parents.iter().any(|p| {
            p.kind == "Gateway"
                && p.namespace == self.gateway_namespace
                && p.name == self.gateway
                && p.section_name.as_ref().is_none_or(|s| *s == self.name)
                && p.port.is_none_or(|port| port == self.port)
        })
    }

    /// The host names the route serves on this listener (Gateway API intersection), or
    /// `None` when it serves none (the route is then not attached). An empty list means
    /// every host.
    fn effective_hostnames(&self, route: &Route) -> Option<Vec<HostPattern>> {
        match (&self.hostname, route.hostnames.is_empty()) {
            (None, _) => Some(route.hostnames.clone()),
            (Some(l), true) => Some(vec![l.clone()]),
            (Some(l), false) => {
                let mut out: Vec<HostPattern> = Vec::new();
                for h in route.hostnames.iter().filter_map(|h| l.intersect(h)) {
                    if !out.contains(&h) {
                        out.push(h);
                    }
                }
                (!out.is_empty()).then_some(out)
            }
        }
    }
}

/// One (route, rule, match) of a host's candidate list, with the keys it was sorted by.
#[derive(Clone, Debug)]
struct Candidate {
    route: u32,
    rule: u32,
    matched: u32,
}

/// The sort key of a candidate, larger first (so oldest-first and name-first are
/// `Reverse`d): hostname specificity, then the match's rank, then the route's age, name,
/// then rule and match order.
type SortKey<'a> = (
    (u8, usize),
    ((u8, usize), bool, usize, usize),
    Reverse<u64>,
    Reverse<&'a super::model::RouteKey>,
    Reverse<u32>,
    Reverse<u32>,
);

/// The patterns that cover every host `key` covers, `key` first.
fn covering_patterns(key: &Option<HostPattern>) -> Vec<Option<HostPattern>> {
    let name = match key {
        None => return vec![None],
        Some(HostPattern::Exact(h)) => &**h,
        Some(HostPattern::Wildcard(s)) => &**s,
    };
    let mut out = vec![key.clone()];
    out.extend(
        name.match_indices('.')
            .filter(|(i, _)| *i > 0)
            .map(|(i, _)| Some(HostPattern::Wildcard(name[i..].into()))),
    );
    out.push(None);
    out
}

/// What a request was routed to. Owns an `Arc` of its route, so it outlives the table and
/// can be held across awaits.
#[derive(Clone, Debug)]
pub struct Selected {
    /// The route.
    pub route: Arc<Route>,
    /// Index of the rule in `route.rules`.
    pub rule_index: usize,
    /// Index of the match in the rule's `matches`.
    pub match_index: usize,
}

impl Selected {
    /// The rule that matched.
    pub fn rule(&self) -> Option<&Rule> {
        self.route.rules.get(self.rule_index)
    }

    /// The match that matched (its path prefix is what ReplacePrefixMatch replaces).
    pub fn matched(&self) -> Option<&Match> {
        self.rule()?.matches.get(self.match_index)
    }
}

/// The routes of one listener, ready for `select`.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// Exact host -> candidates of every pattern that covers it.
    exact: HashMap<Box<str>, Vec<Candidate>>,
    /// Wildcard suffix (`.example.com`) -> candidates of it and of broader patterns.
    wildcard: HashMap<Box<str>, Vec<Candidate>>,
    /// Candidates of routes that serve every host.
    any: Vec<Candidate>,
}

impl RouteTable {
    /// Builds the table of `listener` from every route of the configuration; routes that do
    /// not attach to it (parentRef, or no host name in common) are left out.
    pub fn build(listener: &ListenerRef, routes: &[Arc<Route>]) -> Self {
        let mut table = Self::default();
        // The routes of each served pattern; `None` = every host.
        let mut groups: HashMap<Option<HostPattern>, Vec<u32>> = HashMap::new();
        for route in routes.iter().filter(|r| listener.attaches(r)) {
            let Some(hosts) = listener.effective_hostnames(route) else {
                continue;
            };
            let Ok(index) = u32::try_from(table.routes.len()) else {
                break;
            };
            table.routes.push(Arc::clone(route));
            if hosts.is_empty() {
                groups.entry(None).or_default().push(index);
            }
            for h in hosts {
                groups.entry(Some(h)).or_default().push(index);
            }
        }
        for key in groups.keys() {
            // The served patterns covering every host of `key`: itself, each broader
            // wildcard (one per parent domain), and "any".
            let covering = covering_patterns(key).into_iter().flat_map(|pattern| {
                let rank = pattern.as_ref().map_or((0, 0), HostPattern::rank);
                groups
                    .get(&pattern)
                    .into_iter()
                    .flatten()
                    .map(move |route| (*route, rank))
            });
            let candidates = table.candidates(covering);
            match key {
                None => table.any = candidates,
                Some(HostPattern::Exact(h)) => {
                    table.exact.insert(h.clone(), candidates);
                }
                Some(HostPattern::Wildcard(s)) => {
                    table.wildcard.insert(s.clone(), candidates);
                }
            }
        }
        table
    }

    /// The sorted candidates of the given (route, hostname rank) pairs. A route reached
    /// through two patterns keeps its best rank only.
    fn candidates(&self, covering: impl Iterator<Item = (u32, (u8, usize))>) -> Vec<Candidate> {
        let mut best: HashMap<u32, (u8, usize)> = HashMap::new();
        for (route, rank) in covering {
            let have = best.entry(route).or_insert(rank);
            *have = (*have).max(rank);
        }
        let mut out: Vec<(SortKey<'_>, Candidate)> = Vec::new();
        for (route_index, host_rank) in best {
            let Some(route) = self.routes.get(route_index as usize) else {
                continue;
            };
            for (rule_index, rule) in route.rules.iter().enumerate() {
                for (match_index, m) in rule.matches.iter().enumerate() {
                    let (Ok(rule), Ok(matched)) =
                        (u32::try_from(rule_index), u32::try_from(match_index))
                    else {
                        continue;
                    };
                    let key = (
                        host_rank,
                        m.rank(route.kind),
                        Reverse(route.created_at_unix_ms),
                        Reverse(&route.key),
                        Reverse(rule),
                        Reverse(matched),
                    );
                    out.push((
                        key,
                        Candidate {
                            route: route_index,
                            rule,
                            matched,
                        },
                    ));
                }
            }
        }
        out.sort_by(|a, b| b.0.cmp(&a.0));
        out.into_iter().map(|(_, c)| c).collect()
    }

    /// The routes attached to this listener.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Routes a request: the highest-precedence (route, rule, match) whose host name
    /// covers the request's and whose match the request meets. `None` means 404.
    pub fn select(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Selected> {
        let candidates = self.candidates_for(request_host(uri, headers).as_deref());
        let path = uri.path();
        let query = uri.query();
        candidates.iter().find_map(|c| {
            let route = self.routes.get(c.route as usize)?;
            let m = route
                .rules
                .get(c.rule as usize)?
                .matches
                .get(c.matched as usize)?;
            m.matches(method, path, query, headers).then(|| Selected {
                route: Arc::clone(route),
                rule_index: c.rule as usize,
                match_index: c.matched as usize,
            })
        })
    }

    /// `select` on a request's head.
    pub fn select_parts(&self, parts: &http::request::Parts) -> Option<Selected> {
        self.select(&parts.method, &parts.uri, &parts.headers)
    }

    /// The candidate list of the most specific pattern covering `host`; each list already
    /// holds the broader patterns' candidates after its own.
    fn candidates_for(&self, host: Option<&str>) -> &[Candidate] {
        if let Some(host) = host {
            if let Some(c) = self.exact.get(host) {
                return c;
            }
            if !self.wildcard.is_empty() {
                // Longest suffix first: `.b.example.com` before `.example.com`; a suffix
                // never covers the whole host (a wildcard needs one label).
                for (i, _) in host.match_indices('.').filter(|(i, _)| *i > 0) {
                    if let Some(c) = self.wildcard.get(&host[i..]) {
                        return c;
                    }
                }
            }
        }
        &self.any
    }
}
