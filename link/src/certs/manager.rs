//! The certificate manager: one task per local identity that obtains its X.509-SVID from the
//! mesh CA and keeps it fresh, as ztunnel's `SecretManager` does for Istio ambient.
//!
//! - Every request carries a fresh ECDSA P-256 key (ARCHITECTURE.md §4), generated here: the
//!   private key never leaves the process, the CA only sees a CSR.
//! - Renewal is due at a fraction (default: half) of the certificate's *issued* lifetime,
//!   from when it was requested (or its `not_before`, if later) to `not_after`, so a CA that
//!   shortens the requested TTL is renewed in time, and one that backdates `not_before` for
//!   clock skew does not make a fresh certificate look half-used.
//! - When a request fails the old certificate keeps being served until it expires, and
//!   requests are retried with backoff and jitter for as long as anyone watches the identity.
//! - There is one [`CertResolver`] per identity, rotated in place: TLS configs built once
//!   present the new certificate at their next handshake.
//! - The task lives as long as the [`IdentityCerts`] handles of its identity; when the last
//!   one is dropped the task stops and the identity is forgotten.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::pki_types::UnixTime;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use super::{SignError, SignRequest, Signer};
use crate::control::Backoff;
use crate::identity::SpiffeId;
use crate::tls::{CertResolver, Certificate, TlsError, TrustBundle};

/// First retry delay after a failed request: short, so a CA restart costs a workload well
/// under a second of waiting for its first certificate.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest retry delay: bounds how long a workload stays without a certificate once the CA
/// is back, while a fleet of agents retrying an outage stays a trickle.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Renew at half-life (ARCHITECTURE.md §4, as Istio): with 24 h certificates that leaves
/// 12 h to ride out a CA outage.
pub const DEFAULT_RENEWAL_FRACTION: f64 = 0.5;
/// How long one request may take: above a connect timeout plus signing under load, and it
/// bounds how long a hung request holds up the next attempt.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Tokio timers run on the monotonic clock, which stands still while the machine is
/// suspended; certificates expire by the wall clock. Long waits are cut into steps of this
/// size so that a wake-up after a suspend sees the real time within a minute.
const MAX_SLEEP_STEP: Duration = Duration::from_secs(60);

/// How certificates are requested and renewed.
#[derive(Debug, Clone)]
pub struct CertManagerOptions {
    /// The lifetime to ask for; `None` takes the CA's default (24 h). The CA may shorten it,
    /// and renewal follows the lifetime actually issued.
    pub ttl: Option<Duration>,
    /// First delay before retrying a failed request; it doubles up to `max_backoff`, with
    /// jitter so that agents do not retry in lockstep.
    pub initial_backoff: Duration,
    /// Longest delay between retries. A request the CA refused outright
    /// ([`SignError::retryable`] false) is retried after about this long every time.
    pub max_backoff: Duration,
    /// When renewal is due, as a fraction of the issued lifetime, in (0, 1); values outside
    /// that range fall back to [`DEFAULT_RENEWAL_FRACTION`].
    pub renewal_fraction: f64,
    /// How long the [`Signer`] may take for one request before it counts as failed.
    pub request_timeout: Duration,
}

impl Default for CertManagerOptions {
    fn default() -> Self {
        Self {
            ttl: None,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            renewal_fraction: DEFAULT_RENEWAL_FRACTION,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// Why a certificate could not be obtained, or a handle gave up waiting for one.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("building the certificate request for {identity} failed: {source}")]
    Csr {
        identity: SpiffeId,
        #[source]
        source: rcgen::Error,
    },

    #[error("the CA did not answer within {after:?} (is the control plane reachable?)")]
    Timeout { after: Duration },

    #[error("the CA did not issue a certificate: {source}")]
    Sign {
        #[source]
        source: SignError,
    },

    #[error("the CA returned an unusable certificate: {source}")]
    Certificate {
        #[source]
        source: TlsError,
    },

    #[error("the CA returned unusable trust roots: {source}")]
    TrustRoots {
        #[source]
        source: TlsError,
    },

    #[error("asked the CA for {requested} but it certified {issued}")]
    WrongIdentity {
        requested: SpiffeId,
        issued: SpiffeId,
    },

    #[error(
        "the issued certificate does not verify against the trust roots sent with it: \
         {reason} (does the CA sign with the root it announces?)"
    )]
    Untrusted { reason: String },

    #[error(
        "the CA issued a certificate that expired at {not_after} \
         (is the clock of the CA or of this node wrong?)"
    )]
    AlreadyExpired { not_after: String },

    #[error(
        "the certificate task of {identity} has stopped (its Tokio runtime shut down); \
         watch the identity again"
    )]
    Stopped { identity: SpiffeId },
}

impl CertError {
    /// False when asking again soon cannot help: the CA refused, or answers with something
    /// unusable. The manager still retries, at the slowest pace.
    fn retryable(&self) -> bool {
        match self {
            CertError::Sign { source } => source.retryable,
            CertError::Csr { .. } | CertError::Timeout { .. } | CertError::Stopped { .. } => true,
            CertError::Certificate { .. }
            | CertError::TrustRoots { .. }
            | CertError::WrongIdentity { .. }
            | CertError::Untrusted { .. }
            | CertError::AlreadyExpired { .. } => false,
        }
    }
}

