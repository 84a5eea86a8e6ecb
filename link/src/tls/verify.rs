//! Certificate verifiers that authenticate peers by SPIFFE ID.
//!
//! The chain is validated with webpki against the trust bundle (signatures, validity period,
//! CA constraints, extended key usage); then the leaf must carry exactly one URI SAN, a
//! [`SpiffeId`] of the bundle's trust domain (the X.509-SVID rule,
//! <https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md>). DNS names play no
//! part: a destination is reached by pod IP and is what its identity says it is.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use webpki::KeyUsage;
use x509_parser::extensions::GeneralName;

use super::{TrustBundle, provider};
use crate::identity::{IdentityError, SpiffeId};

/// Why a peer certificate was refused.
///
/// Carried inside `rustls::Error::InvalidCertificate(CertificateError::Other(..))`; use
/// [`VerifyError::from_rustls`] to get it back out of a handshake error.
#[derive(Clone, thiserror::Error)]
pub enum VerifyError {
    #[error("certificate signed by an unknown CA (not a root of trust domain {trust_domain})")]
    UnknownCa { trust_domain: String },

    #[error("certificate expired at {not_after} (now {now}); was it renewed?")]
    Expired { not_after: String, now: String },

    #[error("certificate not valid before {not_before} (now {now}); are the clocks in sync?")]
    NotYetValid { not_before: String, now: String },

    #[error("certificate is not valid for {usage} (extended key usage)")]
    Usage { usage: &'static str },

    #[error("certificate chain is invalid: {reason}")]
    Chain { reason: String },

    #[error("certificate cannot be parsed: {reason}")]
    Malformed { reason: String },

    #[error("certificate has {count} URI SANs; an X.509-SVID has exactly one")]
    UriSanCount { count: usize },

    #[error("certificate URI SAN {uri:?} is not a workload SPIFFE ID: {source}")]
    NotSpiffe {
        uri: String,
        #[source]
        source: IdentityError,
    },

    #[error("peer is {peer}, outside trust domain {trust_domain}")]
    ForeignTrustDomain {
        peer: SpiffeId,
        trust_domain: String,
    },

    #[error("peer is {peer}, expected {expected}")]
    UnexpectedIdentity { peer: SpiffeId, expected: String },

    #[error("peer {peer} refused by policy: {reason}")]
    Refused { peer: SpiffeId, reason: String },

    #[error("the peer presented no certificate")]
    NoCertificate,
}

impl VerifyError {
    /// The verifier's own error inside a rustls error, if that is what failed the handshake.
    pub fn from_rustls(err: &rustls::Error) -> Option<&VerifyError> {
        match err {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                inner.downcast_ref::<VerifyError>()
            }
            _ => None,
        }
    }

    fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

// rustls renders `CertificateError::Other` with `Debug`, so `Debug` gives the message: a log
// line then reads "invalid peer certificate: Other(OtherError(peer is ..., expected ...))".
impl fmt::Debug for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What the verifiers read from a leaf certificate.
pub(crate) struct Svid {
    pub(crate) identity: SpiffeId,
    pub(crate) not_after: SystemTime,
}

/// Reads the SPIFFE ID and expiry of a leaf. It does not validate anything else.
pub(crate) fn parse_svid(der: &CertificateDer<'_>) -> Result<Svid, VerifyError> {
    let (uri, not_after) = single_uri_san(der.as_ref())?;
    let identity = uri.parse().map_err(|source| VerifyError::NotSpiffe {
        uri: uri.clone(),
        source,
    })?;
    Ok(Svid {
        identity,
        not_after: from_unix(not_after),
    })
}

/// The one URI SAN of a leaf certificate (DER), and its `notAfter` in Unix seconds. SPIFFE
/// certificates (workload SVIDs and node credentials alike) carry exactly one.
pub fn single_uri_san(der: &[u8]) -> Result<(String, i64), VerifyError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| VerifyError::Malformed {
            reason: e.to_string(),
        })?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| VerifyError::Malformed {
            reason: format!("subjectAltName: {e}"),
        })?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let [uri] = uris.as_slice() else {
        return Err(VerifyError::UriSanCount { count: uris.len() });
    };
    Ok(((*uri).to_owned(), cert.validity().not_after.timestamp()))
}

