//! Proto -> domain conversion of routes. Every check that can be made once is made here,
//! so matching and filters never meet an invalid value.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use weft_proto::discovery::v1 as pb;

use super::RouteError;
use super::host::HostPattern;
use super::model::{
    Filter, HeaderMatch, Match, ParentRef, PathMatch, PathModifier, QueryMatch, Route, RouteKey,
    RouteKind, Rule, ValueMatch,
};
use crate::retry::RetryPolicy;

use super::convert_filter::{backend, filters};

/// Compiled size cap of one regular expression. Patterns come from operators, but a small
/// pattern can still compile to a huge automaton (`(a{100}){100}`); 1 MiB is far above
/// what any sane route needs.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Longest pattern accepted (Gateway API caps path values at 1024 characters).
pub const MAX_PATTERN_LEN: usize = 1024;

/// Context of one conversion: the route's name, for errors.
pub(super) struct Cx<'a> {
    pub(super) object: &'a str,
}

impl Cx<'_> {
    pub(super) fn invalid(
        &self,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> RouteError {
        RouteError::Invalid {
            object: self.object.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Compiles `pattern` so it must match the whole input, as Gateway API implementations
    /// do (Envoy's `safe_regex` is a full match too).
    fn regex(&self, field: &str, pattern: &str) -> Result<regex::Regex, RouteError> {
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(self.invalid(field, format!("longer than {MAX_PATTERN_LEN} characters")));
        }
        regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map_err(|source| RouteError::Regex {
                object: self.object.to_string(),
                field: field.to_string(),
                pattern: pattern.to_string(),
                source,
            })
    }
}

// === impl Route ===

impl TryFrom<&pb::ApiRoute> for Route {
    type Error = RouteError;

    fn try_from(r: &pb::ApiRoute) -> Result<Self, RouteError> {
        let key = RouteKey {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
        };
        let object = key.to_string();
        let cx = Cx { object: &object };
        let kind = match pb::ApiRouteKind::try_from(r.kind) {
            Ok(pb::ApiRouteKind::Grpc) => RouteKind::Grpc,
            // Unspecified: an HTTPRoute from a control plane that predates the field.
            Ok(pb::ApiRouteKind::Http | pb::ApiRouteKind::Unspecified) => RouteKind::Http,
            Err(_) => return Err(cx.invalid("kind", format!("unknown route kind {}", r.kind))),
        };
        route(
            &cx,
            key.clone(),
            kind,
            &r.parents,
            &r.route_hostnames,
            &r.rules,
        )
        .map(|mut route| {
            route.created_at_unix_ms = r.created_at_unix_ms;
            route.policy = r.policy.clone().map(Arc::new);
            route
        })
    }
}

impl TryFrom<&pb::Route> for Route {
    type Error = RouteError;

    /// A mesh route: an HTTPRoute with no age or policy.
    fn try_from(r: &pb::Route) -> Result<Self, RouteError> {
        let key = RouteKey {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
        };
        let object = key.to_string();
        let cx = Cx { object: &object };
        route(
            &cx,
            key,
            RouteKind::Http,
            &r.parents,
            &r.hostnames,
            &r.rules,
        )
    }
}

fn route(
    cx: &Cx<'_>,
    key: RouteKey,
    kind: RouteKind,
    parents: &[pb::ParentRef],
    hostnames: &[String],
    rules: &[pb::RouteRule],
) -> Result<Route, RouteError> {
    if key.name.is_empty() || key.namespace.is_empty() {
        return Err(cx.invalid("name", "a route needs a name and a namespace"));
    }
    let parents = parents
        .iter()
        .enumerate()
        .map(|(i, p)| parent(cx, &key, i, p))
        .collect::<Result<_, _>>()?;
    let hostnames = hostnames
        .iter()
        .enumerate()
        .map(|(i, h)| HostPattern::parse(h).map_err(|e| cx.invalid(format!("hostnames[{i}]"), e)))
        .collect::<Result<_, _>>()?;
    let rules = rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(cx, &key, &format!("rules[{i}]"), r))
        .collect::<Result<_, _>>()?;
    Ok(Route {
        key,
        kind,
        parents,
        hostnames,
        rules,
        created_at_unix_ms: 0,
        policy: None,
    })
}

fn parent(
    cx: &Cx<'_>,
    key: &RouteKey,
    i: usize,
    p: &pb::ParentRef,
) -> Result<ParentRef, RouteError> {
    let field = format!("parents[{i}]");
    if p.name.is_empty() {
        return Err(cx.invalid(format!("{field}.name"), "a parent needs a name"));
    }
    let port = match p.port {
        0 => None,
        n => Some(
            u16::try_from(n)
                .map_err(|_| cx.invalid(format!("{field}.port"), format!("{n} is not a port")))?,
        ),
    };
    Ok(ParentRef {
        kind: if p.kind.is_empty() {
            "Gateway".to_string()
        } else {
            p.kind.clone()
        },
        namespace: if p.namespace.is_empty() {
            key.namespace.clone()
        } else {
            p.namespace.clone()
        },
        name: p.name.clone(),
        section_name: (!p.section_name.is_empty()).then(|| p.section_name.clone()),
        port,
    })
}

fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