// === impl CertState ===

/// What a handle knows about its identity's certificate; published through a
/// `tokio::sync::watch` on every change.
#[derive(Clone, Debug, Default)]
pub struct CertState {
    /// The certificate to serve; `None` before the first one and after it expired unreplaced.
    pub certificate: Option<Arc<Certificate>>,
    /// Start of `certificate`'s validity, as issued.
    pub not_before: Option<SystemTime>,
    /// The roots sent with the latest certificate. Kept after the certificate expires.
    pub trust_bundle: Option<Arc<TrustBundle>>,
    /// The identity's one resolver, from the first certificate on, rotated on every renewal.
    /// After an expiry it still holds the expired certificate (which peers refuse) until a
    /// new one arrives.
    pub resolver: Option<Arc<CertResolver>>,
    /// Why the latest request failed; `None` once one succeeds.
    pub last_error: Option<String>,
    /// When the next request is due: the renewal point after an issue, the retry time after
    /// a failure (in the past while that request is in flight).
    pub next_renewal: Option<SystemTime>,
    /// A request is in flight.
    pub renewing: bool,
    /// Set when the certificate expired before a new one arrived: its `not_after`.
    pub expired_at: Option<SystemTime>,
}

impl CertState {
    pub fn phase(&self) -> CertPhase {
        match (&self.certificate, &self.last_error) {
            (Some(_), Some(error)) => CertPhase::RetryingAfterError {
                error: error.clone(),
            },
            (Some(_), None) if self.renewing => CertPhase::Renewing,
            (Some(_), None) => CertPhase::Valid,
            (None, error) if self.expired_at.is_some() => CertPhase::Expired {
                error: error.clone(),
            },
            (None, error) => CertPhase::Pending {
                error: error.clone(),
            },
        }
    }

    /// The resolver and the trust bundle, once there is a certificate to serve.
    fn ready_parts(&self) -> Option<(Arc<CertResolver>, Arc<TrustBundle>)> {
        self.certificate.as_ref()?;
        Some((self.resolver.clone()?, self.trust_bundle.clone()?))
    }
}

/// Where an identity's certificate stands, for `/certs` and readiness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertPhase {
    /// No certificate yet; the first request is in flight or waits to be retried after
    /// `error`.
    Pending { error: Option<String> },
    /// A certificate is served and the latest request succeeded.
    Valid,
    /// A certificate is served and its renewal is in flight.
    Renewing,
    /// A certificate is served but the latest request failed; retrying with backoff.
    RetryingAfterError { error: String },
    /// The certificate expired before it could be renewed; retrying. New handshakes fail.
    Expired { error: Option<String> },
}

impl CertPhase {
    /// A short name for tables and metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            CertPhase::Pending { .. } => "pending",
            CertPhase::Valid => "valid",
            CertPhase::Renewing => "renewing",
            CertPhase::RetryingAfterError { .. } => "retrying",
            CertPhase::Expired { .. } => "expired",
        }
    }
}

/// One row of the admin `/certs` endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertStatus {
    pub identity: SpiffeId,
    /// Validity of the current certificate (for `Expired`: `not_after` of the expired one).
    pub not_before: Option<SystemTime>,
    pub not_after: Option<SystemTime>,
    pub next_renewal: Option<SystemTime>,
    pub phase: CertPhase,
}

impl CertStatus {
    fn new(identity: SpiffeId, state: &CertState) -> Self {
        Self {
            identity,
            not_before: state.not_before,
            not_after: state
                .certificate
                .as_ref()
                .map(|cert| cert.not_after())
                .or(state.expired_at),
            next_renewal: state.next_renewal,
            phase: state.phase(),
        }
    }
}

// === impl CertManager ===

/// Identities being watched, each to the handles' shared part. Weak, so that dropping the
/// last handle is what stops a task.
type Registry = Mutex<HashMap<SpiffeId, Weak<Shared>>>;

/// Obtains and renews the certificates of the identities it is asked to [`watch`].
/// Cheap to clone; clones share the identities.
///
/// [`watch`]: CertManager::watch
#[derive(Clone)]
pub struct CertManager {
    signer: Arc<dyn Signer>,
    options: CertManagerOptions,
    registry: Arc<Registry>,
}

impl CertManager {
    pub fn new(signer: Arc<dyn Signer>, mut options: CertManagerOptions) -> Self {
        let fraction = options.renewal_fraction;
        if !(fraction > 0.0 && fraction < 1.0) {
            warn!(
                renewal_fraction = fraction,
                default = DEFAULT_RENEWAL_FRACTION,
                "the renewal fraction must be between 0 and 1; using the default"
            );
            options.renewal_fraction = DEFAULT_RENEWAL_FRACTION;
        }
        Self {
            signer,
            options,
            registry: Arc::default(),
        }
    }

