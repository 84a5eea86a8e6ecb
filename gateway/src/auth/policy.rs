//! An `ApiPolicy`'s authentication half, converted once per configuration version.

use std::{path::PathBuf, str::FromStr, sync::Arc, time::Duration};

use http::{HeaderName, Uri};
use weft_proto::discovery::v1 as pb;

use super::{
    error::{AuthConfigError, Challenge},
    jwks::KeySet,
};

/// The header API keys are read from when the policy names no place.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";
/// The query parameter API keys are read from when the policy names no place.
pub const DEFAULT_API_KEY_QUERY_PARAM: &str = "apikey";
/// How long a fetched or read JWKS is used before it is fetched again: identity providers
/// publish new keys well ahead of signing with them, and an unknown `kid` fetches at once.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(5 * 60);
/// Allowed difference between the issuer's clock and ours for `exp`/`nbf`, when the provider
/// gives none: 30 s covers NTP-synchronised hosts with room, and is what Kong's jwt plugin
/// suggests.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(30);
/// The claim that names the consumer when the provider names none.
pub const DEFAULT_CONSUMER_CLAIM: &str = "sub";
/// The claim holding scopes when the provider names none (RFC 8693 section 4.2).
pub const DEFAULT_SCOPE_CLAIM: &str = "scope";
/// Shortest accepted refresh interval: a JWKS endpoint is someone else's server.
const MIN_JWKS_REFRESH: Duration = Duration::from_secs(1);

/// `namespace/name` of an `ApiPolicy`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PolicyName {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl std::fmt::Display for PolicyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How a route's callers authenticate.
#[derive(Clone, Debug)]
pub struct AuthPolicy {
    /// The ApiPolicy; consumers are looked up in its namespace only, so one namespace's
    /// keys never open another namespace's APIs.
    pub name: PolicyName,
    /// API keys are accepted, read from these places.
    pub api_key: Option<ApiKeyPlaces>,
    /// JWTs from these issuers are accepted (`Authorization: Bearer`).
    pub jwt: Vec<Arc<JwtProvider>>,
    /// Requests without any credential pass as anonymous (a bad credential is still
    /// refused). Without any credential method configured every request is anonymous.
    pub allow_anonymous: bool,
    /// Scopes a token must carry, all of them. A caller authenticated by API key carries
    /// none, and an anonymous one is asked for a token.
    pub required_scopes: Vec<String>,
    /// Plans (`namespace/name`) a consumer must be on one of; empty means any plan or none.
    /// Anonymous callers are metered by the anonymous limits instead.
    pub plans: Vec<String>,
    /// The challenges of this policy's 401s.
    pub(crate) challenge: Arc<Challenge>,
}

impl AuthPolicy {
    /// Whether any credential method is configured.
    pub fn requires_credentials(&self) -> bool {
        self.api_key.is_some() || !self.jwt.is_empty()
    }
}

/// Where API keys are looked for, headers first, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyPlaces {
    pub headers: Vec<HeaderName>,
    /// Query parameter names, compared after percent-decoding.
    pub query_params: Vec<String>,
}

/// One token issuer of a policy.
#[derive(Debug)]
pub struct JwtProvider {
    /// For logs and the `provider` label of metrics.
    pub name: String,
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// Accepted `aud` values (any of); empty means the audience is not checked.
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    pub refresh: Duration,
    pub clock_skew: Duration,
    pub consumer_claim: String,
    pub scope_claim: String,
    /// Claims copied to upstream headers; the client's own copies are always removed.
    pub claim_to_headers: Vec<(String, HeaderName)>,
    /// Identifies the key source across configuration versions, so a provider that did not
    /// change keeps its fetched keys and its fetch task.
    pub(crate) source_id: SourceId,
}

/// Where a provider's keys come from.
#[derive(Clone, Debug)]
pub enum JwksSource {
    /// Given in the policy; parsed at conversion.
    Inline(Arc<KeySet>),
    /// A file on the gateway's host, read when the configuration changes and every refresh.
    File(PathBuf),
    /// An `https://` URL, fetched in the background.
    Https {
        uri: Uri,
        /// Extra trust anchors (DER) on top of the system roots.
        extra_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    },
}

/// SHA-256 over what makes a key source (provider name, source, trust anchors, refresh).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SourceId(pub(crate) [u8; 32]);

// === impl AuthPolicy ===

impl TryFrom<&pb::ApiPolicy> for AuthPolicy {
    type Error = AuthConfigError;

