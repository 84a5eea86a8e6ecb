//! The CA client: `weft.identity.v1.Certificates/Sign` on the control plane, over the same
//! TLS settings as the discovery client and presenting the node credential, which is what
//! lets the CA decide which identities this node may have (ARCHITECTURE.md §4).
//!
//! [`CaClient`] implements [`Signer`], the seam the certificate manager renews through.

use std::sync::OnceLock;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tracing::debug;
use weft_proto::identity::v1::{self as pb, certificates_client::CertificatesClient};

use super::{ClientConfig, ClientError, ClientIdentity, DEFAULT_CONNECT_TIMEOUT};
use crate::certs::{SignError, SignFuture, SignRequest, SignedCertificate, Signer};
use crate::identity::SpiffeId;

/// How long one Sign call may take, connecting included. Signing is one ECDSA signature on
/// the control plane; a call this slow means it is unreachable or overloaded, and the
/// certificate manager retries.
pub const DEFAULT_SIGN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the CA is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct CaClientConfig {
    /// The control plane's address, `https://host:port`.
    pub address: String,
    /// The root certificate(s) (PEM) the control plane's certificate must chain to.
    pub ca_cert_pem: String,
    /// The name to verify in the server certificate; the address's host when `None`.
    pub server_name: Option<String>,
    /// The node credential. Without one the CA refuses every request (UNAUTHENTICATED).
    pub identity: Option<ClientIdentity>,
    pub connect_timeout: Duration,
    /// The deadline of one Sign call.
    pub request_timeout: Duration,
}

impl CaClientConfig {
    pub fn new(
        address: impl Into<String>,
        ca_cert_pem: impl Into<String>,
        identity: ClientIdentity,
    ) -> Self {
        CaClientConfig {
            address: address.into(),
            ca_cert_pem: ca_cert_pem.into(),
            server_name: None,
            identity: Some(identity),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_SIGN_TIMEOUT,
        }
    }
}

/// The discovery client's connection settings, for a CA client beside it.
impl From<&ClientConfig> for CaClientConfig {
    fn from(config: &ClientConfig) -> Self {
        CaClientConfig {
            address: config.address.clone(),
            ca_cert_pem: config.ca_cert_pem.clone(),
            server_name: config.server_name.clone(),
            identity: config.identity.clone(),
            connect_timeout: config.connect_timeout,
            request_timeout: DEFAULT_SIGN_TIMEOUT,
        }
    }
}

// === impl CaClient ===

/// Asks the mesh CA for workload certificates. One HTTP/2 channel, connected on first use
/// and reconnected by tonic after a failure; cheap to share behind an `Arc`.
pub struct CaClient {
    address: String,
    endpoint: Endpoint,
    // Created inside the first call rather than in `new`: a lazy channel spawns its worker
    // task at once, which needs a runtime, and the agent builds its clients before it has one.
    channel: OnceLock<Channel>,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClient")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl CaClient {
    /// Checks the address and TLS material (a malformed CA file, node certificate or key is
    /// an error here, not at the first renewal); connects on the first request.
    pub fn new(config: CaClientConfig) -> Result<Self, ClientError> {
        let endpoint = super::endpoint_with_identity(
            &config.address,
            &config.ca_cert_pem,
            config.server_name.as_deref(),
            config.identity.as_ref(),
            config.connect_timeout,
        )?
        .timeout(config.request_timeout);
        Ok(CaClient {
            address: config.address,
            endpoint,
            channel: OnceLock::new(),
        })
    }