    /// A handle on the certificate of `identity`. The first handle of an identity starts
    /// its task on the current Tokio runtime; later ones share it.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn` does.
    pub fn watch(&self, identity: SpiffeId) -> IdentityCerts {
        // A handle whose task died with its runtime is replaced. It is dropped only after
        // the lock is released, since its drop takes the lock.
        let mut stale = None;
        let shared = {
            let mut registry = self.registry.lock();
            match registry.get(&identity).and_then(Weak::upgrade) {
                Some(shared) if shared.task_running() => shared,
                other => {
                    stale = other;
                    let shared = self.start(identity.clone());
                    registry.insert(identity, Arc::downgrade(&shared));
                    shared
                }
            }
        };
        drop(stale);
        IdentityCerts { shared }
    }

    /// Where each watched identity stands, sorted by identity.
    pub fn statuses(&self) -> Vec<CertStatus> {
        // Upgraded under the lock, read and dropped after it (a drop may take the lock).
        let shared: Vec<Arc<Shared>> = self
            .registry
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let mut statuses: Vec<CertStatus> = shared
            .iter()
            .map(|shared| CertStatus::new(shared.identity.clone(), &shared.state.borrow()))
            .collect();
        statuses.sort_by(|a, b| a.identity.cmp(&b.identity));
        statuses
    }

    fn start(&self, identity: SpiffeId) -> Arc<Shared> {
        let (state_tx, state_rx) = watch::channel(CertState::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = Task {
            identity: identity.clone(),
            signer: self.signer.clone(),
            options: self.options.clone(),
            state: state_tx,
        };
        tokio::spawn(task.run(stop_rx));
        Arc::new(Shared {
            identity,
            state: state_rx,
            registry: self.registry.clone(),
            _stop: stop_tx,
        })
    }
}

impl fmt::Debug for CertManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertManager")
            .field("options", &self.options)
            .field("identities", &self.registry.lock().len())
            .finish_non_exhaustive()
    }
}

// === impl IdentityCerts ===

/// A handle on one identity's certificate. Clone it freely; the identity's task runs until
/// the last handle (of all obtained from [`CertManager::watch`]) is dropped.
#[derive(Clone)]
pub struct IdentityCerts {
    shared: Arc<Shared>,
}

/// What the handles of one identity share.
struct Shared {
    identity: SpiffeId,
    state: watch::Receiver<CertState>,
    registry: Arc<Registry>,
    /// Dropped with the last handle, which tells the task to stop.
    _stop: oneshot::Sender<()>,
}

impl Shared {
    fn task_running(&self) -> bool {
        // The task owns the sender: an error means it is gone.
        self.state.has_changed().is_ok()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let mut registry = self.registry.lock();
        // The entry may already belong to a newer task of the identity; leave that alone.
        if registry
            .get(&self.identity)
            .is_some_and(|weak| weak.strong_count() == 0)
        {
            registry.remove(&self.identity);
        }
    }
}

impl IdentityCerts {
    pub fn identity(&self) -> &SpiffeId {
        &self.shared.identity
    }

    /// Every change of the state, from now on. Dropping receivers does not stop the task;
    /// once it stops (the last handle is gone), `changed()` returns an error.
    pub fn subscribe(&self) -> watch::Receiver<CertState> {
        self.shared.state.clone()
    }

    /// The state now.
    pub fn state(&self) -> CertState {
        self.shared.state.borrow().clone()
    }

    pub fn status(&self) -> CertStatus {
        CertStatus::new(self.shared.identity.clone(), &self.shared.state.borrow())
    }

    /// The identity's one resolver, once a certificate has been issued; see
    /// [`CertState::resolver`].
    pub fn resolver(&self) -> Option<Arc<CertResolver>> {
        self.shared.state.borrow().resolver.clone()
    }

    pub fn trust_bundle(&self) -> Option<Arc<TrustBundle>> {
        self.shared.state.borrow().trust_bundle.clone()
    }

    /// Waits until there is a certificate to serve and returns what TLS configs are built
    /// from. Waits as long as it takes; callers that need a bound wrap it in a timeout.
    ///
    /// Fails if the task has stopped (its runtime shut down): its certificate would no
    /// longer be renewed.
    pub async fn ready(&self) -> Result<(Arc<CertResolver>, Arc<TrustBundle>), CertError> {
        let stopped = || CertError::Stopped {
            identity: self.shared.identity.clone(),
        };
        let mut state = self.subscribe();
        let parts = state
            .wait_for(|state| state.ready_parts().is_some())
            .await
            .map_err(|_| stopped())?
            .ready_parts();
        // `wait_for` answers from the last value even when the task is gone.
        if !self.shared.task_running() {
            return Err(stopped());
        }
        parts.ok_or_else(stopped)
    }
}

impl fmt::Debug for IdentityCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityCerts")
            .field("identity", &self.shared.identity)
            .field("phase", &self.shared.state.borrow().phase())
            .finish()
    }
}

// === impl Task ===

/// The renewal loop of one identity; the only writer of its state.
struct Task {
    identity: SpiffeId,
    signer: Arc<dyn Signer>,
    options: CertManagerOptions,
    state: watch::Sender<CertState>,
}