    fn try_from(p: &pb::ApiPolicy) -> Result<Self, Self::Error> {
        let (namespace, name) = p
            .name
            .split_once('/')
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
            .ok_or_else(|| AuthConfigError::PolicyName {
                name: p.name.clone(),
            })?;
        let policy = p.name.as_str();
        let api_key = p
            .api_key
            .as_ref()
            .map(|k| ApiKeyPlaces::convert(policy, k))
            .transpose()?;
        let jwt = match &p.jwt {
            Some(j) => j
                .providers
                .iter()
                .map(|provider| JwtProvider::convert(policy, provider).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        if p.jwt.is_some() && jwt.is_empty() {
            return Err(AuthConfigError::Provider {
                policy: policy.into(),
                provider: String::new(),
                problem: "jwt is set but lists no providers".into(),
            });
        }
        let challenge = Arc::new(Challenge {
            bearer: !jwt.is_empty(),
            api_key: api_key.as_ref().map(ApiKeyPlaces::challenge_params),
        });
        Ok(AuthPolicy {
            name: PolicyName {
                namespace: namespace.into(),
                name: name.into(),
            },
            api_key,
            jwt,
            allow_anonymous: p.allow_anonymous,
            required_scopes: p.required_scopes.clone(),
            plans: p
                .plans
                .iter()
                .map(|plan| qualified(namespace, plan))
                .collect(),
            challenge,
        })
    }
}

// === impl ApiKeyPlaces ===

impl ApiKeyPlaces {
    fn convert(policy: &str, k: &pb::ApiKeyAuth) -> Result<Self, AuthConfigError> {
        if k.headers.is_empty() && k.query_params.is_empty() {
            return Ok(ApiKeyPlaces {
                headers: vec![HeaderName::from_static(DEFAULT_API_KEY_HEADER)],
                query_params: vec![DEFAULT_API_KEY_QUERY_PARAM.into()],
            });
        }
        let headers = k
            .headers
            .iter()
            .map(|h| {
                HeaderName::from_str(h).map_err(|_| AuthConfigError::HeaderName {
                    policy: policy.into(),
                    field: "apiKey.headers",
                    value: h.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if k.query_params.iter().any(String::is_empty) {
            return Err(AuthConfigError::QueryParam {
                policy: policy.into(),
            });
        }
        Ok(ApiKeyPlaces {
            headers,
            query_params: k.query_params.clone(),
        })
    }

    /// `header="x-api-key"` (the first header), or `query="apikey"` without headers.
    fn challenge_params(&self) -> String {
        match (self.headers.first(), self.query_params.first()) {
            (Some(h), _) => format!("header=\"{}\"", h.as_str()),
            (None, Some(q)) => format!(
                "query=\"{}\"",
                q.chars()
                    .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
                    .collect::<String>()
            ),
            (None, None) => String::new(),
        }
    }
}

// === impl JwtProvider ===

impl JwtProvider {
    fn convert(policy: &str, p: &pb::JwtProvider) -> Result<Self, AuthConfigError> {
        let problem = |problem: String| AuthConfigError::Provider {
            policy: policy.into(),
            provider: p.name.clone(),
            problem,
        };
        if p.issuer.is_empty() {
            return Err(problem("issuer is empty".into()));
        }
        let sources = [&p.jwks_uri, &p.jwks_file, &p.jwks_inline]
            .iter()
            .filter(|s| !s.is_empty())
            .count();
        if sources != 1 {
            return Err(problem(format!(
                "exactly one of jwks uri, file and inline must be set ({sources} are)"
            )));
        }
        let refresh = match p.jwks_refresh_ms {
            0 => DEFAULT_JWKS_REFRESH,
            ms => Duration::from_millis(ms).max(MIN_JWKS_REFRESH),
        };
        let clock_skew = match p.clock_skew_ms {
            0 => DEFAULT_CLOCK_SKEW,
            ms => Duration::from_millis(ms),
        };
        let jwks = if !p.jwks_inline.is_empty() {
            let keys = KeySet::parse(p.jwks_inline.as_bytes())
                .map_err(|e| problem(format!("jwks inline: {e}")))?;
            JwksSource::Inline(Arc::new(keys))
        } else if !p.jwks_file.is_empty() {
            JwksSource::File(PathBuf::from(&p.jwks_file))
        } else {
            let uri = Uri::from_str(&p.jwks_uri)
                .map_err(|e| problem(format!("jwks uri {:?}: {e}", p.jwks_uri)))?;
            if uri.scheme_str() != Some("https") || uri.host().is_none() {
                return Err(problem(format!(
                    "jwks uri {:?} must be an https:// URL with a host",
                    p.jwks_uri
                )));
            }
            let extra_roots = parse_roots(&p.jwks_ca_pem)
                .map_err(|e| problem(format!("jwks caCertificate: {e}")))?;
            JwksSource::Https { uri, extra_roots }
        };
        let claim_to_headers = p
            .claim_to_headers
            .iter()
            .map(|c| {
                let header = HeaderName::from_str(&c.header).map_err(|_| {
                    problem(format!(
                        "claimToHeaders: {:?} is not a valid HTTP header name",
                        c.header
                    ))
                })?;
                if c.claim.is_empty() {
                    return Err(problem("claimToHeaders: empty claim name".into()));
                }
                Ok((c.claim.clone(), header))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let or_default = |s: &str, default: &str| {
            if s.is_empty() {
                default.to_string()
            } else {
                s.to_string()
            }
        };
        let source_id = {
            let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            for part in [
                p.name.as_str(),
                p.jwks_uri.as_str(),
                p.jwks_file.as_str(),
                p.jwks_inline.as_str(),
                p.jwks_ca_pem.as_str(),
            ] {
                // Length-prefixed, so no two different tuples hash the same input.
                ctx.update(&(part.len() as u64).to_be_bytes());
                ctx.update(part.as_bytes());
            }
            ctx.update(&(refresh.as_millis() as u64).to_be_bytes());
            let mut id = [0u8; 32];
            id.copy_from_slice(ctx.finish().as_ref());
            SourceId(id)
        };
        Ok(JwtProvider {
            name: p.name.clone(),
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            jwks,
            refresh,
            clock_skew,
            consumer_claim: or_default(&p.consumer_claim, DEFAULT_CONSUMER_CLAIM),
            scope_claim: or_default(&p.scope_claim, DEFAULT_SCOPE_CLAIM),
            claim_to_headers,
            source_id,
        })
    }
}

/// `namespace/name` of a plan; a bare name is in `namespace` (the documents' own), so both
/// spellings compare equal.
pub(crate) fn qualified(namespace: &str, plan: &str) -> String {
    if plan.contains('/') {
        plan.to_string()
    } else {
        format!("{namespace}/{plan}")
    }
}

/// Certificates of a PEM bundle; empty input is no extra roots.
fn parse_roots(pem: &str) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    if pem.trim().is_empty() {
        return Ok(Vec::new());
    }
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block in the PEM".into());
    }
    Ok(certs)
}
