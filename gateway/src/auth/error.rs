//! What a refused request is told, and what a refused configuration says.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::AuthMethod;

/// The `realm` of every challenge the gateway sends.
pub const REALM: &str = "weft";

/// Why a presented credential was refused. Every message is safe to show the caller: it says
/// what is wrong with the credential, never what the gateway holds (keys, consumers, issuers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the credential is malformed")]
    Malformed,
    #[error("the token is larger than the gateway accepts")]
    TooLarge,
    #[error("the token's signing algorithm is not accepted")]
    UnsupportedAlgorithm,
    #[error("the token's algorithm does not match its signing key")]
    AlgorithmMismatch,
    #[error("the token's issuer is not accepted")]
    UnknownIssuer,
    #[error("the token's signing key is not known")]
    UnknownKey,
    #[error("the issuer's signing keys are not available, try again later")]
    KeysUnavailable,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not meant for this audience")]
    WrongAudience,
    #[error("the token lacks the {0} claim")]
    MissingClaim(&'static str),
    #[error("the token's {0} claim is malformed")]
    BadClaim(&'static str),
    #[error("the API key is not known")]
    UnknownApiKey,
}

/// Which credentials a policy accepts, for the `WWW-Authenticate` challenges of its 401s
/// (RFC 9110 section 11.6.1; the Bearer parameters are RFC 6750 section 3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Challenge {
    /// Bearer tokens (JWT) are accepted.
    pub bearer: bool,
    /// API keys are accepted; the parameters naming where (`header="x-api-key"` or
    /// `query="apikey"`), already quoted.
    pub api_key: Option<String>,
}

impl Challenge {
    /// The `WWW-Authenticate` values: one per accepted scheme, with the error parameters on
    /// the scheme `on` (the one the refused credential used), or on every scheme.
    fn values(
        &self,
        error: Option<(&str, &str)>,
        scope: Option<&str>,
        on: Option<AuthMethod>,
    ) -> Vec<HeaderValue> {
        let mut out = Vec::with_capacity(2);
        let params = |out: &mut String, method: AuthMethod| {
            if on.is_some_and(|on| on != method) {
                return;
            }
            if let Some((code, description)) = error {
                out.push_str(&format!(", error=\"{code}\""));
                if !description.is_empty() {
                    out.push_str(&format!(
                        ", error_description=\"{}\"",
                        quote_safe(description)
                    ));
                }
            }
            if let Some(scope) = scope {
                out.push_str(&format!(", scope=\"{}\"", quote_safe(scope)));
            }
        };
        if self.bearer {
            let mut value = format!("Bearer realm=\"{REALM}\"");
            params(&mut value, AuthMethod::Jwt);
            out.extend(HeaderValue::from_str(&value).ok());
        }
        if let Some(where_) = &self.api_key {
            let mut value = format!("ApiKey realm=\"{REALM}\", {where_}");
            params(&mut value, AuthMethod::ApiKey);
            out.extend(HeaderValue::from_str(&value).ok());
        }
        out
    }
}

/// Drops what cannot stand inside a quoted-string of a header (quotes, backslashes and
/// anything that is not visible ASCII), so no description can break the header apart.
fn quote_safe(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '"' && *c != '\\')
        .collect()
}

/// A request that authentication refuses. `into_response` turns it into what the caller
/// gets: 401 with challenges for a missing or bad credential, 403 for a caller who is known
/// but not allowed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AuthError {
    /// No credential the policy accepts was presented, and anonymous callers are not allowed.
    #[error("no credential was presented")]
    Missing { challenge: Arc<Challenge> },
    /// A credential was presented and refused.
    #[error("the {method} credential was refused: {reason}")]
    Invalid {
        method: AuthMethod,
        #[source]
        reason: Rejection,
        challenge: Arc<Challenge>,
    },
    /// The token is valid but lacks scopes the route requires (all listed, space-separated).
    #[error("the token lacks a required scope (requires {required})")]
    InsufficientScope {
        required: String,
        challenge: Arc<Challenge>,
    },
    /// The caller is authenticated but is not a consumer subscribed to one of the policy's
    /// plans.
    #[error("the caller is not subscribed to a plan of this API")]
    NotOnPlan {
        /// `namespace/name` of the consumer, when the caller is one.
        consumer: Option<String>,
    },
}

