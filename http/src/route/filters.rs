//! Gateway API filters as functions over request and response parts.

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header, request, response};

use super::host::request_host;
use super::matching::prefix_matches;
use super::model::{Backend, Filter, HeaderModifier, Match, PathModifier, Redirect, UrlRewrite};

/// A filter that cannot be applied to this request.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The rewritten URI is not valid (e.g. the path has characters a URI cannot carry).
    #[error("the rewritten request target {target:?} is not a valid URI: {source}")]
    Uri {
        /// What was built.
        target: String,
        #[source]
        source: http::Error,
    },
    /// A redirect's Location could not be built: the request names no host and the filter
    /// gives none.
    #[error("cannot redirect: the request has no host and the RequestRedirect filter gives none")]
    NoHost,
    /// The Location is not a valid header value.
    #[error("the redirect location {location:?} is not a valid header value")]
    Location {
        /// What was built.
        location: String,
    },
}

/// What the request filters decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Send the (possibly modified) request upstream.
    Forward,
    /// Answer with this redirect; nothing goes upstream.
    Redirect {
        /// 301, 302, 303, 307 or 308.
        status: StatusCode,
        /// The `Location` header.
        location: HeaderValue,
    },
}

/// What a redirect needs to know about the listener the request came in on.
#[derive(Debug, Clone, Copy)]
pub struct RedirectContext {
    /// `https` on a TLS listener, `http` otherwise.
    pub https: bool,
    /// The listener's port.
    pub listener_port: u16,
}

// === impl HeaderModifier ===

