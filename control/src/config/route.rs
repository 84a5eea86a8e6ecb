//! Gateway API `HTTPRoute` and `GRPCRoute` documents: their parents, rules, filters and
//! backends, validated and compiled into wire rules. Whether a route becomes a mesh `Route`
//! (Service parents), a gateway `ApiRoute` (`weft` Gateway parents) or both is decided in
//! [`super::edge`], which sees every Gateway.

use std::collections::BTreeMap;

use serde::Deserialize;
use weft_proto::discovery::v1 as pb;

use super::{
    document::Meta,
    gateway::{Backend, GATEWAY_GROUP, WEFT_GROUP},
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
    pub filters: Vec<FilterSpec>,
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
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
}

/// A `backendRef` without weight or filters (RequestMirror's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendObjectRefSpec {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
    pub port: Option<i64>,
}

/// One Gateway API filter: `type` names which of the other fields is set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilterSpec {
    #[serde(rename = "type")]
    pub filter_type: String,
    pub request_header_modifier: Option<HeaderModifierSpec>,
    pub response_header_modifier: Option<HeaderModifierSpec>,
    #[serde(rename = "urlRewrite")]
    pub url_rewrite: Option<UrlRewriteSpec>,
    pub request_redirect: Option<RequestRedirectSpec>,
    pub request_mirror: Option<RequestMirrorSpec>,
    pub extension_ref: Option<serde::de::IgnoredAny>,
    #[serde(rename = "cors")]
    pub cors: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifierSpec {
    #[serde(default)]
    pub set: Vec<HeaderValueSpec>,
    #[serde(default)]
    pub add: Vec<HeaderValueSpec>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueSpec {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlRewriteSpec {
    pub hostname: Option<String>,
    pub path: Option<PathModifierSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathModifierSpec {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub modifier_type: String,
    pub replace_full_path: Option<String>,
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestRedirectSpec {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifierSpec>,
    pub port: Option<i64>,
    pub status_code: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestMirrorSpec {
    pub backend_ref: BackendObjectRefSpec,
    pub percent: Option<i64>,
    pub fraction: Option<FractionSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FractionSpec {
    pub numerator: i64,
    pub denominator: Option<i64>,
}

// --- GRPCRoute ---

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRefSpec>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRouteRule {
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRefSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcRouteMatch {
    pub method: Option<GrpcMethodMatchSpec>,
    #[serde(default)]
    pub headers: Vec<ValueMatchSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcMethodMatchSpec {
    #[serde(rename = "type")]
    pub match_type: Option<GrpcMatchTypeSpec>,
    pub service: Option<String>,
    pub method: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum GrpcMatchTypeSpec {
    Exact,
    RegularExpression,
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

/// A route's rules and parents, compiled; the caller decides which resources it becomes.
#[derive(Debug, Clone, Default)]
pub struct CompiledRoute {
    pub parents: Vec<pb::ParentRef>,
    pub hostnames: Vec<String>,
    pub rules: Vec<pb::RouteRule>,
}

/// The validated `weft.dev` Backends by `namespace/name`, which `backendRefs` resolve to.
pub type Backends = BTreeMap<String, Backend>;

/// Which Gateway API route kind a rule comes from: it decides which filters are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouteKind {
    Http,
    Grpc,
}

pub fn http_route(
    meta: &Meta,
    spec: &HttpRouteSpec,
    backends: &Backends,
    c: &mut Checker<'_>,
) -> CompiledRoute {
    let parents = parent_refs(&spec.parent_refs, true, c);
    let hostnames = hostnames(&spec.hostnames, c);
    let mut rules = Vec::new();
    for (i, r) in spec.rules.iter().enumerate() {
        rules.push(rule(meta, &format!("spec.rules[{i}]"), r, backends, c));
    }
    CompiledRoute {
        parents,
        hostnames,
        rules,
    }
}

/// The `Route` resource of an HTTPRoute attached to Services (the mesh's east-west
/// routing), as before Gateways existed: every parent is listed.
pub fn mesh_route(meta: &Meta, compiled: &CompiledRoute) -> pb::Route {
    pb::Route {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        parents: compiled.parents.clone(),
        hostnames: compiled.hostnames.clone(),
        rules: compiled.rules.clone(),
    }
}

fn parent_refs(refs: &[ParentRefSpec], services: bool, c: &mut Checker<'_>) -> Vec<pb::ParentRef> {
    let mut parents = Vec::new();
    for (i, p) in refs.iter().enumerate() {
        let at = format!("spec.parentRefs[{i}]");
        let kind = p.kind.clone().unwrap_or_else(|| "Gateway".to_string());
        let group_ok = matches!(
            (kind.as_str(), p.group.as_deref()),
            ("Service", None | Some("" | "core")) | ("Gateway", None | Some(GATEWAY_GROUP))
        );
        if !group_ok {
            c.error(
                format!("{at}.kind"),
                format!(
                    "a route attaches to a Service (group \"\") or a Gateway \
                     (group {GATEWAY_GROUP}), got kind {kind:?} group {:?}",
                    p.group.as_deref().unwrap_or("")
                ),
            );
        }
        if kind == "Service" && !services {
            c.warning(
                format!("{at}.kind"),
                "a GRPCRoute attaches to weft Gateways only (no mesh gRPC routing); this \
                 parent is ignored",
            );
            continue;
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
    if refs.is_empty() {
        c.error(
            "spec.parentRefs",
            "must name at least one Service or Gateway",
        );
    }
    parents
}

fn hostnames(list: &[String], c: &mut Checker<'_>) -> Vec<String> {
    for (i, h) in list.iter().enumerate() {
        c.check(format!("spec.hostnames[{i}]"), validate::hostname(h, true));
    }
    list.to_vec()
}

fn rule(
    meta: &Meta,
    at: &str,
    r: &HttpRouteRule,
    backends: &Backends,
    c: &mut Checker<'_>,
) -> pb::RouteRule {
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
        let headers = value_matches(&mat, "headers", &m.headers, c);
        let query_params = value_matches(&mat, "queryParams", &m.query_params, c);
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
    // ReplacePrefixMatch replaces what a PathPrefix match matched: every match of the rule
    // must be one (a match without a path is PathPrefix `/`).
    let prefix_only = r.matches.iter().all(|m| {
        m.path.as_ref().is_none_or(|p| {
            p.match_type.unwrap_or(MatchTypeSpec::PathPrefix) == MatchTypeSpec::PathPrefix
        })
    });
    let filters = filters(
        meta,
        &format!("{at}.filters"),
        &r.filters,
        RouteKind::Http,
        prefix_only,
        false,
        backends,
        c,
    );
    let backends_out = backend_refs(
        meta,
        at,
        &r.backend_refs,
        RouteKind::Http,
        prefix_only,
        backends,
        c,
    );

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
        backends: backends_out,
        request_timeout_ms,
        backend_request_timeout_ms,
        retry,
        filters,
        name: r.name.clone().unwrap_or_default(),
    }
}

fn value_matches(
    mat: &str,
    field: &str,
    list: &[ValueMatchSpec],
    c: &mut Checker<'_>,
) -> Vec<pb::HeaderMatch> {
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
            } else if field == "headers" {
                c.check(
                    format!("{mat}.{field}[{k}].name"),
                    validate::header_name(&h.name),
                );
            }
            pb::HeaderMatch {
                r#type: match_type_pb(t).into(),
                name: h.name.clone(),
                value: h.value.clone(),
            }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn backend_refs(
    meta: &Meta,
    at: &str,
    refs: &[BackendRefSpec],
    kind: RouteKind,
    prefix_only: bool,
    backends: &Backends,
    c: &mut Checker<'_>,
) -> Vec<pb::BackendRef> {
    let mut out = Vec::new();
    for (j, b) in refs.iter().enumerate() {
        let bat = format!("{at}.backendRefs[{j}]");
        let target = BackendObjectRefSpec {
            group: b.group.clone(),
            kind: b.kind.clone(),
            name: b.name.clone(),
            namespace: b.namespace.clone(),
            port: b.port,
        };
        let mut backend = backend_ref(meta, &bat, &target, backends, c);
        let weight = b.weight.unwrap_or(DEFAULT_WEIGHT);
        if !(0..=MAX_WEIGHT).contains(&weight) {
            c.error(
                format!("{bat}.weight"),
                format!("must be 0-{MAX_WEIGHT}, got {weight}"),
            );
        }
        backend.weight = weight.clamp(0, MAX_WEIGHT) as u32;
        backend.filters = filters(
            meta,
            &format!("{bat}.filters"),
            &b.filters,
            kind,
            prefix_only,
            true,
            backends,
            c,
        );
        out.push(backend);
    }
    out
}

/// A Service (`port` required) or a `weft.dev` Backend (resolved to its URL).
fn backend_ref(
    meta: &Meta,
    at: &str,
    b: &BackendObjectRefSpec,
    backends: &Backends,
    c: &mut Checker<'_>,
) -> pb::BackendRef {
    let kind = b.kind.clone().unwrap_or_else(|| "Service".to_string());
    let group = b.group.as_deref().unwrap_or("");
    match (group, kind.as_str()) {
        ("" | "core", "Service") => {
            let port = match b.port {
                None => {
                    c.error(format!("{at}.port"), "required for a Service backend");
                    0
                }
                Some(p) => c
                    .check(format!("{at}.port"), validate::port(p))
                    .unwrap_or(0),
            };
            pb::BackendRef {
                kind,
                name: b.name.clone(),
                namespace: b.namespace.clone().unwrap_or_default(),
                port,
                ..Default::default()
            }
        }
        (WEFT_GROUP, "Backend") => {
            if let Some(ns) = &b.namespace
                && *ns != meta.namespace
            {
                c.error(
                    format!("{at}.namespace"),
                    format!(
                        "a Backend must be in the route's namespace {:?}, got {ns:?} \
                         (ReferenceGrant is not supported)",
                        meta.namespace
                    ),
                );
            }
            if b.port.is_some() {
                c.error(
                    format!("{at}.port"),
                    "not allowed for a Backend: its url carries the port",
                );
            }
            let key = format!("{}/{}", meta.namespace, b.name);
            let found = backends.get(&key);
            if found.is_none() {
                c.error(
                    format!("{at}.name"),
                    format!(
                        "no Backend {:?} (weft.dev/v1alpha1) is defined in namespace {:?}",
                        b.name, meta.namespace
                    ),
                );
            }
            pb::BackendRef {
                kind,
                name: b.name.clone(),
                namespace: meta.namespace.clone(),
                port: 0,
                url: found.map(|f| f.url.clone()).unwrap_or_default(),
                ca_pem: found.map(|f| f.ca_pem.clone()).unwrap_or_default(),
                ..Default::default()
            }
        }
        _ => {
            c.error(
                format!("{at}.kind"),
                format!(
                    "backends must be Services (group \"\") or Backends (group {WEFT_GROUP}), \
                     got kind {kind:?} group {group:?}"
                ),
            );
            pb::BackendRef::default()
        }
    }
}

/// Validates and compiles a rule's (or a backend's) filters with Gateway API's rules: the
/// field named by `type` and no other is set; at most one of each kind but RequestMirror;
/// no RequestRedirect with URLRewrite; ReplacePrefixMatch only under PathPrefix matches.
#[allow(clippy::too_many_arguments)]
fn filters(
    meta: &Meta,
    at: &str,
    list: &[FilterSpec],
    kind: RouteKind,
    prefix_only: bool,
    on_backend: bool,
    backends: &Backends,
    c: &mut Checker<'_>,
) -> Vec<pb::RouteFilter> {
    use pb::route_filter::Filter;
    let mut out = Vec::new();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, f) in list.iter().enumerate() {
        let fat = format!("{at}[{i}]");
        let set: Vec<&str> = [
            ("RequestHeaderModifier", f.request_header_modifier.is_some()),
            (
                "ResponseHeaderModifier",
                f.response_header_modifier.is_some(),
            ),
            ("URLRewrite", f.url_rewrite.is_some()),
            ("RequestRedirect", f.request_redirect.is_some()),
            ("RequestMirror", f.request_mirror.is_some()),
            ("ExtensionRef", f.extension_ref.is_some()),
            ("CORS", f.cors.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
        .collect();
        let ty = f.filter_type.as_str();
        let allowed: &[&str] = match (kind, on_backend) {
            (RouteKind::Http, false) => &[
                "RequestHeaderModifier",
                "ResponseHeaderModifier",
                "URLRewrite",
                "RequestRedirect",
                "RequestMirror",
            ],
            (RouteKind::Http, true) => &[
                "RequestHeaderModifier",
                "ResponseHeaderModifier",
                "URLRewrite",
                "RequestMirror",
            ],
            (RouteKind::Grpc, _) => &[
                "RequestHeaderModifier",
                "ResponseHeaderModifier",
                "RequestMirror",
            ],
        };
        if !allowed.contains(&ty) {
            c.error(
                format!("{fat}.type"),
                format!(
                    "must be one of {}, got {ty:?}{}",
                    allowed.join(", "),
                    if on_backend && ty == "RequestRedirect" {
                        " (a redirect belongs on the rule, not on one backend)"
                    } else {
                        ""
                    }
                ),
            );
            continue;
        }
        let field = field_of(ty);
        if set != [ty] {
            c.error(
                fat.clone(),
                format!("type {ty} needs {field} set, and no other filter field"),
            );
            continue;
        }
        if ty != "RequestMirror"
            && let Some(first) = seen.insert(ty, i)
        {
            c.error(
                format!("{fat}.type"),
                format!("{ty} may appear once per rule; it is already at {at}[{first}]"),
            );
        }
        let filter = match ty {
            "RequestHeaderModifier" => f
                .request_header_modifier
                .as_ref()
                .map(|m| Filter::RequestHeaderModifier(header_modifier(&format!("{fat}.{field}"), m, c))),
            "ResponseHeaderModifier" => f
                .response_header_modifier
                .as_ref()
                .map(|m| Filter::ResponseHeaderModifier(header_modifier(&format!("{fat}.{field}"), m, c))),
            "URLRewrite" => f.url_rewrite.as_ref().map(|u| {
                let uat = format!("{fat}.urlRewrite");
                if let Some(h) = &u.hostname {
                    c.check(format!("{uat}.hostname"), validate::hostname(h, false));
                }
                Filter::UrlRewrite(pb::UrlRewrite {
                    hostname: u.hostname.clone().unwrap_or_default(),
                    path: u
                        .path
                        .as_ref()
                        .map(|p| path_modifier(&format!("{uat}.path"), p, prefix_only, c)),
                })
            }),
            "RequestRedirect" => f.request_redirect.as_ref().map(|r| {
                let rat = format!("{fat}.requestRedirect");
                if let Some(s) = &r.scheme
                    && !matches!(s.as_str(), "http" | "https")
                {
                    c.error(
                        format!("{rat}.scheme"),
                        format!("must be http or https, got {s:?}"),
                    );
                }
                if let Some(h) = &r.hostname {
                    c.check(format!("{rat}.hostname"), validate::hostname(h, false));
                }
                let port = r
                    .port
                    .and_then(|p| c.check(format!("{rat}.port"), validate::port(p)))
                    .unwrap_or(0);
                let status_code = match r.status_code {
                    None => 302,
                    Some(code @ (301 | 302 | 303 | 307 | 308)) => code as u32,
                    Some(code) => {
                        c.error(
                            format!("{rat}.statusCode"),
                            format!("must be 301, 302, 303, 307 or 308, got {code}"),
                        );
                        302
                    }
                };
                Filter::RequestRedirect(pb::RequestRedirect {
                    scheme: r.scheme.clone().unwrap_or_default(),
                    hostname: r.hostname.clone().unwrap_or_default(),
                    path: r
                        .path
                        .as_ref()
                        .map(|p| path_modifier(&format!("{rat}.path"), p, prefix_only, c)),
                    port,
                    status_code,
                })
            }),
            "RequestMirror" => f.request_mirror.as_ref().map(|m| {
                let mat = format!("{fat}.requestMirror");
                let backend = backend_ref(meta, &format!("{mat}.backendRef"), &m.backend_ref, backends, c);
                let percent = match (m.percent, &m.fraction) {
                    (Some(_), Some(_)) => {
                        c.error(mat.clone(), "give percent or fraction, not both");
                        100
                    }
                    (Some(p), None) => {
                        if !(1..=100).contains(&p) {
                            c.error(
                                format!("{mat}.percent"),
                                format!("must be 1-100 (leave the filter out to mirror nothing), got {p}"),
                            );
                        }
                        p.clamp(1, 100) as u32
                    }
                    (None, Some(fr)) => {
                        let den = fr.denominator.unwrap_or(100);
                        if den <= 0 {
                            c.error(
                                format!("{mat}.fraction.denominator"),
                                format!("must be positive, got {den}"),
                            );
                            100
                        } else if fr.numerator < 1 || fr.numerator > den {
                            c.error(
                                format!("{mat}.fraction.numerator"),
                                format!("must be 1-{den} (the denominator), got {}", fr.numerator),
                            );
                            100
                        } else {
                            // Rounded up: a small fraction still mirrors something.
                            ((fr.numerator * 100 + den - 1) / den).clamp(1, 100) as u32
                        }
                    }
                    (None, None) => 100,
                };
                Filter::RequestMirror(pb::RequestMirror {
                    backend: Some(backend),
                    percent,
                })
            }),
            _ => None,
        };
        if let Some(filter) = filter {
            out.push(pb::RouteFilter {
                filter: Some(filter),
            });
        }
    }
    if seen.contains_key("URLRewrite") && seen.contains_key("RequestRedirect") {
        c.error(
            at,
            "RequestRedirect and URLRewrite cannot be used together: a redirect sends \
             nothing upstream to rewrite",
        );
    }
    out
}

/// The filter field `type` names.
fn field_of(ty: &str) -> &'static str {
    match ty {
        "RequestHeaderModifier" => "requestHeaderModifier",
        "ResponseHeaderModifier" => "responseHeaderModifier",
        "URLRewrite" => "urlRewrite",
        "RequestRedirect" => "requestRedirect",
        "RequestMirror" => "requestMirror",
        "CORS" => "cors",
        _ => "extensionRef",
    }
}

fn header_modifier(at: &str, m: &HeaderModifierSpec, c: &mut Checker<'_>) -> pb::HeaderModifier {
    let mut values = |field: &str, list: &[HeaderValueSpec]| -> Vec<pb::HeaderValue> {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut out = Vec::new();
        for (i, h) in list.iter().enumerate() {
            let hat = format!("{at}.{field}[{i}].name");
            c.check(&hat, validate::header_name(&h.name));
            let name = h.name.to_ascii_lowercase();
            if let Some(first) = seen.insert(name.clone(), i) {
                c.error(
                    &hat,
                    format!("header {:?} is already named at {field}[{first}]", h.name),
                );
            }
            out.push(pb::HeaderValue {
                name,
                value: h.value.clone(),
            });
        }
        out
    };
    let set = values("set", &m.set);
    let add = values("add", &m.add);
    if m.set.is_empty() && m.add.is_empty() && m.remove.is_empty() {
        c.error(at, "must set, add or remove at least one header");
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut remove = Vec::new();
    for (i, name) in m.remove.iter().enumerate() {
        let hat = format!("{at}.remove[{i}]");
        c.check(&hat, validate::header_name(name));
        let lower = name.to_ascii_lowercase();
        if let Some(first) = seen.insert(lower.clone(), i) {
            c.error(
                &hat,
                format!("header {name:?} is already named at remove[{first}]"),
            );
        }
        remove.push(lower);
    }
    pb::HeaderModifier { set, add, remove }
}

fn path_modifier(
    at: &str,
    p: &PathModifierSpec,
    prefix_only: bool,
    c: &mut Checker<'_>,
) -> pb::PathModifier {
    let (ty, value) = match p.modifier_type.as_str() {
        "ReplaceFullPath" => {
            if p.replace_prefix_match.is_some() {
                c.error(
                    format!("{at}.replacePrefixMatch"),
                    "not allowed with type ReplaceFullPath",
                );
            }
            (pb::PathModifierType::Full, p.replace_full_path.clone())
        }
        "ReplacePrefixMatch" => {
            if p.replace_full_path.is_some() {
                c.error(
                    format!("{at}.replaceFullPath"),
                    "not allowed with type ReplacePrefixMatch",
                );
            }
            if !prefix_only {
                c.error(
                    format!("{at}.type"),
                    "ReplacePrefixMatch needs every match of the rule to be a PathPrefix \
                     path match",
                );
            }
            (pb::PathModifierType::Prefix, p.replace_prefix_match.clone())
        }
        other => {
            c.error(
                format!("{at}.type"),
                format!("must be ReplaceFullPath or ReplacePrefixMatch, got {other:?}"),
            );
            return pb::PathModifier::default();
        }
    };
    let field = if ty == pb::PathModifierType::Full {
        "replaceFullPath"
    } else {
        "replacePrefixMatch"
    };
    let value = match value {
        None => {
            c.error(
                format!("{at}.{field}"),
                format!("required for type {}", p.modifier_type),
            );
            String::new()
        }
        Some(v) => {
            if !v.starts_with('/') {
                c.error(
                    format!("{at}.{field}"),
                    format!("must start with '/', got {v:?}"),
                );
            }
            v
        }
    };
    pb::PathModifier {
        r#type: ty.into(),
        value,
    }
}

// === GRPCRoute ===

pub fn grpc_route(
    meta: &Meta,
    spec: &GrpcRouteSpec,
    backends: &Backends,
    c: &mut Checker<'_>,
) -> CompiledRoute {
    let parents = parent_refs(&spec.parent_refs, false, c);
    let hostnames = hostnames(&spec.hostnames, c);
    let mut rules = Vec::new();
    for (i, r) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        let mut matches = Vec::new();
        for (j, m) in r.matches.iter().enumerate() {
            let mat = format!("{at}.matches[{j}]");
            let path = m
                .method
                .as_ref()
                .and_then(|method| grpc_method_path(&format!("{mat}.method"), method, c));
            matches.push(pb::RouteMatch {
                path,
                headers: value_matches(&mat, "headers", &m.headers, c),
                method: String::new(),
                query_params: Vec::new(),
            });
        }
        let filters = filters(
            meta,
            &format!("{at}.filters"),
            &r.filters,
            RouteKind::Grpc,
            false,
            false,
            backends,
            c,
        );
        let backends_out = backend_refs(
            meta,
            &at,
            &r.backend_refs,
            RouteKind::Grpc,
            false,
            backends,
            c,
        );
        rules.push(pb::RouteRule {
            matches,
            backends: backends_out,
            filters,
            name: r.name.clone().unwrap_or_default(),
            ..Default::default()
        });
    }
    CompiledRoute {
        parents,
        hostnames,
        rules,
    }
}

/// A gRPC method match as a path match: gRPC calls `POST /package.Service/Method`.
fn grpc_method_path(
    at: &str,
    m: &GrpcMethodMatchSpec,
    c: &mut Checker<'_>,
) -> Option<pb::PathMatch> {
    let ty = m.match_type.unwrap_or(GrpcMatchTypeSpec::Exact);
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    if service.is_none() && method.is_none() {
        c.error(at, "must give service, method or both");
        return None;
    }
    let path = |t: pb::MatchType, value: String| pb::PathMatch {
        r#type: t.into(),
        value,
    };
    if ty == GrpcMatchTypeSpec::RegularExpression {
        for (field, v) in [("service", service), ("method", method)] {
            if let Some(v) = v
                && v.contains('/')
            {
                c.error(
                    format!("{at}.{field}"),
                    format!("must not contain '/', got {v:?}"),
                );
            }
        }
        let service = service.map_or("[^/]+".to_string(), |s| format!("(?:{s})"));
        let method = method.map_or("[^/]+".to_string(), |m| format!("(?:{m})"));
        return Some(path(
            pb::MatchType::RegularExpression,
            format!("^/{service}/{method}$"),
        ));
    }
    if let Some(s) = service
        && !grpc_service_name(s)
    {
        c.error(
            format!("{at}.service"),
            format!("must be a gRPC service name such as helloworld.Greeter, got {s:?}"),
        );
    }
    if let Some(m) = method
        && !grpc_identifier(m)
    {
        c.error(
            format!("{at}.method"),
            format!("must be a gRPC method name such as SayHello, got {m:?}"),
        );
    }
    Some(match (service, method) {
        (Some(s), Some(m)) => path(pb::MatchType::Exact, format!("/{s}/{m}")),
        // PathPrefix is segment-wise: `/svc` matches `/svc/Any` and not `/svcX/Any`.
        (Some(s), None) => path(pb::MatchType::PathPrefix, format!("/{s}")),
        (None, Some(m)) => path(pb::MatchType::RegularExpression, format!("^/[^/]+/{m}$")),
        (None, None) => return None,
    })
}

fn grpc_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    b.first()
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn grpc_service_name(s: &str) -> bool {
    s.strip_prefix('.')
        .unwrap_or(s)
        .split('.')
        .all(grpc_identifier)
}

fn match_type_pb(t: MatchTypeSpec) -> pb::MatchType {
    match t {
        MatchTypeSpec::Exact => pb::MatchType::Exact,
        MatchTypeSpec::PathPrefix => pb::MatchType::PathPrefix,
        MatchTypeSpec::RegularExpression => pb::MatchType::RegularExpression,
    }
}
