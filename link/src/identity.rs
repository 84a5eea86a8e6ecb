//! SPIFFE identities of workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! The shape is Istio's (and so ztunnel's): a peer whose certificate carries any other path is
//! not a mesh workload. Parsing is strict so that two spellings of one identity cannot exist:
//! the scheme and trust domain must already be lowercase, as the SPIFFE spec asks them to be
//! normalised (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

/// The trust domain used when none is configured, as in Istio.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The edge gateway's namespace and service account: its identity in the mesh, which the
/// control plane signs for the gateway credential and destination agents authorize.
pub const GATEWAY_NAMESPACE: &str = "weft-system";
pub const GATEWAY_SERVICE_ACCOUNT: &str = "weft-gateway";

const SCHEME: &str = "spiffe://";

/// SPIFFE-ID.md §2.3: a SPIFFE ID must not be longer than 2048 bytes.
const MAX_ID_LEN: usize = 2048;

/// SPIFFE-ID.md §2.1: a trust domain must not be longer than 255 bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a SPIFFE ID or trust domain was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{input:?} is not a SPIFFE ID: it must start with \"spiffe://\" (lowercase)")]
    NotSpiffe { input: String },

    #[error("trust domain {domain:?} is invalid: {reason}")]
    TrustDomain {
        domain: String,
        reason: &'static str,
    },

    #[error(
        "SPIFFE ID {input:?} has path {path:?}; a workload identity must have the path \
         /ns/<namespace>/sa/<service-account>"
    )]
    Path { input: String, path: String },

    #[error("SPIFFE ID {input:?}: {field} {value:?} is invalid: {reason}")]
    Segment {
        input: String,
        field: &'static str,
        value: String,
        reason: &'static str,
    },

    #[error("SPIFFE ID is {len} bytes long; the limit is {MAX_ID_LEN}")]
    TooLong { len: usize },
}

// === impl TrustDomain ===

/// The trust domain of a mesh: the authority part of every SPIFFE ID it issues.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Arc<str>);

impl TrustDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        Self(Arc::from(DEFAULT_TRUST_DOMAIN))
    }
}

impl FromStr for TrustDomain {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let reason = if s.is_empty() {
            Some("it is empty")
        } else if s.len() > MAX_TRUST_DOMAIN_LEN {
            Some("it is longer than 255 bytes")
        } else if s.bytes().any(|b| b.is_ascii_uppercase()) {
            Some("it must be lowercase")
        } else if s.contains(':') {
            Some("it must not contain a port")
        } else if s.contains('@') {
            Some("it must not contain user info")
        } else if !s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        }) {
            Some("only a-z, 0-9, '.', '-' and '_' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(IdentityError::TrustDomain {
                domain: s.to_owned(),
                reason,
            }),
            None => Ok(Self(Arc::from(s))),
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

// === impl SpiffeId ===

/// A workload identity, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
///
/// Built only through [`FromStr`] or [`SpiffeId::new`], so every value is well formed.
///
/// Cheap to clone (it is shared, not copied): pool keys, spans and policy all hold one.
#[derive(Clone)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// The whole ID as text; equality, hashing and ordering use it.
    full: Arc<str>,
    /// Byte ranges of the namespace and service account in `full` (at most 2048 bytes long).
    namespace: (u16, u16),
    service_account: u16,
}

impl SpiffeId {
    /// Builds the identity of `service_account` in `namespace`, checking both segments.
    pub fn new(
        trust_domain: TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        let display = || format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
        check_segment(namespace, "namespace", display)?;
        check_segment(service_account, "service account", display)?;
        Self::assemble(trust_domain, namespace, service_account)
    }

    /// Joins checked parts into the canonical text form.
    fn assemble(
        trust_domain: TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        let full = format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
        if full.len() > MAX_ID_LEN {
            return Err(IdentityError::TooLong { len: full.len() });
        }
        let ns_start = SCHEME.len() + trust_domain.as_str().len() + "/ns/".len();
        let ns_end = ns_start + namespace.len();
        let sa_start = ns_end + "/sa/".len();
        // All offsets are below MAX_ID_LEN, checked above, so they fit in u16.
        let offset = |i: usize| u16::try_from(i).map_err(|_| IdentityError::TooLong { len: i });
        Ok(Self {
            namespace: (offset(ns_start)?, offset(ns_end)?),
            service_account: offset(sa_start)?,
            trust_domain,
            full: Arc::from(full),
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        let (start, end) = self.namespace;
        self.full
            .get(usize::from(start)..usize::from(end))
            .unwrap_or_default()
    }

    pub fn service_account(&self) -> &str {
        self.full
            .get(usize::from(self.service_account)..)
            .unwrap_or_default()
    }

    /// The ID as text, `spiffe://...`.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl PartialEq for SpiffeId {
    fn eq(&self, other: &Self) -> bool {
        self.full == other.full
    }
}

impl Eq for SpiffeId {}

impl Hash for SpiffeId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.full.hash(state);
    }
}

