//! JSON Web Key Sets: parsing, and keeping each provider's keys fresh in a background task.
//!
//! A provider's keys live in a [`KeyStore`]; requests read them without waiting, except for
//! the very first fetch (bounded) and an unknown `kid` (at most one fetch per
//! [`FetchLimits::unknown_kid_interval`], so random `kid`s cannot make us hammer the issuer).
//! A failed fetch or read keeps the last good set.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    error::AuthConfigError,
    fetch::{FetchError, Fetcher},
    metrics::AuthMetrics,
    policy::{JwksSource, JwtProvider, SourceId},
};

/// Keys kept from one JWKS; more are ignored (identity providers publish two or three).
pub const MAX_KEYS: usize = 64;

/// Bounds on fetching a provider's keys.
#[derive(Clone, Debug)]
pub struct FetchLimits {
    /// TCP connect to the JWKS host.
    pub connect_timeout: Duration,
    /// The whole fetch: connect, TLS, request and body.
    pub total_timeout: Duration,
    /// Largest JWKS document (file or body) read.
    pub max_body: usize,
    /// Fewest time between two fetches caused by an unknown `kid`.
    pub unknown_kid_interval: Duration,
    /// Wait before trying again after a failed fetch (or the refresh interval, if shorter).
    pub retry_after_error: Duration,
}

/// A JWKS fetch is on the first request's path: 5 s is as long as a client should wait.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Real key sets are a few KiB; 256 KiB leaves room for many certificates in `x5c`.
pub const DEFAULT_MAX_JWKS_BYTES: usize = 256 * 1024;
/// Key rotation is rare; one forced fetch per 30 s serves it and bounds what an attacker
/// sending made-up `kid`s can cause.
pub const DEFAULT_UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(30);
/// After a failed fetch, try again soon, without hammering an issuer that is down.
pub const DEFAULT_RETRY_AFTER_ERROR: Duration = Duration::from_secs(10);

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            connect_timeout: DEFAULT_FETCH_TIMEOUT,
            total_timeout: DEFAULT_FETCH_TIMEOUT,
            max_body: DEFAULT_MAX_JWKS_BYTES,
            unknown_kid_interval: DEFAULT_UNKNOWN_KID_INTERVAL,
            retry_after_error: DEFAULT_RETRY_AFTER_ERROR,
        }
    }
}

/// Why a JWKS document cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("not a JWKS JSON document: {source}")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error("the JWKS has no usable signing key (RSA, EC P-256/P-384 or Ed25519)")]
    NoKeys,
}

/// The kind of a verification key, which decides the algorithms it may verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this kind verifies `alg` (RFC 7518 section 3.1 pairs them).
    pub fn verifies(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (
                KeyKind::Rsa,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (KeyKind::P256, Algorithm::ES256)
                | (KeyKind::P384, Algorithm::ES384)
                | (KeyKind::Ed25519, Algorithm::EdDSA)
        )
    }
}

/// One signature verification key.
pub struct VerifyKey {
    pub kid: Option<String>,
    /// The key's own `alg`, which the token's must then equal.
    pub alg: Option<Algorithm>,
    pub kind: KeyKind,
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &self.kind)
            .finish()
    }
}

/// The usable keys of a JWKS.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyKey>,
}

impl KeySet {
    /// Parses a JWKS document, keeping the signature keys of supported kinds. Symmetric
    /// (`oct`) keys, encryption keys and unknown kinds are skipped: a set that only has those
    /// is an error, so a broken fetch never replaces good keys.
    pub fn parse(json: &[u8]) -> Result<Self, JwksError> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(json).map_err(|source| JwksError::Json { source })?;
        let keys: Vec<VerifyKey> = doc
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
            .filter_map(|jwk| VerifyKey::from_jwk(&jwk))
            .take(MAX_KEYS)
            .collect();
        if keys.is_empty() {
            return Err(JwksError::NoKeys);
        }
        Ok(KeySet { keys })
    }
}

impl VerifyKey {
    fn from_jwk(jwk: &Jwk) -> Option<Self> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return None;
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => KeyKind::P256,
                EllipticCurve::P384 => KeyKind::P384,
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                KeyKind::Ed25519
            }
            // `oct` keys would let HS* tokens in; they are never accepted.
            _ => return None,
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(ka) => {
                let alg = key_algorithm(ka)?;
                // A key whose alg does not fit its kind is broken; skip it.
                if !kind.verifies(alg) {
                    return None;
                }
                Some(alg)
            }
        };
        let key = DecodingKey::from_jwk(jwk).ok()?;
        Some(VerifyKey {
            kid: jwk.common.key_id.clone(),
            alg,
            kind,
            key,
        })
    }
}

