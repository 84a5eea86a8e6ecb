//! The routes of one listener and the choice of one for a request, with Gateway API's
//! precedence: the most specific hostname, then an exact path over the longest prefix, then
//! a method match, then the most header matches, then the most query matches, then the
//! oldest route, then `namespace/name`, then rule order.

use std::{cmp::Reverse, sync::Arc};

use http::{HeaderMap, Method};
use weft_proto::discovery::v1::{self as pb, MatchType};

/// One (route, rule, match) candidate.
#[derive(Debug)]
struct Entry {
    route: Arc<pb::ApiRoute>,
    rule: usize,
    /// Lower case; empty: any host the listener serves.
    hostnames: Vec<String>,
    matched: pb::RouteMatch,
}

/// The routes attached to one listener, ordered by precedence.
#[derive(Debug, Default)]
pub struct RouteTable {
    entries: Vec<Entry>,
    names: Vec<String>,
}

/// The route and rule chosen for a request.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    pub route: &'a Arc<pb::ApiRoute>,
    pub rule: &'a pb::RouteRule,
    /// The path match that matched, for `ReplacePrefixMatch`.
    pub path: Option<&'a pb::PathMatch>,
}

impl RouteTable {
    /// The table of `routes` on a listener for `listener_host` (`None`: any host).
    pub fn build(
        listener_host: Option<&str>,
        routes: &[&Arc<pb::ApiRoute>],
    ) -> Result<Self, String> {
        let mut entries = Vec::new();
        let mut names = Vec::new();
        for route in routes {
            let hostnames: Vec<String> = route
                .route_hostnames
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .filter(|h| listener_host.is_none_or(|l| hosts_intersect(l, h)))
                .collect();
            if !route.route_hostnames.is_empty() && hostnames.is_empty() {
                // No hostname in common with the listener: the route does not attach.
                continue;
            }
            names.push(format!("{}/{}", route.namespace, route.name));
            for (i, rule) in route.rules.iter().enumerate() {
                if rule.matches.is_empty() {
                    entries.push(Entry {
                        route: (*route).clone(),
                        rule: i,
                        hostnames: hostnames.clone(),
                        matched: pb::RouteMatch {
                            path: Some(pb::PathMatch {
                                r#type: MatchType::PathPrefix.into(),
                                value: "/".into(),
                            }),
                            ..Default::default()
                        },
                    });
                }
                for m in &rule.matches {
                    entries.push(Entry {
                        route: (*route).clone(),
                        rule: i,
                        hostnames: hostnames.clone(),
                        matched: m.clone(),
                    });
                }
            }
        }
        entries.sort_by_key(|e| {
            let (exact, prefix_len) = match &e.matched.path {
                Some(p) if p.r#type() == MatchType::Exact => (true, p.value.len()),
                Some(p) if p.r#type() == MatchType::PathPrefix => (false, p.value.len()),
                _ => (false, 0),
            };
            (
                Reverse(exact),
                Reverse(prefix_len),
                Reverse(!e.matched.method.is_empty()),
                Reverse(e.matched.headers.len()),
                Reverse(e.matched.query_params.len()),
                e.route.created_at_unix_ms,
                format!("{}/{}", e.route.namespace, e.route.name),
                e.rule,
            )
        });
        Ok(RouteTable { entries, names })
    }

    /// `namespace/name` of every attached route.
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// The route for a request, `None` for a 404.
    pub fn select(
        &self,
        host: &str,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<Selected<'_>> {
        let mut best: Option<(usize, &Entry)> = None;
        for e in &self.entries {
            let Some(score) = host_score(&e.hostnames, host) else {
                continue;
            };
            if best.is_some_and(|(s, _)| s >= score) {
                continue;
            }
            if matches(&e.matched, method, path, query, headers) {
                best = Some((score, e));
            }
        }
        best.and_then(|(_, e)| {
            Some(Selected {
                route: &e.route,
                rule: e.route.rules.get(e.rule)?,
                path: e.matched.path.as_ref(),
            })
        })
    }
}

/// How specifically `hostnames` match `host`: `None` not at all, higher is more specific.
fn host_score(hostnames: &[String], host: &str) -> Option<usize> {
    if hostnames.is_empty() {
        return Some(1);
    }
    hostnames
        .iter()
        .filter_map(|h| {
            if h == host {
                Some(usize::MAX)
            } else {
                let suffix = h.strip_prefix('*')?;
                (host.ends_with(suffix) && host.len() > suffix.len()).then_some(2 + suffix.len())
            }
        })
        .max()
}

/// Whether a listener hostname and a route hostname can both match some host.
fn hosts_intersect(listener: &str, route: &str) -> bool {
    let covers = |pattern: &str, name: &str| match pattern.strip_prefix('*') {
        Some(suffix) => name.ends_with(suffix),
        None => pattern == name,
    };
    covers(listener, route) || covers(route, listener)
}

fn matches(
    m: &pb::RouteMatch,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> bool {
    if let Some(p) = &m.path {
        let ok = match p.r#type() {
            MatchType::Exact => path == p.value,
            MatchType::PathPrefix => prefix_matches(&p.value, path),
            // Regular expressions come with the full matcher.
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    if !m.method.is_empty() && m.method != method.as_str() {
        return false;
    }
    for h in &m.headers {
        let ok = headers
            .get_all(h.name.as_str())
            .iter()
            .any(|v| v.as_bytes() == h.value.as_bytes());
        if !ok {
            return false;
        }
    }
    for q in &m.query_params {
        let ok = query.is_some_and(|query| {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                .find(|(k, _)| *k == q.name)
                .is_some_and(|(_, v)| v == q.value)
        });
        if !ok {
            return false;
        }
    }
    true
}

/// Gateway API `PathPrefix`: whole `/`-separated segments; a trailing `/` is ignored.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}