/// A certificate checked and ready to publish.
struct Issued {
    cert: Certificate,
    bundle: TrustBundle,
    not_before: SystemTime,
    /// Where the usable lifetime starts: the request, unless `not_before` is later.
    lifetime_start: SystemTime,
}

impl Task {
    async fn run(self, stop: oneshot::Receiver<()>) {
        let identity = self.identity.clone();
        tokio::select! {
            _ = stop => {}
            () = self.renew_forever() => {}
        }
        debug!(%identity, "last handle dropped; certificate renewal stopped");
    }

    async fn renew_forever(&self) {
        let mut backoff = Backoff::new(self.options.initial_backoff, self.options.max_backoff);
        // Refusals are retried at the slowest pace from the start.
        let mut refused = Backoff::new(self.options.max_backoff, self.options.max_backoff);
        loop {
            self.state.send_modify(|state| state.renewing = true);
            let next = match self.until_expiry(self.request()).await {
                Ok(issued) => self.publish(issued, &mut backoff),
                Err(error) => {
                    let delay = if error.retryable() {
                        backoff.next_delay()
                    } else {
                        refused.next_delay()
                    };
                    self.failed(&error, delay)
                }
            };
            self.until_expiry(sleep_until(next)).await;
        }
    }

    /// Runs `fut`, clearing the certificate when it expires in the meantime.
    async fn until_expiry<F: Future>(&self, fut: F) -> F::Output {
        tokio::pin!(fut);
        loop {
            let expiry = self
                .state
                .borrow()
                .certificate
                .as_ref()
                .map(|cert| cert.not_after());
            let expired = async {
                match expiry {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                out = &mut fut => return out,
                () = expired => self.expire(),
            }
        }
    }

    /// One request: a new key, a CSR, the CA's answer, checked.
    async fn request(&self) -> Result<Issued, CertError> {
        let requested_at = SystemTime::now();
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CertError::Csr {
                identity: self.identity.clone(),
                source,
            })?;
        let csr_pem = csr(&self.identity, &key).map_err(|source| CertError::Csr {
            identity: self.identity.clone(),
            source,
        })?;
        let request = SignRequest {
            csr_pem,
            identity: self.identity.clone(),
            ttl: self.options.ttl,
        };
        let after = self.options.request_timeout;
        let signed = tokio::time::timeout(after, self.signer.sign(request))
            .await
            .map_err(|_| CertError::Timeout { after })?
            .map_err(|source| CertError::Sign { source })?;

        let cert = Certificate::from_pem(
            signed.chain_pem.join("\n").as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .map_err(|source| CertError::Certificate { source })?;
        if cert.identity() != &self.identity {
            return Err(CertError::WrongIdentity {
                requested: self.identity.clone(),
                issued: cert.identity().clone(),
            });
        }
        let bundle = TrustBundle::from_pem(
            self.identity.trust_domain().clone(),
            signed.trust_roots_pem.join("\n").as_bytes(),
        )
        .map_err(|source| CertError::TrustRoots { source })?;
        // Only the clock of a peer can say whether it accepts the certificate; this checks
        // what the times cannot change, so that a CA/roots mismatch is reported here and not
        // as handshake failures all over the mesh.
        let not_before = leaf_not_before(&cert).unwrap_or(requested_at);
        let now = SystemTime::now();
        if cert.not_after() <= now {
            return Err(CertError::AlreadyExpired {
                not_after: fmt_time(cert.not_after()),
            });
        }
        verify_chain(&cert, &bundle, now.max(not_before))?;
        Ok(Issued {
            cert,
            bundle,
            not_before,
            // X.509 times are whole seconds; compare like with like.
            lifetime_start: not_before.max(whole_seconds(requested_at)),
        })
    }

    /// Serves a new certificate; returns when to renew it.
    fn publish(&self, issued: Issued, backoff: &mut Backoff) -> SystemTime {
        let Issued {
            cert,
            bundle,
            not_before,
            lifetime_start,
        } = issued;
        let not_after = cert.not_after();
        let renew_at = renewal_point(lifetime_start, not_after, self.options.renewal_fraction);
        let now = SystemTime::now();
        let next = if renew_at > now {
            backoff.reset();
            renew_at
        } else {
            // Renewing at once would loop as fast as the CA answers.
            let delay = backoff.next_delay();
            warn!(
                identity = %self.identity,
                not_before = %fmt_time(not_before),
                not_after = %fmt_time(not_after),
                retry_in = ?delay,
                "the certificate was issued past its renewal point; \
                 is the CA's lifetime too short or a clock wrong?"
            );
            now + delay
        };

        let resolver = match self.state.borrow().resolver.clone() {
            Some(resolver) => match resolver.rotate(cert.clone()) {
                Ok(()) => resolver,
                // Cannot happen (the identity was checked), but a new resolver is the safe
                // answer: TLS configs built on the old one keep the old certificate.
                Err(error) => {
                    warn!(identity = %self.identity, %error, "replacing the certificate resolver");
                    Arc::new(CertResolver::new(cert.clone()))
                }
            },
            None => Arc::new(CertResolver::new(cert.clone())),
        };
        info!(
            identity = %self.identity,
            not_after = %fmt_time(not_after),
            renew_at = %fmt_time(next),
            "certificate issued"
        );
        self.state.send_modify(|state| {
            *state = CertState {
                certificate: Some(Arc::new(cert)),
                not_before: Some(not_before),
                trust_bundle: Some(Arc::new(bundle)),
                resolver: Some(resolver),
                last_error: None,
                next_renewal: Some(next),
                renewing: false,
                expired_at: None,
            };
        });
        next
    }

    /// Records a failed request; returns when to retry.
    fn failed(&self, error: &CertError, delay: Duration) -> SystemTime {
        let next = SystemTime::now() + delay;
        let text = crate::error_chain(error);
        let kept_until = self
            .state
            .borrow()
            .certificate
            .as_ref()
            .map(|cert| fmt_time(cert.not_after()));
        match &kept_until {
            Some(kept_until) => warn!(
                identity = %self.identity,
                error = %text,
                %kept_until,
                retry_in = ?delay,
                "certificate renewal failed; serving the current certificate until it expires"
            ),
            None => warn!(
                identity = %self.identity,
                error = %text,
                retry_in = ?delay,
                "certificate request failed; the identity has no certificate"
            ),
        }
        self.state.send_modify(|state| {
            state.last_error = Some(text);
            state.next_renewal = Some(next);
            state.renewing = false;
        });
        next
    }

    fn expire(&self) {
        let now = SystemTime::now();
        self.state.send_if_modified(|state| {
            let Some(cert) = state.certificate.take_if(|cert| cert.not_after() <= now) else {
                return false;
            };
            warn!(
                identity = %self.identity,
                not_after = %fmt_time(cert.not_after()),
                last_error = state.last_error.as_deref().unwrap_or("none"),
                "certificate expired before it could be renewed; new connections of this \
                 identity fail until a certificate is issued"
            );
            state.not_before = None;
            state.expired_at = Some(cert.not_after());
            true
        });
    }
}

/// A CSR for `identity`: the URI SAN and nothing else; the CA decides usages and lifetime.
fn csr(identity: &SpiffeId, key: &KeyPair) -> Result<String, rcgen::Error> {
    let mut params = CertificateParams::default();
    // The default carries a placeholder common name; an SVID's subject says nothing.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(identity.as_str())?)];
    params.serialize_request(key)?.pem()
}

/// The chain must lead to `bundle` and allow both TLS roles, checked as the verifiers of
/// `crate::tls` will (webpki with the provider's algorithms).
fn verify_chain(cert: &Certificate, bundle: &TrustBundle, at: SystemTime) -> Result<(), CertError> {
    let untrusted = |reason: String| CertError::Untrusted { reason };
    let Some((leaf, intermediates)) = cert.chain().split_first() else {
        return Err(untrusted("the chain is empty".to_owned()));
    };
    let leaf = webpki::EndEntityCert::try_from(leaf).map_err(|e| untrusted(e.to_string()))?;
    let time = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap_or_default());
    let algs = crate::tls::provider().signature_verification_algorithms;
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        leaf.verify_for_usage(
            algs.all,
            bundle.anchors(),
            intermediates,
            time,
            usage,
            None,
            None,
        )
        .map_err(|e| untrusted(e.to_string()))?;
    }
    Ok(())
}