fn rule(cx: &Cx<'_>, key: &RouteKey, field: &str, r: &pb::RouteRule) -> Result<Rule, RouteError> {
    let mut matches = r
        .matches
        .iter()
        .enumerate()
        .map(|(i, m)| route_match(cx, &format!("{field}.matches[{i}]"), m))
        .collect::<Result<Vec<_>, _>>()?;
    if matches.is_empty() {
        // Gateway API's default: PathPrefix `/`, every request.
        matches.push(Match {
            path: PathMatch::Prefix {
                prefix: String::new(),
                len: 1,
            },
            method: None,
            headers: Vec::new(),
            query_params: Vec::new(),
        });
    }
    let filters = filters(cx, key, &format!("{field}.filters"), &r.filters)?;
    let backends = r
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| backend(cx, key, &format!("{field}.backends[{i}]"), b))
        .collect::<Result<Vec<_>, _>>()?;
    // ReplacePrefixMatch needs the one PathPrefix it replaces (a CEL rule of the CRD).
    let replaces_prefix = |fs: &[Filter]| {
        fs.iter().any(|f| match f {
            Filter::UrlRewrite(u) => matches!(u.path, Some(PathModifier::Prefix(_))),
            Filter::Redirect(r) => matches!(r.path, Some(PathModifier::Prefix(_))),
            _ => false,
        })
    };
    if (replaces_prefix(&filters) || backends.iter().any(|b| replaces_prefix(&b.filters)))
        && !(matches.len() == 1 && matches[0].path.prefix().is_some())
    {
        return Err(cx.invalid(
            format!("{field}.filters"),
            "ReplacePrefixMatch needs exactly one match, of type PathPrefix",
        ));
    }
    let retry = r.retry.as_ref().map(|p| {
        p.codes
            .iter()
            .map(|&c| {
                u16::try_from(c)
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| {
                        cx.invalid(
                            format!("{field}.retry.codes"),
                            format!("{c} is not an HTTP status"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|codes| RetryPolicy::new(p.attempts, codes, millis(p.backoff_ms)))
    });
    Ok(Rule {
        name: (!r.name.is_empty()).then(|| r.name.clone()),
        matches,
        filters,
        backends,
        request_timeout: millis(r.request_timeout_ms),
        backend_request_timeout: millis(r.backend_request_timeout_ms),
        retry: retry.transpose()?,
    })
}

fn route_match(cx: &Cx<'_>, field: &str, m: &pb::RouteMatch) -> Result<Match, RouteError> {
    let path = match &m.path {
        None => PathMatch::Prefix {
            prefix: String::new(),
            len: 1,
        },
        Some(p) => {
            let f = format!("{field}.path.value");
            match pb::MatchType::try_from(p.r#type) {
                Ok(pb::MatchType::Exact) => {
                    check_path(cx, &f, &p.value)?;
                    PathMatch::Exact(p.value.clone())
                }
                Ok(pb::MatchType::PathPrefix | pb::MatchType::Unspecified) => {
                    let value = if p.value.is_empty() {
                        "/"
                    } else {
                        p.value.as_str()
                    };
                    check_path(cx, &f, value)?;
                    PathMatch::Prefix {
                        prefix: value.trim_end_matches('/').to_string(),
                        len: value.len(),
                    }
                }
                Ok(pb::MatchType::RegularExpression) => PathMatch::Regex(cx.regex(&f, &p.value)?),
                Err(_) => {
                    return Err(cx.invalid(format!("{field}.path.type"), "unknown match type"));
                }
            }
        }
    };
    let method = match m.method.as_str() {
        "" => None,
        s => Some(Method::from_bytes(s.as_bytes()).map_err(|_| {
            cx.invalid(format!("{field}.method"), format!("{s:?} is not a method"))
        })?),
    };
    let mut headers: Vec<HeaderMatch> = Vec::with_capacity(m.headers.len());
    for (i, h) in m.headers.iter().enumerate() {
        let f = format!("{field}.headers[{i}]");
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            cx.invalid(
                format!("{f}.name"),
                format!("{:?} is not a header name", h.name),
            )
        })?;
        let value = value_match(cx, &f, h)?;
        // "If multiple entries specify equivalent header names, only the first entry with
        // an equivalent name MUST be considered for a match."
        if !headers.iter().any(|x| x.name == name) {
            headers.push(HeaderMatch { name, value });
        }
    }
    let mut query_params: Vec<QueryMatch> = Vec::with_capacity(m.query_params.len());
    for (i, q) in m.query_params.iter().enumerate() {
        let f = format!("{field}.query_params[{i}]");
        if q.name.is_empty() {
            return Err(cx.invalid(format!("{f}.name"), "empty query parameter name"));
        }
        let value = value_match(cx, &f, q)?;
        if !query_params.iter().any(|x| x.name == q.name) {
            query_params.push(QueryMatch {
                name: q.name.clone(),
                value,
            });
        }
    }
    Ok(Match {
        path,
        method,
        headers,
        query_params,
    })
}

fn check_path(cx: &Cx<'_>, field: &str, value: &str) -> Result<(), RouteError> {
    if !value.starts_with('/') || value.len() > MAX_PATTERN_LEN {
        return Err(cx.invalid(
            field,
            format!("{value:?} must start with '/' and have at most {MAX_PATTERN_LEN} characters"),
        ));
    }
    Ok(())
}

fn value_match(cx: &Cx<'_>, field: &str, h: &pb::HeaderMatch) -> Result<ValueMatch, RouteError> {
    match pb::MatchType::try_from(h.r#type) {
        Ok(pb::MatchType::Exact | pb::MatchType::Unspecified) => {
            Ok(ValueMatch::Exact(h.value.clone()))
        }
        Ok(pb::MatchType::RegularExpression) => Ok(ValueMatch::Regex(
            cx.regex(&format!("{field}.value"), &h.value)?,
        )),
        _ => Err(cx.invalid(
            format!("{field}.type"),
            "must be Exact or RegularExpression",
        )),
    }
}
