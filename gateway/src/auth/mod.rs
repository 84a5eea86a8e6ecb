//! Who is calling: API keys and JWTs (consumers and their credentials).
//!
//! Built once per configuration version: each route's [`AuthPolicy`] is converted from its
//! `ApiPolicy` (`TryFrom`), and one [`Authenticator`] indexes every consumer and holds the
//! JWT providers' keys (from a [`JwksRegistry`] that outlives versions, so fetched keys and
//! fetch tasks carry over). Per request, [`Authenticator::authenticate`] takes the request's
//! head, removes the credential from it, and answers [`Authenticated`] or an [`AuthError`]
//! whose [`AuthError::into_response`] is what the caller gets.
//!
//! ```text
//!  request head ──► strip client copies of claim headers
//!                ──► API key (headers, then query)  ──► SHA-256 ──► consumer (policy namespace)
//!                ──► or Bearer JWT ──► shape/alg/iss ──► provider keys ──► signature, exp/nbf/aud
//!                                                                    └─► claims: consumer, scopes, headers
//!                ──► or anonymous (when allowed)
//!                ──► required scopes (403) ──► plans (403)
//! ```

mod consumers;
mod credentials;
mod error;
mod fetch;
mod jwks;
mod jwt;
mod metrics;
mod policy;

#[cfg(test)]
mod apikey_tests;
#[cfg(test)]
mod jwks_tests;
#[cfg(test)]
mod jwt_tests;
#[cfg(test)]
mod test_support;

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use http::{HeaderMap, HeaderName, HeaderValue, request::Parts};
use parking_lot::RwLock;
use weft_proto::discovery::v1 as pb;

pub use consumers::{ConsumerRef, Consumers, KeyHash};
pub use credentials::MAX_API_KEY_BYTES;
pub use error::{AuthConfigError, AuthError, Challenge, REALM, Rejection};
pub use fetch::FetchError;
pub use jwks::{FetchLimits, JwksError, JwksRegistry, KeySet};
pub use jwt::MAX_TOKEN_BYTES;
pub use metrics::AuthMetrics;
pub use policy::{
    ApiKeyPlaces, AuthPolicy, DEFAULT_API_KEY_HEADER, DEFAULT_API_KEY_QUERY_PARAM,
    DEFAULT_CLOCK_SKEW, DEFAULT_CONSUMER_CLAIM, DEFAULT_JWKS_REFRESH, DEFAULT_SCOPE_CLAIM,
    JwksSource, JwtProvider, PolicyName,
};

use credentials::Presented;
use jwks::KeyStore;
use policy::SourceId;

/// How a request was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    ApiKey,
    Jwt,
    Anonymous,
}

impl AuthMethod {
    /// For logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Anonymous => "anonymous",
        }
    }
}

impl std::fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request authentication let through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    /// The consumer, when the credential maps to one (always for API keys; for JWTs when a
    /// consumer lists the token's consumer claim).
    pub consumer: Option<ConsumerRef>,
    /// The token's `sub` (JWT only).
    pub subject: Option<String>,
    /// The token's scopes (JWT only).
    pub scopes: Vec<String>,
    /// Headers to set on the upstream request (the provider's `claimToHeaders`). The client's
    /// own copies of these headers were removed by `authenticate`.
    pub claim_headers: Vec<(HeaderName, HeaderValue)>,
    pub method: AuthMethod,
}

impl Authenticated {
    fn anonymous() -> Self {
        Authenticated {
            consumer: None,
            subject: None,
            scopes: Vec::new(),
            claim_headers: Vec::new(),
            method: AuthMethod::Anonymous,
        }
    }