/// The leaf's `notBefore`. `Certificate` keeps only `not_after`, and the renewal point needs
/// both ends of the issued lifetime.
fn leaf_not_before(cert: &Certificate) -> Option<SystemTime> {
    let (_, leaf) = x509_parser::parse_x509_certificate(cert.chain().first()?).ok()?;
    let secs = leaf.validity().not_before.timestamp();
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

fn renewal_point(not_before: SystemTime, not_after: SystemTime, fraction: f64) -> SystemTime {
    match not_after.duration_since(not_before) {
        Ok(lifetime) => not_before + lifetime.mul_f64(fraction),
        Err(_) => not_before,
    }
}

/// Sleeps until the wall clock reads `at`, in steps (see [`MAX_SLEEP_STEP`]).
async fn sleep_until(at: SystemTime) {
    while let Ok(left) = at.duration_since(SystemTime::now()) {
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(MAX_SLEEP_STEP)).await;
    }
}

/// As `openssl x509 -dates` prints it, for logs.
fn fmt_time(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    };
    x509_parser::time::ASN1Time::from_timestamp(secs)
        .map_or_else(|_| format!("{t:?}"), |time| time.to_string())
}

// The brief for this module keeps its tests here, past the ~150 lines after which
// CONVENTIONS.md would move them to `manager/tests.rs`.
#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rcgen::{
        BasicConstraints, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
        Issuer, KeyUsagePurpose, PublicKeyData, SerialNumber, date_time_ymd,
    };
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, ServerConfig};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::certs::{SignFuture, SignedCertificate};
    use crate::tls::{ClientTls, peer_identity, server_config};

    fn id(sa: &str) -> SpiffeId {
        format!("spiffe://cluster.local/ns/default/sa/{sa}")
            .parse()
            .unwrap()
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Mode {
        Issue,
        /// The CA is unavailable: retryable.
        Fail,
        /// The CA refuses the identity: not retryable.
        Refuse,
    }

    /// A real CA: a self-signed P-256 root that signs the CSR's key for the lifetime the
    /// request asks for, with exactly one URI SAN, the identity.
    struct TestCa {
        issuer: Issuer<'static, KeyPair>,
        root_pem: String,
        mode: Mutex<Mode>,
        backdate: Mutex<Duration>,
        calls: AtomicUsize,
        /// The public key of every certificate issued.
        keys: Mutex<Vec<Vec<u8>>>,
    }

    impl TestCa {
        fn new() -> Arc<Self> {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, "test root");
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2100, 1, 1);
            let root = params.self_signed(&key).unwrap();
            Arc::new(Self {
                root_pem: root.pem(),
                issuer: Issuer::new(params, key),
                mode: Mutex::new(Mode::Issue),
                backdate: Mutex::new(Duration::ZERO),
                calls: AtomicUsize::new(0),
                keys: Mutex::default(),
            })
        }

        fn set(&self, mode: Mode) {
            *self.mode.lock() = mode;
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }

        fn issue(&self, request: &SignRequest) -> Result<SignedCertificate, SignError> {
            let csr = CertificateSigningRequestParams::from_pem(&request.csr_pem).unwrap();
            assert_eq!(
                csr.params.subject_alt_names,
                vec![SanType::URI(
                    Ia5String::try_from(request.identity.as_str()).unwrap()
                )],
                "the CSR must ask for exactly the identity"
            );
            let ttl = request.ttl.expect("each test asks for a short lifetime");
            // Whole seconds, as X.509 times are: the lifetime is then exactly `ttl`.
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params.subject_alt_names = csr.params.subject_alt_names.clone();
            let issued = date_time_ymd(1970, 1, 1) + Duration::from_secs(now.as_secs());
            // A CA may start validity in the past, for peers whose clocks lag.
            params.not_before = issued - *self.backdate.lock();
            params.not_after = issued + ttl;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            params.serial_number = Some(SerialNumber::from(self.calls() as u64));
            let signing = CertificateSigningRequestParams {
                params,
                public_key: csr.public_key,
            };
            let cert = signing.signed_by(&self.issuer).unwrap();
            self.keys
                .lock()
                .push(signing.public_key.der_bytes().to_vec());
            Ok(SignedCertificate {
                chain_pem: vec![cert.pem()],
                trust_roots_pem: vec![self.root_pem.clone()],
            })
        }
    }

    impl Signer for TestCa {
        fn sign(&self, request: SignRequest) -> SignFuture<'_> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                match *self.mode.lock() {
                    Mode::Issue => self.issue(&request),
                    Mode::Fail => Err(SignError {
                        message: "CA unavailable".to_owned(),
                        retryable: true,
                    }),
                    Mode::Refuse => Err(SignError {
                        message: "identity is not scheduled on this node".to_owned(),
                        retryable: false,
                    }),
                }
            })
        }
    }

    fn manager(ca: &Arc<TestCa>, ttl: Duration) -> CertManager {
        CertManager::new(
            ca.clone(),
            CertManagerOptions {
                ttl: Some(ttl),
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(300),
                ..CertManagerOptions::default()
            },
        )
    }

    /// Waits (a bounded time) for a state that satisfies `f`.
    async fn wait_for(
        rx: &mut watch::Receiver<CertState>,
        within: Duration,
        what: &str,
        f: impl FnMut(&CertState) -> bool,
    ) -> CertState {
        tokio::time::timeout(within, rx.wait_for(f))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap()
            .clone()
    }

    fn leaf(state: &CertState) -> CertificateDer<'static> {
        state.certificate.as_ref().unwrap().chain()[0].clone()
    }

    /// A real TLS 1.3 handshake over a pipe; returns the leaf the server presented and the
    /// identity the server authenticated.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> (CertificateDer<'static>, SpiffeId) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("weft.invalid").unwrap();
        let (server, client) = tokio::join!(
            TlsAcceptor::from(server).accept(server_io),
            TlsConnector::from(client).connect(name, client_io),
        );
        let (server, client) = (server.unwrap(), client.unwrap());
        let presented = client.get_ref().1.peer_certificates().unwrap()[0].clone();
        (presented, peer_identity(server.get_ref().1).unwrap())
    }

    #[tokio::test]
    async fn first_certificate_verifies_in_a_real_handshake() {
        let ca = TestCa::new();
        let manager = manager(&ca, Duration::from_secs(60));
        let server = manager.watch(id("server"));
        let client = manager.watch(id("client"));
        assert_eq!(server.status().phase, CertPhase::Pending { error: None });

        let within = Duration::from_secs(5);
        let (server_cert, bundle) = tokio::time::timeout(within, server.ready())
            .await
            .unwrap()
            .unwrap();
        let (client_cert, client_bundle) = tokio::time::timeout(within, client.ready())
            .await
            .unwrap()
            .unwrap();
        let state = server.state();
        assert_eq!(state.phase(), CertPhase::Valid);
        let cert = state.certificate.clone().unwrap();
        assert_eq!(cert.identity(), &id("server"));
        assert!(Arc::ptr_eq(&server_cert, state.resolver.as_ref().unwrap()));
        // The lifetime asked for, renewal at half of it.
        let not_before = state.not_before.unwrap();
        assert_eq!(cert.not_after(), not_before + Duration::from_secs(60));
        assert_eq!(
            state.next_renewal,
            Some(not_before + Duration::from_secs(30))
        );

        let server_config = server_config(server_cert, bundle, None).unwrap();
        let client_config = ClientTls::new(client_cert, client_bundle)
            .config_for(&[id("server")])
            .unwrap();
        let (presented, client_id) = handshake(server_config, client_config).await;
        assert_eq!(presented, leaf(&state));
        assert_eq!(client_id, id("client"));

        let statuses = manager.statuses();
        assert_eq!(
            statuses.iter().map(|s| &s.identity).collect::<Vec<_>>(),
            [&id("client"), &id("server")]
        );
        assert_eq!(statuses[1].phase, CertPhase::Valid);
        assert_eq!(statuses[1].not_after, Some(cert.not_after()));
        assert_eq!(ca.calls(), 2);
    }

    #[tokio::test]
    async fn a_backdated_certificate_is_renewed_at_half_of_its_remaining_life() {
        let ca = TestCa::new();
        *ca.backdate.lock() = Duration::from_secs(300);
        let manager = manager(&ca, Duration::from_secs(4));
        let certs = manager.watch(id("server"));
        certs.ready().await.unwrap();
        let state = certs.state();
        let not_after = state.certificate.as_ref().unwrap().not_after();
        // Half of the 4 s from issue, not half of the 304 s since not_before (long past).
        assert_eq!(state.next_renewal, Some(not_after - Duration::from_secs(2)));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(ca.calls(), 1, "renewed before half-life");
    }

    #[tokio::test]
    async fn renews_at_half_life_with_a_new_key_through_the_same_resolver() {
        let ca = TestCa::new();
        let manager = manager(&ca, Duration::from_secs(4));
        let server = manager.watch(id("server"));
        let client = manager.watch(id("client"));
        let (resolver, bundle) = server.ready().await.unwrap();
        let (client_cert, client_bundle) = client.ready().await.unwrap();
        // Built once, before the renewal.
        let server_config = server_config(resolver.clone(), bundle, None).unwrap();
        let client_tls = ClientTls::new(client_cert, client_bundle);
        let first = server.state();
        // Half of the issued lifetime, which is the 4 s asked for.
        let not_before = first.not_before.unwrap();
        let renew_at = not_before + Duration::from_secs(2);
        assert_eq!(first.next_renewal, Some(renew_at));
        let (presented, _) = handshake(
            server_config.clone(),
            client_tls.config_for(&[id("server")]).unwrap(),
        )
        .await;
        assert_eq!(presented, leaf(&first));

        let mut rx = server.subscribe();
        let second = wait_for(&mut rx, Duration::from_secs(5), "the renewal", |s| {
            s.certificate.is_some() && s.not_before != first.not_before
        })
        .await;
        let renewed_at = SystemTime::now();
        assert!(renewed_at >= renew_at, "renewed before the half-life");
        assert!(
            renewed_at < renew_at + Duration::from_secs(1),
            "renewed {:?} after the half-life",
            renewed_at.duration_since(renew_at).unwrap()
        );
        assert_eq!(second.phase(), CertPhase::Valid);
        assert_ne!(leaf(&second), leaf(&first));
        assert!(Arc::ptr_eq(second.resolver.as_ref().unwrap(), &resolver));
        // Two for the server (so far), one for the client, all different.
        let keys = ca.keys.lock().clone();
        assert!(keys.len() >= 3);
        for (i, key) in keys.iter().enumerate() {
            assert!(!keys[..i].contains(key), "a key was used twice");
        }

        let (presented, _) = handshake(
            server_config,
            client_tls.config_for(&[id("server")]).unwrap(),
        )
        .await;
        assert_eq!(
            presented,
            leaf(&second),
            "the next handshake uses the new cert"
        );
    }

    #[tokio::test]
    async fn failing_ca_keeps_the_certificate_until_expiry_then_recovers() {
        let ca = TestCa::new();
        let manager = manager(&ca, Duration::from_secs(3));
        let certs = manager.watch(id("server"));
        let (resolver, _) = certs.ready().await.unwrap();
        let first = certs.state();
        let not_after = first.certificate.as_ref().unwrap().not_after();
        ca.set(Mode::Fail);

        let mut rx = certs.subscribe();
        let failing = wait_for(&mut rx, Duration::from_secs(4), "a failure", |s| {
            s.last_error.is_some()
        })
        .await;
        assert!(SystemTime::now() < not_after);
        assert_eq!(leaf(&failing), leaf(&first), "the old certificate is kept");
        assert!(matches!(
            failing.phase(),
            CertPhase::RetryingAfterError { error } if error.contains("CA unavailable")
        ));

        let expired = wait_for(&mut rx, Duration::from_secs(4), "the expiry", |s| {
            s.certificate.is_none()
        })
        .await;
        assert!(SystemTime::now() >= not_after, "expired early");
        assert_eq!(expired.expired_at, Some(not_after));
        assert!(matches!(
            expired.phase(),
            CertPhase::Expired { error: Some(_) }
        ));
        let status = manager.statuses().pop().unwrap();
        assert_eq!(status.phase.as_str(), "expired");
        assert_eq!(status.not_after, Some(not_after));
        let failures = ca.calls() - 1;
        assert!(failures >= 3, "retried only {failures} times");
        // Retrying goes on after the expiry.
        let before = ca.calls();
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(ca.calls() > before, "stopped retrying after the expiry");

        ca.set(Mode::Issue);
        let recovered = wait_for(&mut rx, Duration::from_secs(2), "the recovery", |s| {
            s.certificate.is_some()
        })
        .await;
        assert_eq!(recovered.phase(), CertPhase::Valid);
        assert_eq!(recovered.expired_at, None);
        assert!(Arc::ptr_eq(recovered.resolver.as_ref().unwrap(), &resolver));
        assert_eq!(resolver.current().chain()[0], leaf(&recovered));
    }

    #[tokio::test]
    async fn refused_identity_stays_pending_and_is_retried() {
        let ca = TestCa::new();
        ca.set(Mode::Refuse);
        let manager = manager(&ca, Duration::from_secs(60));
        let certs = manager.watch(id("server"));
        let mut rx = certs.subscribe();
        let refused = wait_for(&mut rx, Duration::from_secs(2), "the refusal", |s| {
            s.last_error.is_some()
        })
        .await;
        assert!(matches!(
            refused.phase(),
            CertPhase::Pending { error: Some(error) } if error.contains("not scheduled on this node")
        ));
        assert!(certs.resolver().is_none());
        let ready = tokio::time::timeout(Duration::from_millis(100), certs.ready()).await;
        assert!(ready.is_err(), "ready without a certificate");

        ca.set(Mode::Issue);
        tokio::time::timeout(Duration::from_secs(2), certs.ready())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(certs.status().phase, CertPhase::Valid);
    }

    #[tokio::test]
    async fn handles_share_one_task_which_stops_with_the_last() {
        let ca = TestCa::new();
        let manager = manager(&ca, Duration::from_secs(2));
        let a = manager.watch(id("server"));
        let b = manager.watch(id("server"));
        let c = a.clone();
        let (resolver, _) = a.ready().await.unwrap();
        b.ready().await.unwrap();
        assert!(Arc::ptr_eq(&c.resolver().unwrap(), &resolver));
        assert_eq!(ca.calls(), 1);

        let first = a.state();
        let mut rx = b.subscribe();
        wait_for(&mut rx, Duration::from_secs(3), "the renewal", |s| {
            s.certificate.is_some() && s.not_before != first.not_before
        })
        .await;
        assert_eq!(ca.calls(), 2, "one request per renewal, not per handle");

        drop((a, b, c));
        assert!(manager.statuses().is_empty(), "the identity is forgotten");
        let stopped = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
        assert!(stopped.unwrap().is_err(), "the task has stopped");
        // Past the next renewal point: nobody asks.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(ca.calls(), 2);

        // A later watch starts afresh.
        let again = manager.watch(id("server"));
        let (new_resolver, _) = again.ready().await.unwrap();
        assert!(!Arc::ptr_eq(&new_resolver, &resolver));
        assert_eq!(ca.calls(), 3);
    }

    #[test]
    fn a_watch_from_another_runtime_replaces_a_task_that_died_with_its_runtime() {
        let ca = TestCa::new();
        let manager = manager(&ca, Duration::from_secs(60));
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let first = runtime();
        let old = first.block_on(async {
            let certs = manager.watch(id("server"));
            certs.ready().await.unwrap();
            certs
        });
        drop(first);

        let second = runtime();
        let new = second.block_on(async {
            let err = old.ready().await.unwrap_err();
            assert!(matches!(err, CertError::Stopped { .. }), "{err}");
            let certs = manager.watch(id("server"));
            tokio::time::timeout(Duration::from_secs(2), certs.ready())
                .await
                .unwrap()
                .unwrap();
            certs
        });
        assert_eq!(ca.calls(), 2);
        // Dropping the dead handle leaves the new task's registration alone.
        drop(old);
        assert_eq!(manager.statuses().len(), 1);
        second.block_on(async {
            let again = manager.watch(id("server"));
            assert!(Arc::ptr_eq(
                &again.resolver().unwrap(),
                &new.resolver().unwrap()
            ));
        });
        assert_eq!(ca.calls(), 2);
        drop(new);
        assert_eq!(
            manager.statuses().len(),
            0,
            "the identity is forgotten with its last handle"
        );
    }
}
