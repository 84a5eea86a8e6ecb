//! Host names: exact and wildcard patterns, listener/route intersection and the request's
//! host.

use std::borrow::Cow;
use std::fmt;

use http::{HeaderMap, Uri, header};

/// A host name pattern of a listener or route, lower case, without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `api.example.com`.
    Exact(Box<str>),
    /// `*.example.com`, stored as its suffix `.example.com`. Matches one or more labels in
    /// place of the `*` (`a.example.com`, `a.b.example.com`), never `example.com` itself.
    Wildcard(Box<str>),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(h) => f.write_str(h),
            Self::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// Longest host name (RFC 1123).
const MAX_HOSTNAME_LEN: usize = 253;

// === impl HostPattern ===

impl HostPattern {
    /// Parses `api.example.com` or `*.example.com` (case-insensitive). IP addresses are not
    /// host names in Gateway API and are refused, as are ports and empty labels.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.strip_suffix('.').unwrap_or(s);
        if s.is_empty() || s.len() > MAX_HOSTNAME_LEN {
            return Err(format!(
                "host name {s:?} must have 1-{MAX_HOSTNAME_LEN} characters"
            ));
        }
        let (wildcard, rest) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if rest.split('.').any(|label| {
            label.is_empty()
                || label.len() > 63
                || !label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }) {
            return Err(format!(
                "{s:?} is not a host name: labels of letters, digits and '-' separated by \
                 '.', optionally after a leading '*.'"
            ));
        }
        if rest.parse::<std::net::Ipv4Addr>().is_ok() {
            return Err(format!(
                "{s:?} is an IP address; Gateway API host names are names"
            ));
        }
        let lower = rest.to_ascii_lowercase();
        Ok(if wildcard {
            Self::Wildcard(format!(".{lower}").into_boxed_str())
        } else {
            Self::Exact(lower.into_boxed_str())
        })
    }

    /// Whether `host` (lower case, no port) is covered.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => **h == *host,
            Self::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(&**suffix),
        }
    }

    /// The host names both patterns cover, as one pattern (the more specific), or `None`
    /// when they are disjoint. `*.example.com` and `*.foo.example.com` intersect in
    /// `*.foo.example.com`; `*.example.com` and `example.com` do not intersect.
    pub fn intersect(&self, other: &Self) -> Option<Self> {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => (a == b).then(|| self.clone()),
            (Self::Wildcard(_), Self::Exact(h)) => self.matches(h).then(|| other.clone()),
            (Self::Exact(h), Self::Wildcard(_)) => other.matches(h).then(|| self.clone()),
            (Self::Wildcard(a), Self::Wildcard(b)) => {
                if a.ends_with(&**b) {
                    Some(self.clone())
                } else if b.ends_with(&**a) {
                    Some(other.clone())
                } else {
                    None
                }
            }
        }
    }

    /// Gateway API hostname precedence: an exact name before any wildcard, then the longer
    /// pattern first. Larger ranks first.
    pub(crate) fn rank(&self) -> (u8, usize) {
        match self {
            Self::Exact(h) => (2, h.len()),
            Self::Wildcard(s) => (1, s.len()),
        }
    }
}

/// The request's host name, lower case, without port or trailing dot: the URI's authority
/// (HTTP/2 `:authority`, or an absolute-form HTTP/1.1 target) or else the `Host` header.
/// Borrowed unless it had upper-case letters. `None` when the request names no host.
pub fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<Cow<'a, str>> {
    let raw = match uri.authority() {
        Some(a) => a.host(),
        None => {
            let value = headers.get(header::HOST)?.to_str().ok()?;
            strip_port(value)
        }
    };
    let host = raw.strip_suffix('.').unwrap_or(raw);
    if host.is_empty() {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// `example.com:8080` -> `example.com`; `[::1]:80` -> `[::1]`. Spec: "Implementations MUST
/// ignore any port value specified in the HTTP Host header while performing a match".
fn strip_port(value: &str) -> &str {
    if value.starts_with('[') {
        return match value.find(']') {
            Some(end) => &value[..=end],
            None => value,
        };
    }
    match value.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    #[test]
    fn wildcards_need_at_least_one_label() {
        assert!(p("*.example.com").matches("a.example.com"));
        assert!(p("*.example.com").matches("a.b.example.com"));
        assert!(!p("*.example.com").matches("example.com"));
        assert!(!p("*.example.com").matches("aexample.com"));
        assert!(!p("*.example.com").matches(".example.com"));
        assert!(p("API.Example.com.").matches("api.example.com"));
    }

    #[test]
    fn bad_host_names_are_refused() {
        for bad in [
            "", "a..b", "*", "*.", "a.*.com", "10.0.0.1", "a_b.com", "a.com:80",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn intersection_is_the_more_specific() {
        let cases = [
            ("*.example.com", "foo.example.com", Some("foo.example.com")),
            ("foo.example.com", "*.example.com", Some("foo.example.com")),
            (
                "*.example.com",
                "*.foo.example.com",
                Some("*.foo.example.com"),
            ),
            (
                "*.foo.example.com",
                "*.example.com",
                Some("*.foo.example.com"),
            ),
            ("*.example.com", "example.com", None),
            ("*.example.com", "test.example.net", None),
            ("a.com", "b.com", None),
            ("a.com", "a.com", Some("a.com")),
        ];
        for (a, b, want) in cases {
            let got = p(a).intersect(&p(b)).map(|h| h.to_string());
            assert_eq!(got.as_deref(), want, "{a} & {b}");
        }
    }

    #[test]
    fn request_host_ignores_port_and_case() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "API.example.com:8080".parse().unwrap());
        let uri: Uri = "/x".parse().unwrap();
        assert_eq!(
            request_host(&uri, &headers).as_deref(),
            Some("api.example.com")
        );
        let uri: Uri = "http://b.example.com:80/x".parse().unwrap();
        assert_eq!(
            request_host(&uri, &headers).as_deref(),
            Some("b.example.com")
        );
        let uri: Uri = "/x".parse().unwrap();
        assert_eq!(request_host(&uri, &HeaderMap::new()), None);
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