    /// Sets the claim headers on an upstream request's headers.
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.claim_headers {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Consumers and JWT keys of one configuration version.
pub struct Authenticator {
    consumers: Consumers,
    registry: JwksRegistry,
    /// Key stores of fetched providers. Filled at construction for the policies given, and
    /// on first use for any other (so a policy missed there still works).
    stores: RwLock<HashMap<SourceId, Arc<KeyStore>>>,
}

impl Authenticator {
    /// Indexes the consumers and starts (or reuses, or re-reads) the JWKS of every provider
    /// of `policies`. Must run inside a Tokio runtime when a provider fetches its keys.
    pub fn new<'a>(
        consumers: &[pb::Consumer],
        policies: impl IntoIterator<Item = &'a AuthPolicy>,
        registry: &JwksRegistry,
    ) -> Result<Self, AuthConfigError> {
        let consumers = Consumers::new(consumers)?;
        let mut stores = HashMap::new();
        for policy in policies {
            for provider in &policy.jwt {
                if stores.contains_key(&provider.source_id) {
                    continue;
                }
                if let Some(store) = registry.store(provider).map_err(|e| match e {
                    AuthConfigError::Provider {
                        provider, problem, ..
                    } => AuthConfigError::Provider {
                        policy: policy.name.to_string(),
                        provider,
                        problem,
                    },
                    other => other,
                })? {
                    stores.insert(provider.source_id, store);
                }
            }
        }
        Ok(Authenticator {
            consumers,
            registry: registry.clone(),
            stores: RwLock::new(stores),
        })
    }

    /// The consumers of this version.
    pub fn consumers(&self) -> &Consumers {
        &self.consumers
    }

    /// Authenticates a request under `policy`: finds the credential, removes it (and any
    /// client copy of a claim header) from `parts`, verifies it, and checks scopes and plans.
    ///
    /// An API key is used when one is presented, otherwise a bearer token; a presented
    /// credential that is bad is refused even where anonymous callers are allowed.
    pub async fn authenticate(
        &self,
        policy: &AuthPolicy,
        parts: &mut Parts,
        client: SocketAddr,
    ) -> Result<Authenticated, AuthError> {
        for provider in &policy.jwt {
            for (_, header) in &provider.claim_to_headers {
                parts.headers.remove(header);
            }
        }
        let key = match &policy.api_key {
            Some(places) => credentials::take_api_key(places, parts),
            None => Presented::None,
        };
        let token = if policy.jwt.is_empty() {
            Presented::None
        } else {
            credentials::take_bearer(parts)
        };
        let result = match (key, token) {
            (Presented::Bad(reason), _) => Err(self.invalid(policy, AuthMethod::ApiKey, reason)),
            (Presented::Some(key), _) => self.by_api_key(policy, &key),
            (Presented::None, Presented::Bad(reason)) => {
                Err(self.invalid(policy, AuthMethod::Jwt, reason))
            }
            (Presented::None, Presented::Some(token)) => self.by_jwt(policy, &token).await,
            (Presented::None, Presented::None) => {
                let anonymous_allowed = policy.allow_anonymous || !policy.requires_credentials();
                // Scopes come with a token: an anonymous caller is asked for one, not forbidden.
                if anonymous_allowed && policy.required_scopes.is_empty() {
                    Ok(Authenticated::anonymous())
                } else {
                    Err(AuthError::Missing {
                        challenge: policy.challenge.clone(),
                    })
                }
            }
        };
        let result = result.and_then(|ok| check_access(policy, ok));
        if let Err(error) = &result {
            tracing::debug!(policy = %policy.name, %client, %error, "request refused");
        }
        result
    }

    fn invalid(&self, policy: &AuthPolicy, method: AuthMethod, reason: Rejection) -> AuthError {
        AuthError::Invalid {
            method,
            reason,
            challenge: policy.challenge.clone(),
        }
    }

    fn by_api_key(&self, policy: &AuthPolicy, key: &[u8]) -> Result<Authenticated, AuthError> {
        let hash = KeyHash::of(key);
        let consumer = self
            .consumers
            .by_key(&policy.name.namespace, &hash)
            .ok_or_else(|| self.invalid(policy, AuthMethod::ApiKey, Rejection::UnknownApiKey))?;
        Ok(Authenticated {
            consumer: Some(consumer.clone()),
            subject: None,
            scopes: Vec::new(),
            claim_headers: Vec::new(),
            method: AuthMethod::ApiKey,
        })
    }

    async fn by_jwt(&self, policy: &AuthPolicy, token: &str) -> Result<Authenticated, AuthError> {
        let invalid = |reason| self.invalid(policy, AuthMethod::Jwt, reason);
        let unverified = jwt::Unverified::parse(token).map_err(invalid)?;
        let provider = policy
            .jwt
            .iter()
            .find(|p| p.issuer == unverified.iss)
            .ok_or_else(|| invalid(Rejection::UnknownIssuer))?;
        let (keys, store) = match &provider.jwks {
            JwksSource::Inline(keys) => (Some(keys.clone()), None),
            _ => {
                let store = self.store(provider).map_err(|error| {
                    tracing::warn!(provider = %provider.name, %error, "JWT provider unusable");
                    invalid(Rejection::KeysUnavailable)
                })?;
                (store.keys().await, Some(store))
            }
        };
        let keys = keys.ok_or_else(|| invalid(Rejection::KeysUnavailable))?;
        let claims = match jwt::verify(token, &unverified, &keys, provider) {
            Ok(claims) => claims,
            Err(jwt::VerifyError::Rejected(reason)) => return Err(invalid(reason)),
            Err(jwt::VerifyError::UnknownKid) => {
                // The issuer may have rotated its keys since we fetched them.
                let fresh = match &store {
                    Some(store) => store.refetch_for_unknown_kid().await,
                    None => None,
                };
                let fresh = fresh.ok_or_else(|| invalid(Rejection::UnknownKey))?;
                match jwt::verify(token, &unverified, &fresh, provider) {
                    Ok(claims) => claims,
                    Err(jwt::VerifyError::Rejected(reason)) => return Err(invalid(reason)),
                    Err(jwt::VerifyError::UnknownKid) => {
                        return Err(invalid(Rejection::UnknownKey));
                    }
                }
            }
        };
        let consumer = jwt::claim_text(&claims, &provider.consumer_claim)
            .and_then(|value| self.consumers.by_subject(&policy.name.namespace, &value))
            .cloned();
        Ok(Authenticated {
            consumer,
            subject: claims
                .get("sub")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string),
            scopes: jwt::scopes(&claims, &provider.scope_claim),
            claim_headers: jwt::claim_headers(&claims, &provider.claim_to_headers),
            method: AuthMethod::Jwt,
        })
    }