fn key_algorithm(ka: KeyAlgorithm) -> Option<Algorithm> {
    Some(match ka {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

// === KeyStore ===

/// What requests see of a provider's keys.
#[derive(Clone, Debug, Default)]
struct KeyState {
    /// The last good set, if any fetch succeeded.
    keys: Option<Arc<KeySet>>,
    /// Fetches finished (good or not), so waiters can tell one happened.
    attempts: u64,
}

struct Shared {
    provider: String,
    state: watch::Sender<KeyState>,
    refetch: Notify,
    last_forced: Mutex<Option<Instant>>,
    limits: FetchLimits,
}

/// The keys of one fetched provider (file or URL). The fetch task runs while a `KeyStore`
/// exists: dropping the last one (the last configuration using the provider) stops it.
pub struct KeyStore {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

impl KeyStore {
    /// The current keys; waits (bounded) for the first fetch if none has finished yet.
    pub(crate) async fn keys(&self) -> Option<Arc<KeySet>> {
        let mut rx = self.shared.state.subscribe();
        {
            let state = rx.borrow_and_update();
            if state.keys.is_some() || state.attempts > 0 {
                return state.keys.clone();
            }
        }
        let wait = self.first_fetch_wait();
        let _ = tokio::time::timeout(wait, rx.wait_for(|s| s.attempts > 0)).await;
        rx.borrow().keys.clone()
    }

    /// Asks for a fetch now because a token names a key we do not hold (the issuer rotated
    /// its keys), and waits for it (bounded). Returns `None` without fetching when a forced
    /// fetch happened within `unknown_kid_interval`.
    pub(crate) async fn refetch_for_unknown_kid(&self) -> Option<Arc<KeySet>> {
        {
            let mut last = self.shared.last_forced.lock();
            let now = Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < self.shared.limits.unknown_kid_interval)
            {
                return None;
            }
            *last = Some(now);
        }
        let mut rx = self.shared.state.subscribe();
        let before = rx.borrow_and_update().attempts;
        self.shared.refetch.notify_one();
        let wait = self.first_fetch_wait();
        let _ = tokio::time::timeout(wait, rx.wait_for(|s| s.attempts > before)).await;
        rx.borrow().keys.clone()
    }

    /// Fetches (or re-reads) now, without waiting: a new configuration version re-reads
    /// JWKS files.
    pub(crate) fn reload(&self) {
        self.shared.refetch.notify_one();
    }

    fn first_fetch_wait(&self) -> Duration {
        self.shared.limits.total_timeout + Duration::from_millis(500)
    }
}

async fn run(
    shared: Arc<Shared>,
    fetcher: Fetcher,
    refresh: Duration,
    stop: CancellationToken,
    metrics: AuthMetrics,
) {
    loop {
        let result = tokio::select! {
            r = fetcher.fetch(&shared.limits) => r,
            () = stop.cancelled() => return,
        };
        let parsed = result
            .and_then(|bytes| KeySet::parse(&bytes).map_err(|source| FetchError::Jwks { source }));
        let ok = match parsed {
            Ok(keys) => {
                tracing::debug!(provider = %shared.provider, keys = keys.keys.len(), "JWKS loaded");
                shared.state.send_modify(|s| {
                    s.keys = Some(Arc::new(keys));
                    s.attempts += 1;
                });
                true
            }
            Err(error) => {
                metrics.jwks_fetch_error(&shared.provider);
                let kept = shared.state.borrow().keys.is_some();
                tracing::warn!(
                    provider = %shared.provider,
                    source = %fetcher,
                    %error,
                    kept_previous_keys = kept,
                    "JWKS fetch failed; tokens signed by keys already held still pass",
                );
                shared.state.send_modify(|s| s.attempts += 1);
                false
            }
        };
        let wait = if ok {
            refresh
        } else {
            refresh.min(shared.limits.retry_after_error)
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.refetch.notified() => {}
            () = stop.cancelled() => return,
        }
    }
}

// === JwksRegistry ===

struct RegistryInner {
    stores: Mutex<HashMap<SourceId, Weak<KeyStore>>>,
    metrics: AuthMetrics,
    limits: FetchLimits,
    shutdown: CancellationToken,
}

/// The fetched JWKS of every provider, shared by successive configuration versions so an
/// unchanged provider keeps its keys and its task. Create one per gateway.
#[derive(Clone)]
pub struct JwksRegistry {
    inner: Arc<RegistryInner>,
}

impl JwksRegistry {
    /// A registry with the default fetch bounds.
    pub fn new(metrics: AuthMetrics) -> Self {
        Self::with_limits(metrics, FetchLimits::default())
    }

    /// A registry with its own fetch bounds (tests use short ones).
    pub fn with_limits(metrics: AuthMetrics, limits: FetchLimits) -> Self {
        JwksRegistry {
            inner: Arc::new(RegistryInner {
                stores: Mutex::new(HashMap::new()),
                metrics,
                limits,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Stops every fetch task (gateway shutdown). Keys already held stay usable.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// The store of a provider's keys, starting its fetch task if no configuration uses it
    /// yet; `None` for inline keys. A file provider already running is re-read.
    pub(crate) fn store(
        &self,
        provider: &JwtProvider,
    ) -> Result<Option<Arc<KeyStore>>, AuthConfigError> {
        if matches!(provider.jwks, JwksSource::Inline(_)) {
            return Ok(None);
        }
        let mut stores = self.inner.stores.lock();
        if let Some(store) = stores.get(&provider.source_id).and_then(Weak::upgrade) {
            if matches!(provider.jwks, JwksSource::File(_)) {
                store.reload();
            }
            return Ok(Some(store));
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| AuthConfigError::NoRuntime)?;
        let fetcher = Fetcher::new(&provider.jwks).map_err(|e| AuthConfigError::Provider {
            policy: String::new(),
            provider: provider.name.clone(),
            problem: e.to_string(),
        })?;
        let stop = self.inner.shutdown.child_token();
        let shared = Arc::new(Shared {
            provider: provider.name.clone(),
            state: watch::Sender::new(KeyState::default()),
            refetch: Notify::new(),
            last_forced: Mutex::new(None),
            limits: self.inner.limits.clone(),
        });
        runtime.spawn(run(
            shared.clone(),
            fetcher,
            provider.refresh,
            stop.clone(),
            self.inner.metrics.clone(),
        ));
        let store = Arc::new(KeyStore {
            shared,
            _stop: stop.drop_guard(),
        });
        stores.retain(|_, weak| weak.strong_count() > 0);
        stores.insert(provider.source_id, Arc::downgrade(&store));
        Ok(Some(store))
    }
}
