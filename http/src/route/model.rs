//! The domain types of routes, as the table and filters use them. Built by `convert` from
//! the protos; every field is already validated (regexes compiled, header names parsed).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode, Uri};
use weft_proto::discovery::v1 as pb;

use super::host::HostPattern;
use crate::retry::RetryPolicy;

// === impl RouteKey ===

/// A route's identity, `namespace/name`. Ordered as Gateway API's precedence tie-break
/// wants: alphabetically by the string `namespace/name` (which is not the same as by
/// namespace then name: `a-b/x` sorts before `a/x`, as `-` < `/`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteKey {
    /// The route's namespace.
    pub namespace: String,
    /// The route's name.
    pub name: String,
}

impl RouteKey {
    /// The bytes of `namespace/name`, without building the string.
    fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.namespace
            .bytes()
            .chain(std::iter::once(b'/'))
            .chain(self.name.bytes())
    }
}

impl Ord for RouteKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes().cmp(other.bytes())
    }
}

impl PartialOrd for RouteKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which Gateway API kind a route came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// HTTPRoute.
    Http,
    /// GRPCRoute (its method matches arrive compiled to path matches).
    Grpc,
}

/// A parent the route attaches to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentRef {
    /// `Gateway` or `Service`.
    pub kind: String,
    /// The parent's namespace (the route's when the document gave none).
    pub namespace: String,
    /// The parent's name.
    pub name: String,
    /// A listener name (Gateway API `sectionName`); `None` means every listener.
    pub section_name: Option<String>,
    /// A port; `None` means every port.
    pub port: Option<u16>,
}

/// An HTTPRoute or GRPCRoute.
#[derive(Clone, Debug)]
pub struct Route {
    /// `namespace/name`.
    pub key: RouteKey,
    /// HTTPRoute or GRPCRoute.
    pub kind: RouteKind,
    /// What it attaches to.
    pub parents: Vec<ParentRef>,
    /// Host names it answers for; empty means every host the listener serves.
    pub hostnames: Vec<HostPattern>,
    /// Rules in document order.
    pub rules: Vec<Rule>,
    /// Creation time in milliseconds since the Unix epoch (0 when unknown), for the
    /// "oldest route first" tie-break.
    pub created_at_unix_ms: u64,
    /// The ApiPolicy that targets the route, as sent; the gateway converts it (auth and
    /// limits are not this crate's business).
    pub policy: Option<Arc<pb::ApiPolicy>>,
}

/// One rule of a route.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The rule's name, when the document gave one.
    pub name: Option<String>,
    /// Alternatives, ORed. Never empty: a rule without matches gets the Gateway API default
    /// (PathPrefix `/`) at conversion.
    pub matches: Vec<Match>,
    /// Filters applied to every request the rule takes, in order.
    pub filters: Vec<Filter>,
    /// Where requests go, by weight.
    pub backends: Vec<Backend>,
    /// The whole request's deadline (all attempts).
    pub request_timeout: Option<Duration>,
    /// Each attempt's deadline.
    pub backend_request_timeout: Option<Duration>,
    /// Retries; `None` means none.
    pub retry: Option<RetryPolicy>,
}

/// One match: every part must hold.
#[derive(Clone, Debug)]
pub struct Match {
    /// The path condition (PathPrefix `/` when the document gave none).
    pub path: PathMatch,
    /// The method; `None` matches every method.
    pub method: Option<Method>,
    /// Header conditions, ANDed; one per header name (the first given wins, as the spec
    /// says).
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions, ANDed; one per name.
    pub query_params: Vec<QueryMatch>,
}

/// How the path is matched.
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// The path equals the value.
    Exact(String),
    /// The path starts with the value on `/` boundaries. `prefix` has no trailing `/`
    /// (so `/` is stored as the empty string, matching everything); `len` is the length of
    /// the value as given, for precedence.
    Prefix {
        /// The normalized prefix.
        prefix: String,
        /// Length of the value as written in the document.
        len: usize,
    },
    /// The whole path matches the expression (compiled anchored).
    Regex(regex::Regex),
}

/// How a header or query parameter value is matched.
#[derive(Clone, Debug)]
pub enum ValueMatch {
    /// The value equals this.
    Exact(String),
    /// The whole value matches (compiled anchored).
    Regex(regex::Regex),
}

/// A header condition.
#[derive(Clone, Debug)]
pub struct HeaderMatch {
    /// The header (case-insensitive by construction).
    pub name: HeaderName,
    /// The value condition.
    pub value: ValueMatch,
}

/// A query parameter condition.
#[derive(Clone, Debug)]
pub struct QueryMatch {
    /// The parameter name (case-sensitive).
    pub name: String,
    /// The value condition.
    pub value: ValueMatch,
}

/// A Gateway API filter.
#[derive(Clone, Debug)]
pub enum Filter {
    /// RequestHeaderModifier.
    RequestHeaders(HeaderModifier),
    /// ResponseHeaderModifier.
    ResponseHeaders(HeaderModifier),
    /// URLRewrite.
    UrlRewrite(UrlRewrite),
    /// RequestRedirect.
    Redirect(Redirect),
    /// RequestMirror.
    Mirror(Mirror),
}

/// Header changes, applied set, then add, then remove (Gateway API allows one action per
/// header name, so the order only matters for documents that break that rule).
#[derive(Clone, Debug, Default)]
pub struct HeaderModifier {
    /// Replace any value.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append a value.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Delete every value.
    pub remove: Vec<HeaderName>,
}

/// How a path is rewritten or redirected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    /// ReplaceFullPath.
    Full(String),
    /// ReplacePrefixMatch: what replaces the rule's matched PathPrefix.
    Prefix(String),
}

/// URLRewrite.
#[derive(Clone, Debug)]
pub struct UrlRewrite {
    /// The new host (Host / `:authority`); `None` keeps it.
    pub hostname: Option<HeaderValue>,
    /// The new path; `None` keeps it.
    pub path: Option<PathModifier>,
}

/// A redirect's scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedirectScheme {
    /// `http`, well-known port 80.
    Http,
    /// `https`, well-known port 443.
    Https,
}

impl RedirectScheme {
    /// The scheme's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// Its well-known port.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// RequestRedirect.
#[derive(Clone, Debug)]
pub struct Redirect {
    /// `None` keeps the request's scheme.
    pub scheme: Option<RedirectScheme>,
    /// `None` keeps the request's host.
    pub hostname: Option<String>,
    /// `None` keeps the path.
    pub path: Option<PathModifier>,
    /// `None` derives it (see `filters::redirect_location`).
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308.
    pub status: StatusCode,
}

/// RequestMirror.
#[derive(Clone, Debug)]
pub struct Mirror {
    /// Where copies go.
    pub backend: Backend,
    /// Share of requests mirrored, 0-100.
    pub percent: u32,
}

/// A backend of a rule.
#[derive(Clone, Debug)]
pub struct Backend {
    /// Where it is.
    pub kind: BackendKind,
    /// Relative weight; 0 sends nothing.
    pub weight: u32,
    /// Filters for requests sent to this backend only.
    pub filters: Vec<Filter>,
}

/// Where a backend is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// A mesh service.
    Service {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Its port.
        port: u16,
    },
    /// A `weft.dev` Backend outside the mesh: `http://host:port` or `https://host:port`.
    Url {
        /// The URL (scheme and authority, validated).
        url: Uri,
        /// Extra trust anchors for `https`.
        ca_pem: Option<String>,
    },
}
