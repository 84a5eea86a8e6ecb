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
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};
use tracing::warn;

mod state;
mod task;
#[cfg(test)]
mod tests;

pub use state::{CertPhase, CertState, CertStatus};
use task::Task;

use super::{SignError, Signer};
use crate::identity::SpiffeId;
use crate::tls::{CertResolver, TlsError, TrustBundle};

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
