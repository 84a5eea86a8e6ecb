//! Workload certificates: how they are obtained ([`Signer`], implemented by the control-plane
//! client) and kept fresh (the certificate manager).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::identity::SpiffeId;

mod manager;

pub use manager::{
    CertError, CertManager, CertManagerOptions, CertPhase, CertState, CertStatus,
    DEFAULT_INITIAL_BACKOFF, DEFAULT_MAX_BACKOFF, DEFAULT_RENEWAL_FRACTION,
    DEFAULT_REQUEST_TIMEOUT, IdentityCerts,
};

/// One certificate request to the mesh CA.
#[derive(Debug, Clone)]
pub struct SignRequest {
    /// PKCS#10 CSR, PEM, ECDSA P-256.
    pub csr_pem: String,
    /// The SPIFFE ID to certify; the CA checks it against the caller's node.
    pub identity: SpiffeId,
    /// Requested lifetime; `None` takes the CA's default. The CA may shorten it.
    pub ttl: Option<Duration>,
}

/// What the CA returned.
#[derive(Debug, Clone)]
pub struct SignedCertificate {
    /// PEM certificates, leaf first, then intermediates.
    pub chain_pem: Vec<String>,
    /// The roots (PEM) the chain verifies against.
    pub trust_roots_pem: Vec<String>,
}

/// Why a certificate could not be obtained.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SignError {
    pub message: String,
    /// False when asking again cannot help (the CA refused the identity); the manager still
    /// retries, but slower.
    pub retryable: bool,
}

/// A boxed future, so that [`Signer`] stays object safe.
pub type SignFuture<'a> =
    Pin<Box<dyn Future<Output = Result<SignedCertificate, SignError>> + Send + 'a>>;

/// Obtains certificates from the mesh CA.
pub trait Signer: Send + Sync + 'static {
    fn sign(&self, request: SignRequest) -> SignFuture<'_>;
}
