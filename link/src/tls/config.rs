//! rustls configs for agent-to-agent mutual TLS.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::server::{NoServerSessionStorage, ResolvesServerCert};
use rustls::{ClientConfig, CommonState, ServerConfig};

use super::verify::{self, SpiffeClientVerifier, SpiffeServerVerifier};
use super::{ALPN_H2, CertResolver, PeerPolicy, TlsError, TrustBundle, VerifyError, provider};
use crate::identity::SpiffeId;

/// TLS 1.3 only between agents (ARCHITECTURE.md §4): every peer is ours, so there is no old
/// client to accommodate, and 1.3 encrypts the certificates.
static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The server side of HBONE: requires a client certificate of the trust domain, presents the
/// current certificate of `cert`, speaks only `h2`.
///
/// Session resumption is off: a resumed session skips certificate verification, so a peer
/// refused since (policy, trust bundle) would get back in, and HBONE connections are pooled
/// and long-lived, so resumption would save little.
pub fn server_config(
    cert: Arc<CertResolver>,
    bundle: Arc<TrustBundle>,
    policy: Option<Arc<dyn PeerPolicy>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(cert, bundle, policy)
}

/// Like [`server_config`], with any certificate resolver: a listener whose identity is looked
/// up per handshake (a pod's, which may change or not be issued yet) uses its own. A resolver
/// that returns `None` fails the handshake.
pub fn server_config_with(
    cert: Arc<dyn ResolvesServerCert>,
    bundle: Arc<TrustBundle>,
    policy: Option<Arc<dyn PeerPolicy>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = Arc::new(SpiffeClientVerifier::new(bundle, policy));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|source| TlsError::Config { source })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The client side of HBONE for one local identity: its certificate and the trust bundle.
///
/// A rustls `ClientConfig` fixes the server verifier, and the identity a server must have
/// depends on the destination, so [`ClientTls::config_for`] builds one per destination; that
/// is cheap (the provider and resolver are shared) and happens once per pooled connection.
#[derive(Clone, Debug)]
pub struct ClientTls {
    cert: Arc<CertResolver>,
    bundle: Arc<TrustBundle>,
}

impl ClientTls {
    pub fn new(cert: Arc<CertResolver>, bundle: Arc<TrustBundle>) -> Self {
        Self { cert, bundle }
    }

    /// The identity this client presents.
    pub fn identity(&self) -> &SpiffeId {
        self.cert.identity()
    }

    /// The certificate new handshakes present now.
    pub fn certificate(&self) -> Arc<super::Certificate> {
        self.cert.current()
    }

    /// A config that accepts a server only if it proves one of the `expected` identities.
    pub fn config_for(&self, expected: &[SpiffeId]) -> Result<Arc<ClientConfig>, TlsError> {
        if expected.is_empty() {
            return Err(TlsError::NoExpectedIdentity);
        }
        let verifier = Arc::new(SpiffeServerVerifier::new(
            self.bundle.clone(),
            expected.to_vec(),
        ));
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|source| TlsError::Config { source })?
            // "dangerous" is rustls' name for any verifier other than its web PKI one; this
            // one validates the chain as strictly, and matches a SPIFFE ID instead of a name.
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.cert.clone());
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.resumption = Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// The identity a peer proved in a finished handshake (either side). The verifiers have
/// already validated it; this reads it back from the certificate the peer sent.
pub fn peer_identity(conn: &CommonState) -> Result<SpiffeId, VerifyError> {
    peer_svid(conn).map(|(identity, _)| identity)
}

/// The peer's SPIFFE ID and when the certificate it proved it with expires (a connection
/// admitted on it is allowed no longer than that), from one reading of the certificate.
pub fn peer_svid(conn: &CommonState) -> Result<(SpiffeId, std::time::SystemTime), VerifyError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or(VerifyError::NoCertificate)?;
    let svid = verify::parse_svid(leaf)?;
    Ok((svid.identity, svid.not_after))
}