impl AuthError {
    /// The status the caller gets.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Missing { .. } | AuthError::Invalid { .. } => StatusCode::UNAUTHORIZED,
            AuthError::InsufficientScope { .. } | AuthError::NotOnPlan { .. } => {
                StatusCode::FORBIDDEN
            }
        }
    }

    /// A short label for metrics and access logs (a fixed set).
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::Missing { .. } => "missing_credential",
            AuthError::Invalid { .. } => "invalid_credential",
            AuthError::InsufficientScope { .. } => "insufficient_scope",
            AuthError::NotOnPlan { .. } => "not_on_plan",
        }
    }

    /// The `WWW-Authenticate` values of the response (none for a 403 about plans).
    pub fn challenges(&self) -> Vec<HeaderValue> {
        match self {
            AuthError::Missing { challenge } => challenge.values(None, None, None),
            AuthError::Invalid {
                reason,
                challenge,
                method,
            } => {
                let description = reason.to_string();
                challenge.values(Some(("invalid_token", &description)), None, Some(*method))
            }
            AuthError::InsufficientScope {
                required,
                challenge,
            } => Challenge {
                bearer: challenge.bearer,
                api_key: None,
            }
            .values(Some(("insufficient_scope", "")), Some(required), None),
            AuthError::NotOnPlan { .. } => Vec::new(),
        }
    }

    /// The response the caller gets: status, `WWW-Authenticate` challenges and a small JSON
    /// body `{"error": ..., "error_description": ...}`.
    pub fn into_response(self) -> Response<Bytes> {
        let (error, description) = match &self {
            AuthError::Missing { .. } => ("unauthorized", "a credential is required".to_string()),
            AuthError::Invalid { reason, .. } => ("invalid_token", reason.to_string()),
            AuthError::InsufficientScope { required, .. } => (
                "insufficient_scope",
                format!("the token must carry the scopes: {required}"),
            ),
            AuthError::NotOnPlan { .. } => (
                "forbidden",
                "the caller is not subscribed to a plan of this API".to_string(),
            ),
        };
        let body = serde_json::json!({"error": error, "error_description": description});
        let mut response = Response::new(Bytes::from(body.to_string()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        for value in self.challenges() {
            headers.append(header::WWW_AUTHENTICATE, value);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// A policy, consumer or JWT provider that cannot be used, naming what and where.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("ApiPolicy name {name:?} is not namespace/name")]
    PolicyName { name: String },
    #[error("ApiPolicy {policy}: {field} {value:?} is not a valid HTTP header name")]
    HeaderName {
        policy: String,
        field: &'static str,
        value: String,
    },
    #[error("ApiPolicy {policy}: apiKey.queryParams has an empty name")]
    QueryParam { policy: String },
    #[error("ApiPolicy {policy}: JWT provider {provider:?}: {problem}")]
    Provider {
        policy: String,
        provider: String,
        problem: String,
    },
    #[error(
        "Consumer {consumer}: apiKeySha256 {value:?} is not 64 hex digits (the SHA-256 of the key)"
    )]
    KeyHash { consumer: String, value: String },
    #[error(
        "Consumers {first} and {second} share an API key (same SHA-256); give each its own key"
    )]
    DuplicateKey { first: String, second: String },
    #[error("Consumers {first} and {second} both claim JWT subject {subject:?}")]
    DuplicateSubject {
        first: String,
        second: String,
        subject: String,
    },
    #[error("Consumer {consumer:?} has no name or namespace")]
    ConsumerName { consumer: String },
    #[error("JWKS fetching needs a Tokio runtime; build the Authenticator inside one")]
    NoRuntime,
}
