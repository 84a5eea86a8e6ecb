//! Mutual TLS between agents: TLS 1.3 only, ALPN `h2`, aws-lc-rs, X.509-SVIDs.
//!
//! Peers are authenticated by the single URI SAN of their certificate (a [`SpiffeId`]), never
//! by a DNS name: the server checks that the client belongs to the trust domain (and, through
//! an optional [`PeerPolicy`], that it may connect at all), and the client checks that the
//! server is one of the identities the destination is expected to run as.
//!
//! Certificates rotate in place through [`CertResolver`]: new handshakes pick up the new
//! certificate at once, established connections keep the one they were made with.
//!
//! [`SpiffeId`]: crate::identity::SpiffeId

mod cert;
mod config;
mod verify;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use cert::{CertResolver, Certificate, TrustBundle};
pub use config::{ClientTls, peer_identity, peer_svid, server_config, server_config_with};
pub use verify::{
    PeerPolicy, SpiffeClientVerifier, SpiffeServerVerifier, VerifyError, single_uri_san,
};

use crate::identity::SpiffeId;

/// The only application protocol spoken between agents: HBONE is HTTP/2 CONNECT.
pub const ALPN_H2: &[u8] = b"h2";

/// Why certificates, keys or a trust bundle could not be loaded, or a TLS config built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no {what} found in the PEM input; expected a {label} block")]
    PemEmpty {
        what: &'static str,
        label: &'static str,
    },

    #[error("{what} PEM is malformed: {source}")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },

    #[error("certificate is not an X.509-SVID: {source}")]
    NotSvid {
        #[source]
        source: VerifyError,
    },

    #[error("trust bundle certificate #{index} cannot be a trust anchor: {source:?}")]
    TrustAnchor {
        index: usize,
        #[source]
        source: webpki::Error,
    },

    #[error("the private key does not fit the certificate or is not supported: {source}")]
    Key {
        #[source]
        source: rustls::Error,
    },

    #[error(
        "a rotated certificate must keep the identity: current {current}, new {new}; \
         build a new resolver for another identity"
    )]
    IdentityChanged { current: SpiffeId, new: SpiffeId },

    #[error("the client must expect at least one server identity")]
    NoExpectedIdentity,

    #[error("building the rustls config failed: {source}")]
    Config {
        #[source]
        source: rustls::Error,
    },
}

/// The crypto provider of every Weft TLS endpoint. Built once: it is immutable and rustls
/// configs share it through the `Arc`.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}
