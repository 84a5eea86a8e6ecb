//! Gateway API `HTTPRoute` documents, mapped onto the `Route` resource.

use serde::Deserialize;
use weft_proto::discovery::v1 as pb;

use super::{
    document::Meta,
    validate::{self, Checker},
};

/// Gateway API's cap on a backend weight.
const MAX_WEIGHT: i64 = 1_000_000;
/// Gateway API's default backend weight.
const DEFAULT_WEIGHT: i64 = 1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRefSpec>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRefSpec {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub section_name: Option<String>,
    pub port: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteRule {
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRefSpec>,
    pub timeouts: Option<Timeouts>,
    pub retry: Option<Retry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteMatch {
    pub path: Option<PathMatchSpec>,
    #[serde(default)]
    pub headers: Vec<ValueMatchSpec>,
    #[serde(default)]
    pub query_params: Vec<ValueMatchSpec>,
    pub method: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatchSpec {
    #[serde(rename = "type")]
    pub match_type: Option<MatchTypeSpec>,
    pub value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatchSpec {
    #[serde(rename = "type")]
    pub match_type: Option<MatchTypeSpec>,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum MatchTypeSpec {
    Exact,
    PathPrefix,
    RegularExpression,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRefSpec {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i64>,
    pub weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    pub request: Option<String>,
    pub backend_request: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    pub attempts: Option<i64>,
    #[serde(default)]
    pub codes: Vec<i64>,
    pub backoff: Option<String>,
}

pub fn http_route(meta: &Meta, spec: &HttpRouteSpec, c: &mut Checker<'_>) -> pb::Route {
    let mut parents = Vec::new();
    for (i, p) in spec.parent_refs.iter().enumerate() {
        let at = format!("spec.parentRefs[{i}]");
        let kind = p.kind.clone().unwrap_or_else(|| "Gateway".to_string());
        let group_ok = matches!(
            (kind.as_str(), p.group.as_deref()),
            ("Service", None | Some("" | "core"))
                | ("Gateway", None | Some("gateway.networking.k8s.io"))
        );
        if !group_ok {
            c.error(
                format!("{at}.kind"),
                format!(
                    "a route attaches to a Service (group \"\") or a Gateway \
                     (group gateway.networking.k8s.io), got kind {kind:?} group {:?}",
                    p.group.as_deref().unwrap_or("")
                ),
            );
        }
        let port = p
            .port
            .and_then(|port| c.check(format!("{at}.port"), validate::port(port)))
            .unwrap_or(0);
        parents.push(pb::ParentRef {
            kind,
            name: p.name.clone(),
            namespace: p.namespace.clone().unwrap_or_default(),
            port,
            section_name: p.section_name.clone().unwrap_or_default(),
        });
    }
    if spec.parent_refs.is_empty() {
        c.error(
            "spec.parentRefs",
            "must name at least one Service or Gateway",
        );
    }
    for (i, h) in spec.hostnames.iter().enumerate() {
        let bare = h.strip_prefix("*.").unwrap_or(h);
        c.check(
            format!("spec.hostnames[{i}]"),
            validate::dns_subdomain(bare),
        );
    }

    let mut rules = Vec::new();
    for (i, r) in spec.rules.iter().enumerate() {
        rules.push(rule(&format!("spec.rules[{i}]"), r, c));
    }
    pb::Route {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        parents,
        hostnames: spec.hostnames.clone(),
        rules,
    }
}

fn rule(at: &str, r: &HttpRouteRule, c: &mut Checker<'_>) -> pb::RouteRule {
    let mut matches = Vec::new();
    for (j, m) in r.matches.iter().enumerate() {
        let mat = format!("{at}.matches[{j}]");
        let path = m.path.as_ref().map(|p| {
            let match_type = p.match_type.unwrap_or(MatchTypeSpec::PathPrefix);
            let value = p.value.clone().unwrap_or_else(|| "/".to_string());
            if match_type != MatchTypeSpec::RegularExpression && !value.starts_with('/') {
                c.error(
                    format!("{mat}.path.value"),
                    format!("must start with '/', got {value:?}"),
                );
            }
            pb::PathMatch {
                r#type: match_type_pb(match_type).into(),
                value,
            }
        });
        let mut values = |field: &str, list: &[ValueMatchSpec]| -> Vec<pb::HeaderMatch> {
            list.iter()
                .enumerate()
                .map(|(k, h)| {
                    let t = h.match_type.unwrap_or(MatchTypeSpec::Exact);
                    if t == MatchTypeSpec::PathPrefix {
                        c.error(
                            format!("{mat}.{field}[{k}].type"),
                            "must be Exact or RegularExpression",
                        );
                    }
                    if h.name.is_empty() {
                        c.error(format!("{mat}.{field}[{k}].name"), "must not be empty");
                    }
                    pb::HeaderMatch {
                        r#type: match_type_pb(t).into(),
                        name: h.name.clone(),
                        value: h.value.clone(),
                    }
                })
                .collect()
        };
        let headers = values("headers", &m.headers);
        let query_params = values("queryParams", &m.query_params);
        if let Some(method) = &m.method
            && !method.bytes().all(|b| b.is_ascii_uppercase())
        {
            c.error(
                format!("{mat}.method"),
                format!("must be an upper-case HTTP method such as GET, got {method:?}"),
            );
        }
        matches.push(pb::RouteMatch {
            path,
            headers,
            method: m.method.clone().unwrap_or_default(),
            query_params,
        });
    }

    let mut backends = Vec::new();
    for (j, b) in r.backend_refs.iter().enumerate() {
        let bat = format!("{at}.backendRefs[{j}]");
        let kind = b.kind.clone().unwrap_or_else(|| "Service".to_string());
        if kind != "Service" || !matches!(b.group.as_deref(), None | Some("" | "core")) {
            c.error(
                format!("{bat}.kind"),
                format!("backends must be Services (group \"\"), got kind {kind:?}"),
            );
        }
        let port = match b.port {
            None => {
                c.error(format!("{bat}.port"), "required for a Service backend");
                0
            }
            Some(p) => c
                .check(format!("{bat}.port"), validate::port(p))
                .unwrap_or(0),
        };
        let weight = b.weight.unwrap_or(DEFAULT_WEIGHT);
        if !(0..=MAX_WEIGHT).contains(&weight) {
            c.error(
                format!("{bat}.weight"),
                format!("must be 0-{MAX_WEIGHT}, got {weight}"),
            );
        }
        backends.push(pb::BackendRef {
            kind,
            name: b.name.clone(),
            namespace: b.namespace.clone().unwrap_or_default(),
            port,
            weight: weight.clamp(0, MAX_WEIGHT) as u32,
            ..Default::default()
        });
    }

    let mut duration = |path: String, value: &Option<String>| -> u64 {
        value
            .as_deref()
            .and_then(|v| c.check(path, validate::duration_ms(v)))
            .unwrap_or(0)
    };
    let timeouts = r.timeouts.as_ref();
    let request_timeout_ms = duration(
        format!("{at}.timeouts.request"),
        &timeouts.and_then(|t| t.request.clone()),
    );
    let backend_request_timeout_ms = duration(
        format!("{at}.timeouts.backendRequest"),
        &timeouts.and_then(|t| t.backend_request.clone()),
    );
    let backoff_ms = duration(
        format!("{at}.retry.backoff"),
        &r.retry.as_ref().and_then(|t| t.backoff.clone()),
    );
    if request_timeout_ms > 0 && backend_request_timeout_ms > request_timeout_ms {
        c.error(
            format!("{at}.timeouts.backendRequest"),
            "must not exceed timeouts.request",
        );
    }
    let retry = r.retry.as_ref().map(|retry| {
        let attempts = retry.attempts.unwrap_or(1);
        if !(0..=100).contains(&attempts) {
            c.error(
                format!("{at}.retry.attempts"),
                format!("must be 0-100, got {attempts}"),
            );
        }
        let mut codes = Vec::new();
        for (k, code) in retry.codes.iter().enumerate() {
            if !(400..=599).contains(code) {
                c.error(
                    format!("{at}.retry.codes[{k}]"),
                    format!("must be an HTTP status 400-599, got {code}"),
                );
            } else {
                codes.push(*code as u32);
            }
        }
        pb::RetryPolicy {
            attempts: attempts.clamp(0, 100) as u32,
            codes,
            backoff_ms,
        }
    });

    pb::RouteRule {
        matches,
        backends,
        request_timeout_ms,
        backend_request_timeout_ms,
        retry,
        ..Default::default()
    }
}

fn match_type_pb(t: MatchTypeSpec) -> pb::MatchType {
    match t {
        MatchTypeSpec::Exact => pb::MatchType::Exact,
        MatchTypeSpec::PathPrefix => pb::MatchType::PathPrefix,
        MatchTypeSpec::RegularExpression => pb::MatchType::RegularExpression,
    }
}
