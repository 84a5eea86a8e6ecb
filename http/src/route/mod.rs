//! Gateway API routing: HTTPRoute/GRPCRoute domain types converted once from the protos
//! (`model`, `convert`), the per-listener selection table (`table`), host names (`host`),
//! request matching (`matching`), filters (`filters`) and weighted backend choice
//! (`backend`).
//!
//! Per request, a caller does:
//!
//! 1. `table.select_parts(&parts)` -> `Selected` (or 404);
//! 2. `apply_request_filters(&rule.filters, ..)` -> forward, or answer the redirect;
//!    `mirror_targets(&rule.filters, rand)` for copies;
//! 3. `pick(rule, rand)` -> the backend (or 500), then its own `backend.filters` the same
//!    way;
//! 4. on the response, `apply_response_filters` with the rule's then the backend's filters;
//! 5. retries per `rule.retry` and the process's `retry::RetryBudget`.
//!
//! Everything here is pure: no I/O, no clock, no random source. Callers pass the random
//! numbers (`rand: u32`) so the choices are testable.
//!
//! The rules followed are those of the Gateway API `HTTPRoute` type documentation
//! (`apis/v1/httproute_types.go`): hostname intersection and precedence on
//! `HTTPRouteSpec.hostnames`, match precedence on `HTTPRouteRule.matches`, prefix
//! replacement on `HTTPPathModifier.replacePrefixMatch`, redirect ports on
//! `HTTPRequestRedirectFilter.port`.

mod backend;
mod convert;
mod convert_filter;
mod filters;
mod host;
mod matching;
mod model;
mod table;

#[cfg(test)]
mod convert_tests;
#[cfg(test)]
mod filters_tests;
#[cfg(test)]
mod table_tests;

pub use backend::{pick, pick_from};
pub use filters::{
    FilterError, RedirectContext, RequestOutcome, apply_request_filters, apply_response_filters,
    mirror_targets, replace_prefix,
};
pub use host::{HostPattern, request_host};
pub use model::{
    Backend, BackendKind, Filter, HeaderMatch, HeaderModifier, Match, Mirror, ParentRef, PathMatch,
    PathModifier, QueryMatch, Redirect, RedirectScheme, Route, RouteKey, RouteKind, Rule,
    UrlRewrite, ValueMatch,
};
pub use table::{ListenerRef, RouteTable, Selected};

/// A route, listener or filter that cannot be used as given. Each names the route (or
/// listener) and the field, so the operator can find the document to fix.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A field has a value this gateway does not accept.
    #[error("{object}: {field}: {reason}")]
    Invalid {
        /// `namespace/name` of the route, or the listener.
        object: String,
        /// The field's path, e.g. `rules[0].matches[1].path.value`.
        field: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// A regular expression does not compile (bad RE2 syntax, or too large once compiled).
    #[error("{object}: {field}: regular expression {pattern:?} is not usable: {source}")]
    Regex {
        /// `namespace/name` of the route.
        object: String,
        /// The field's path.
        field: String,
        /// The expression as given.
        pattern: String,
        #[source]
        source: regex::Error,
    },
}