impl HeaderModifier {
    /// Applies set, then add, then remove.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// Applies a rule's (or backend's) request filters in order: header changes and URL
/// rewrites modify `parts`; a redirect stops there and is returned. Mirrors are not
/// applied here (see `mirror_targets`), response header changes neither (see
/// `apply_response_filters`).
pub fn apply_request_filters(
    filters: &[Filter],
    parts: &mut request::Parts,
    matched: &Match,
    cx: RedirectContext,
) -> Result<RequestOutcome, FilterError> {
    for filter in filters {
        match filter {
            Filter::RequestHeaders(m) => m.apply(&mut parts.headers),
            Filter::UrlRewrite(r) => r.apply(parts, matched)?,
            Filter::Redirect(r) => {
                let (status, location) = r.location(parts, matched, cx)?;
                return Ok(RequestOutcome::Redirect { status, location });
            }
            Filter::ResponseHeaders(_) | Filter::Mirror(_) => {}
        }
    }
    Ok(RequestOutcome::Forward)
}

/// Applies the response header filters of `filters` (a rule's, then a backend's).
pub fn apply_response_filters(filters: &[Filter], parts: &mut response::Parts) {
    for filter in filters {
        if let Filter::ResponseHeaders(m) = filter {
            m.apply(&mut parts.headers);
        }
    }
}

/// The backends this request is mirrored to. `rand` is a uniform random number; each
/// mirror takes the request when `rand` falls in its `percent` share.
pub fn mirror_targets(filters: &[Filter], rand: u32) -> impl Iterator<Item = &Backend> {
    filters.iter().filter_map(move |f| match f {
        Filter::Mirror(m) if sampled(m.percent, rand) => Some(&m.backend),
        _ => None,
    })
}

/// Whether `rand` (uniform over u32) falls within `percent` of its range.
pub(crate) fn sampled(percent: u32, rand: u32) -> bool {
    // (rand / 2^32) < percent / 100, without floating point.
    u64::from(rand) * 100 < u64::from(percent.min(100)) << 32
}

/// The path after ReplacePrefixMatch, per the table on `HTTPPathModifier.replacePrefixMatch`:
/// the matched prefix (trailing `/` ignored) is replaced, one `/` joins the two parts, and
/// an empty result is `/`. `None` when `prefix` does not match `path`.
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> Option<String> {
    let prefix = prefix.trim_end_matches('/');
    if !prefix_matches(prefix, path) {
        return None;
    }
    let rest = &path[prefix.len()..];
    let head = replacement.trim_end_matches('/');
    let mut out = String::with_capacity(head.len() + rest.len() + 1);
    if !head.is_empty() && !head.starts_with('/') {
        out.push('/');
    }
    out.push_str(head);
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// The new path for a modifier (`None`: unchanged, including ReplacePrefixMatch on a
/// match that is not a PathPrefix, which conversion refuses).
fn modified_path(modifier: &PathModifier, path: &str, matched: &Match) -> Option<String> {
    match modifier {
        PathModifier::Full(p) => Some(p.clone()),
        PathModifier::Prefix(r) => replace_prefix(path, matched.path.prefix()?, r),
    }
}

// === impl UrlRewrite ===

impl UrlRewrite {
    /// Rewrites the host (`Host` and the URI's authority, if any) and the path (the query
    /// is kept).
    pub fn apply(&self, parts: &mut request::Parts, matched: &Match) -> Result<(), FilterError> {
        let new_path = self
            .path
            .as_ref()
            .and_then(|m| modified_path(m, parts.uri.path(), matched));
        if self.hostname.is_none() && new_path.is_none() {
            return Ok(());
        }
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        let target = |p: &str, q: Option<&str>| match q {
            Some(q) => format!("{p}?{q}"),
            None => p.to_string(),
        };
        if let Some(path) = new_path {
            let query = uri.path_and_query.as_ref().and_then(|pq| pq.query());
            let t = target(&path, query);
            uri.path_and_query =
                Some(
                    PathAndQuery::try_from(t.as_str()).map_err(|e| FilterError::Uri {
                        target: t.clone(),
                        source: e.into(),
                    })?,
                );
        }
        if let Some(host) = &self.hostname {
            parts.headers.insert(header::HOST, host.clone());
            if uri.authority.is_some() {
                uri.authority =
                    Some(
                        Authority::try_from(host.as_bytes()).map_err(|e| FilterError::Uri {
                            target: format!("{host:?}"),
                            source: e.into(),
                        })?,
                    );
            }
        }
        parts.uri = Uri::from_parts(uri).map_err(|e| FilterError::Uri {
            target: "rewritten request".into(),
            source: e.into(),
        })?;
        Ok(())
    }
}

// === impl Redirect ===

impl Redirect {
    /// The redirect's status and `Location`. Per `HTTPRequestRedirectFilter.port`: with no
    /// port given, the port is the scheme's well-known one when the filter sets a scheme,
    /// else the listener's; 80 for http and 443 for https are left out of the Location.
    pub fn location(
        &self,
        parts: &request::Parts,
        matched: &Match,
        cx: RedirectContext,
    ) -> Result<(StatusCode, HeaderValue), FilterError> {
        let request_scheme = match parts.uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => "https",
            Some(s) if *s == Scheme::HTTP => "http",
            _ if cx.https => "https",
            _ => "http",
        };
        let scheme = self.scheme.map_or(request_scheme, |s| s.as_str());
        let port = match (self.port, self.scheme) {
            (Some(p), _) => p,
            (None, Some(s)) => s.default_port(),
            (None, None) => cx.listener_port,
        };
        let host = match &self.hostname {
            Some(h) => std::borrow::Cow::Borrowed(h.as_str()),
            None => request_host(&parts.uri, &parts.headers).ok_or(FilterError::NoHost)?,
        };
        let path = self
            .path
            .as_ref()
            .and_then(|m| modified_path(m, parts.uri.path(), matched))
            .unwrap_or_else(|| parts.uri.path().to_string());
        let default_port = (scheme == "http" && port == 80) || (scheme == "https" && port == 443);
        let mut location = format!("{scheme}://{host}");
        if !default_port {
            location.push(':');
            location.push_str(&port.to_string());
        }
        location.push_str(&path);
        if let Some(q) = parts.uri.query() {
            location.push('?');
            location.push_str(q);
        }
        let value =
            HeaderValue::from_str(&location).map_err(|_| FilterError::Location { location })?;
        Ok((self.status, value))
    }
}