/// Validates `end_entity` up to a root of `bundle` for `usage` at `now`, and returns the
/// peer's identity, which must be in the bundle's trust domain.
fn verify_chain(
    bundle: &TrustBundle,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: KeyUsage,
    usage_name: &'static str,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<SpiffeId, VerifyError> {
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|e| VerifyError::Malformed {
        reason: e.to_string(),
    })?;
    cert.verify_for_usage(
        algs.all,
        bundle.anchors(),
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(|e| match e {
        webpki::Error::UnknownIssuer => VerifyError::UnknownCa {
            trust_domain: bundle.trust_domain().to_string(),
        },
        webpki::Error::CertExpired { time, not_after } => VerifyError::Expired {
            not_after: fmt_unix(not_after),
            now: fmt_unix(time),
        },
        webpki::Error::CertNotValidYet { time, not_before } => VerifyError::NotYetValid {
            not_before: fmt_unix(not_before),
            now: fmt_unix(time),
        },
        webpki::Error::RequiredEkuNotFoundContext(_) => VerifyError::Usage { usage: usage_name },
        other => VerifyError::Chain {
            reason: other.to_string(),
        },
    })?;
    let peer = parse_svid(end_entity)?.identity;
    if peer.trust_domain() != bundle.trust_domain() {
        return Err(VerifyError::ForeignTrustDomain {
            peer,
            trust_domain: bundle.trust_domain().to_string(),
        });
    }
    Ok(peer)
}

// === impl SpiffeServerVerifier ===

/// Client side: the server must chain to the bundle and be one of the expected identities.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundle: Arc<TrustBundle>,
    expected: Vec<SpiffeId>,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(bundle: Arc<TrustBundle>, expected: Vec<SpiffeId>) -> Self {
        Self {
            bundle,
            expected,
            algs: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // The destination is dialled by pod IP; its name says nothing about who runs there.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let peer = verify_chain(
            &self.bundle,
            end_entity,
            intermediates,
            now,
            KeyUsage::server_auth(),
            "server authentication",
            &self.algs,
        )
        .map_err(VerifyError::into_rustls)?;
        if !self.expected.contains(&peer) {
            let expected = self
                .expected
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or ");
            return Err(VerifyError::UnexpectedIdentity { peer, expected }.into_rustls());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

// === impl SpiffeClientVerifier ===

/// Decides, during the handshake, whether a peer identity may connect at all.
///
/// Per-request authorization (which ports, which destinations) belongs to the HBONE handler;
/// this hook is for whole identities, e.g. a deny list, and refuses before any HTTP/2 is read.
pub trait PeerPolicy: Send + Sync + fmt::Debug {
    /// `Err(reason)` fails the handshake; the reason is logged.
    fn admit(&self, peer: &SpiffeId) -> Result<(), String>;
}

/// Server side: a client certificate is required, must chain to the bundle, carry a SPIFFE ID
/// of the trust domain, and pass the optional [`PeerPolicy`].
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundle: Arc<TrustBundle>,
    policy: Option<Arc<dyn PeerPolicy>>,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeClientVerifier {
    pub fn new(bundle: Arc<TrustBundle>, policy: Option<Arc<dyn PeerPolicy>>) -> Self {
        Self {
            bundle,
            policy,
            algs: provider().signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    // No CA hints: every client has exactly one certificate, so hints cannot change its
    // choice, and leaving them out keeps the CertificateRequest small.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let peer = verify_chain(
            &self.bundle,
            end_entity,
            intermediates,
            now,
            KeyUsage::client_auth(),
            "client authentication",
            &self.algs,
        )
        .map_err(VerifyError::into_rustls)?;
        if let Some(policy) = &self.policy
            && let Err(reason) = policy.admit(&peer)
        {
            return Err(VerifyError::Refused { peer, reason }.into_rustls());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

// === time helpers ===

fn from_unix(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// RFC 3339 in UTC, for error messages and logs.
pub(crate) fn fmt_time(t: SystemTime) -> String {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    };
    fmt_secs(secs)
}

fn fmt_unix(t: UnixTime) -> String {
    fmt_secs(i64::try_from(t.as_secs()).unwrap_or(i64::MAX))
}

fn fmt_secs(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::date::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(fmt_secs(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_secs(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(fmt_secs(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(fmt_secs(-1), "1969-12-31T23:59:59Z");
        assert_eq!(from_unix(-5), UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!(fmt_time(from_unix(4_102_444_800)), "2100-01-01T00:00:00Z");
    }
}