impl PartialOrd for SpiffeId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SpiffeId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.full.cmp(&other.full)
    }
}

/// SPIFFE-ID.md §2.2: path segments are non-empty, not `.` or `..`, and use only letters,
/// digits, `.`, `-` and `_`.
fn check_segment(
    value: &str,
    field: &'static str,
    display: impl Fn() -> String,
) -> Result<(), IdentityError> {
    let reason = if value.is_empty() {
        Some("it is empty")
    } else if value == "." || value == ".." {
        Some("'.' and '..' are not allowed")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        Some("only letters, digits, '.', '-' and '_' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(IdentityError::Segment {
            input: display(),
            field,
            value: value.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_ID_LEN {
            return Err(IdentityError::TooLong { len: s.len() });
        }
        let Some(rest) = s.strip_prefix(SCHEME) else {
            return Err(IdentityError::NotSpiffe {
                input: s.to_owned(),
            });
        };
        let (domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let trust_domain: TrustDomain = domain.parse()?;
        let bad_path = || IdentityError::Path {
            input: s.to_owned(),
            path: path.to_owned(),
        };
        // Query and fragment are forbidden in SPIFFE IDs; reporting them as a bad path says
        // where the problem is.
        if path.contains(['?', '#']) {
            return Err(bad_path());
        }
        let mut segments = path.split('/');
        // `path` starts with '/', so the first piece is always empty.
        let (Some(""), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(bad_path());
        };
        let display = || s.to_owned();
        check_segment(ns, "namespace", display)?;
        check_segment(sa, "service account", display)?;
        Self::assemble(trust_domain, ns, sa)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";
        let id: SpiffeId = s.parse().unwrap();
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-productpage");
        assert_eq!(id.to_string(), s);
        let built = SpiffeId::new(TrustDomain::default(), "default", "bookinfo-productpage");
        assert_eq!(built.unwrap(), id);
    }

    #[test]
    fn rejects_with_a_reason() {
        let cases = [
            ("http://cluster.local/ns/a/sa/b", "must start with"),
            ("SPIFFE://cluster.local/ns/a/sa/b", "must start with"),
            ("spiffe://Cluster.local/ns/a/sa/b", "must be lowercase"),
            ("spiffe://cluster.local:443/ns/a/sa/b", "port"),
            ("spiffe://user@td/ns/a/sa/b", "user info"),
            ("spiffe:///ns/a/sa/b", "it is empty"),
            ("spiffe://cluster.local", "has path \"\""),
            ("spiffe://cluster.local/", "has path"),
            ("spiffe://cluster.local/ns/a", "has path"),
            ("spiffe://cluster.local/ns/a/sa/b/", "has path"),
            ("spiffe://cluster.local/ns/a/sa/b/c", "has path"),
            ("spiffe://cluster.local/sa/b/ns/a", "has path"),
            ("spiffe://cluster.local/ns/a/sa/b?x=1", "has path"),
            (
                "spiffe://cluster.local/ns//sa/b",
                "namespace \"\" is invalid",
            ),
            (
                "spiffe://cluster.local/ns/a/sa/",
                "service account \"\" is invalid",
            ),
            ("spiffe://cluster.local/ns/../sa/b", "'.' and '..'"),
            ("spiffe://cluster.local/ns/a b/sa/b", "only letters"),
            ("spiffe://cluster.local/ns/a/sa/%41", "only letters"),
        ];
        for (input, want) in cases {
            let err = input.parse::<SpiffeId>().unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err:?} lacks {want:?}");
        }
        let long = format!("spiffe://td/ns/a/sa/{}", "b".repeat(MAX_ID_LEN));
        assert!(matches!(
            long.parse::<SpiffeId>(),
            Err(IdentityError::TooLong { .. })
        ));
    }

    #[test]
    fn trust_domain_rules() {
        assert_eq!(TrustDomain::default().as_str(), DEFAULT_TRUST_DOMAIN);
        assert!("example.org".parse::<TrustDomain>().is_ok());
        assert!("my_td-1.example".parse::<TrustDomain>().is_ok());
        assert!("".parse::<TrustDomain>().is_err());
        assert!("a/b".parse::<TrustDomain>().is_err());
        assert!("a".repeat(256).parse::<TrustDomain>().is_err());
    }

    #[test]
    fn new_checks_segments() {
        let err = SpiffeId::new(TrustDomain::default(), "ns", "s/a").unwrap_err();
        assert!(err.to_string().contains("service account \"s/a\""), "{err}");
    }
}