    fn store(&self, provider: &JwtProvider) -> Result<Arc<KeyStore>, AuthConfigError> {
        if let Some(store) = self.stores.read().get(&provider.source_id) {
            return Ok(store.clone());
        }
        let store = self
            .registry
            .store(provider)?
            .ok_or_else(|| AuthConfigError::Provider {
                policy: String::new(),
                provider: provider.name.clone(),
                problem: "inline keys have no store".into(),
            })?;
        self.stores
            .write()
            .entry(provider.source_id)
            .or_insert(store.clone());
        Ok(store)
    }
}

/// Scopes, then plans: a caller who is authenticated but not allowed gets 403.
fn check_access(policy: &AuthPolicy, ok: Authenticated) -> Result<Authenticated, AuthError> {
    if ok.method != AuthMethod::Anonymous {
        let missing = policy
            .required_scopes
            .iter()
            .any(|required| !ok.scopes.iter().any(|s| s == required));
        if missing {
            return Err(AuthError::InsufficientScope {
                required: policy.required_scopes.join(" "),
                challenge: policy.challenge.clone(),
            });
        }
        if !policy.plans.is_empty() {
            let on_plan = ok
                .consumer
                .as_ref()
                .and_then(|c| c.plan.as_deref())
                .is_some_and(|plan| policy.plans.iter().any(|p| p == plan));
            if !on_plan {
                return Err(AuthError::NotOnPlan {
                    consumer: ok.consumer.as_ref().map(ToString::to_string),
                });
            }
        }
    }
    Ok(ok)
}
