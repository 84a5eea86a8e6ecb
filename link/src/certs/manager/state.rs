//! What a certificate manager knows about one identity, and how it shows it.

use std::sync::Arc;
use std::time::SystemTime;

use crate::identity::SpiffeId;
use crate::tls::{CertResolver, Certificate, TrustBundle};

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
    pub(super) fn ready_parts(&self) -> Option<(Arc<CertResolver>, Arc<TrustBundle>)> {
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
    /// Every value of [`CertPhase::as_str`], in lifecycle order.
    pub const NAMES: [&'static str; 5] = ["pending", "valid", "renewing", "retrying", "expired"];

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
    pub(super) fn new(identity: SpiffeId, state: &CertState) -> Self {
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
