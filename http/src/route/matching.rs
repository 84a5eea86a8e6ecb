//! Whether a request meets a `Match`, and how matches rank against each other.

use std::borrow::Cow;

use http::{HeaderMap, Method};

use super::model::{HeaderMatch, Match, PathMatch, QueryMatch, RouteKind, ValueMatch};

// === impl PathMatch ===

impl PathMatch {
    /// Whether `path` (the request's path, without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(value) => path == value,
            Self::Prefix { prefix, .. } => prefix_matches(prefix, path),
            Self::Regex(re) => re.is_match(path),
        }
    }

    /// The matched prefix (normalized, no trailing `/`) for ReplacePrefixMatch.
    pub fn prefix(&self) -> Option<&str> {
        match self {
            Self::Prefix { prefix, .. } => Some(prefix),
            _ => None,
        }
    }

    /// Precedence among path matches, larger first.
    ///
    /// HTTPRoute: the spec orders Exact, then PathPrefix by length, and leaves
    /// RegularExpression to the implementation. A regex is placed between the two (longer
    /// pattern first), as Envoy Gateway and Contour do: every match without a path is a
    /// PathPrefix `/`, so a regex ranked after prefixes would be shadowed by any catch-all.
    ///
    /// GRPCRoute method matches arrive compiled: service and method -> Exact
    /// `/svc/method`, service only -> PathPrefix `/svc`, method only or a
    /// RegularExpression type -> a regex. Its spec ranks by characters of the matching
    /// service, then of the method, so a service-only match outranks a method-only one:
    /// for gRPC the regex goes after the prefixes.
    pub(crate) fn rank(&self, kind: RouteKind) -> (u8, usize) {
        match (self, kind) {
            (Self::Exact(value), _) => (3, value.len()),
            (Self::Regex(re), RouteKind::Http) => (2, re.as_str().len()),
            (Self::Prefix { len, .. }, RouteKind::Http) => (1, *len),
            (Self::Prefix { len, .. }, RouteKind::Grpc) => (2, *len),
            (Self::Regex(re), RouteKind::Grpc) => (1, re.as_str().len()),
        }
    }
}

/// PathPrefix on `/`-separated elements: `/foo` matches `/foo`, `/foo/` and `/foo/bar`, not
/// `/foobar`. `prefix` has its trailing `/` removed (`/` itself is the empty string).
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

// === impl ValueMatch ===

impl ValueMatch {
    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(want) => value == want,
            Self::Regex(re) => re.is_match(value),
        }
    }
}

// === impl HeaderMatch ===

impl HeaderMatch {
    /// Whether the request's headers meet the condition. A header sent several times is
    /// compared as its values joined by `,` (RFC 9110 section 5.3), which allocates only
    /// in that case.
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        let Some(first) = values.next() else {
            return false;
        };
        let Some(rest) = values.next() else {
            return std::str::from_utf8(first.as_bytes()).is_ok_and(|v| self.value.matches(v));
        };
        let mut joined = Vec::with_capacity(first.len() + rest.len() + 1);
        joined.extend_from_slice(first.as_bytes());
        for v in std::iter::once(rest).chain(values) {
            joined.push(b',');
            joined.extend_from_slice(v.as_bytes());
        }
        std::str::from_utf8(&joined).is_ok_and(|v| self.value.matches(v))
    }
}

// === impl QueryMatch ===

impl QueryMatch {
    /// Whether the query string carries the parameter with a matching value. The first
    /// occurrence of the name counts; names and values are percent-decoded first (which
    /// allocates only when they hold a `%` or `+`).
    pub fn matches(&self, query: Option<&str>) -> bool {
        let Some(query) = query else {
            return false;
        };
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if decode(name) == self.name {
                return self.value.matches(&decode(value));
            }
        }
        false
    }
}

/// Percent- and `+`-decoding of a query component (application/x-www-form-urlencoded).
/// Bad escapes are kept as written; invalid UTF-8 is replaced.
fn decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

// === impl Match ===

impl Match {
    /// Whether the request meets every condition. Cheapest checks first.
    pub fn matches(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        self.path.matches(path)
            && self.headers.iter().all(|h| h.matches(headers))
            && self.query_params.iter().all(|q| q.matches(query))
    }

    /// The Gateway API precedence of a match within its host, larger first: path (see
    /// `PathMatch::rank`), then a method match, then the number of header matches, then
    /// the number of query parameter matches.
    pub(crate) fn rank(&self, kind: RouteKind) -> ((u8, usize), bool, usize, usize) {
        (
            self.path.rank(kind),
            self.method.is_some(),
            self.headers.len(),
            self.query_params.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/foo", "/foo"));
        assert!(prefix_matches("/foo", "/foo/"));
        assert!(prefix_matches("/foo", "/foo/bar"));
        assert!(!prefix_matches("/foo", "/foobar"));
        assert!(!prefix_matches("/foo", "/fo"));
        assert!(prefix_matches("", "/anything"));
    }

    #[test]
    fn query_components_are_decoded() {
        assert_eq!(decode("a%20b+c"), "a b c");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
        assert_eq!(decode("%41"), "A");
        assert!(matches!(decode("plain"), Cow::Borrowed("plain")));
    }
}