    /// The control plane's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Signs `request`'s CSR for its identity. See [`Signer`].
    pub async fn sign_certificate(
        &self,
        request: SignRequest,
    ) -> Result<SignedCertificate, SignError> {
        let channel = self
            .channel
            .get_or_init(|| self.endpoint.connect_lazy())
            .clone();
        let identity = request.identity;
        let ttl_seconds = request.ttl.map_or(0, |ttl| {
            // 0 would mean "the CA's default"; a sub-second request means "as short as you
            // allow", which the CA caps anyway.
            u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX).max(1)
        });
        let response = CertificatesClient::new(channel)
            .sign(pb::SignRequest {
                csr_pem: request.csr_pem,
                identity: identity.to_string(),
                ttl_seconds,
            })
            .await
            .map_err(|status| sign_error(&status, &identity, &self.address))?
            .into_inner();
        if response.cert_chain_pem.is_empty() {
            return Err(SignError {
                message: format!(
                    "the CA at {} returned no certificate for {identity}",
                    self.address
                ),
                retryable: true,
            });
        }
        debug!(%identity, address = %self.address, "certificate signed");
        Ok(SignedCertificate {
            chain_pem: response.cert_chain_pem,
            trust_roots_pem: response.trust_roots_pem,
        })
    }
}

impl Signer for CaClient {
    fn sign(&self, request: SignRequest) -> SignFuture<'_> {
        Box::pin(self.sign_certificate(request))
    }
}

/// What a failed Sign call means, in one line, and whether asking again can help: a refusal
/// (no node credential, an identity not on this node, a bad request) stands until something
/// changes, anything else may be transient.
fn sign_error(status: &tonic::Status, identity: &SpiffeId, address: &str) -> SignError {
    use tonic::Code;
    let mut detail = status.message().to_string();
    if let Some(source) = std::error::Error::source(status) {
        let chain = crate::error_chain(source);
        if !detail.contains(&chain) {
            if !detail.is_empty() {
                detail.push_str(": ");
            }
            detail.push_str(&chain);
        }
    }
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument => SignError {
            message: format!("the CA at {address} refused {identity}: {detail}"),
            retryable: false,
        },
        Code::Unavailable => SignError {
            message: format!(
                "cannot reach the CA at {address} to sign {identity}: {detail} (is the control \
                 plane running and reachable, and does its certificate match the CA file?)"
            ),
            retryable: true,
        },
        Code::DeadlineExceeded => SignError {
            message: format!("the CA at {address} did not answer in time for {identity}: {detail}"),
            retryable: true,
        },
        code => SignError {
            message: format!("the CA at {address} failed to sign {identity}: {code}: {detail}"),
            retryable: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> SpiffeId {
        "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap()
    }

    #[test]
    fn refusals_are_final_and_the_rest_retryable() {
        let cases = [
            (tonic::Code::Unauthenticated, false),
            (tonic::Code::PermissionDenied, false),
            (tonic::Code::InvalidArgument, false),
            (tonic::Code::Unavailable, true),
            (tonic::Code::DeadlineExceeded, true),
            (tonic::Code::Internal, true),
            (tonic::Code::Unimplemented, true),
        ];
        for (code, retryable) in cases {
            let e = sign_error(
                &tonic::Status::new(code, "no way"),
                &id(),
                "https://cp:15012",
            );
            assert_eq!(e.retryable, retryable, "{code:?}: {e}");
            assert!(e.message.contains("https://cp:15012"), "{e}");
            assert!(
                e.message.contains("spiffe://cluster.local/ns/shop/sa/web"),
                "{e}"
            );
            assert!(e.message.contains("no way"), "{e}");
            assert!(!e.message.contains('\n'), "{e}");
        }
        let e = sign_error(
            &tonic::Status::permission_denied("not on this node"),
            &id(),
            "https://cp:15012",
        );
        assert_eq!(
            e.message,
            "the CA at https://cp:15012 refused spiffe://cluster.local/ns/shop/sa/web: not on this node"
        );
    }

    #[test]
    fn bad_tls_material_fails_at_construction() {
        let config = CaClientConfig::new(
            "https://127.0.0.1:15012",
            "not a pem",
            ClientIdentity::new("not a cert", "not a key"),
        );
        let err = CaClient::new(config).unwrap_err().to_string();
        assert!(err.contains("invalid TLS settings"), "{err}");
        let err = CaClient::new(CaClientConfig::new(
            "not a url",
            "",
            ClientIdentity::new("", ""),
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("invalid control plane address"), "{err}");
    }
}
