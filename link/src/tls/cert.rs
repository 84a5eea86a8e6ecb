//! The local identity's certificate, the trust bundle, and the resolver that lets the
//! certificate rotate under running TLS configs.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{TlsError, provider, verify};
use crate::identity::{SpiffeId, TrustDomain};

// === impl Certificate ===

/// An X.509-SVID with its chain and private key, ready for rustls.
///
/// Loading checks what would otherwise fail later, mid-handshake and far from the cause: the
/// leaf must carry exactly one SPIFFE URI SAN, and the key must be the leaf's.
#[derive(Clone)]
pub struct Certificate {
    key: Arc<CertifiedKey>,
    identity: SpiffeId,
    not_after: SystemTime,
}

impl Certificate {
    /// Loads a chain (leaf first, then intermediates; the root may be left out) and its
    /// PKCS#8, SEC1 or PKCS#1 private key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem {
                what: "certificate chain",
                source,
            })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| match source {
            pem::Error::NoItemsFound => TlsError::PemEmpty {
                what: "private key",
                label: "PRIVATE KEY",
            },
            source => TlsError::Pem {
                what: "private key",
                source,
            },
        })?;
        Self::from_der(chain, key)
    }

    /// Like [`Certificate::from_pem`], from DER.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let leaf = chain.first().ok_or(TlsError::PemEmpty {
            what: "certificate",
            label: "CERTIFICATE",
        })?;
        let svid = verify::parse_svid(leaf).map_err(|source| TlsError::NotSvid { source })?;
        let key = CertifiedKey::from_der(chain, key, &provider())
            .map_err(|source| TlsError::Key { source })?;
        Ok(Self {
            key: Arc::new(key),
            identity: svid.identity,
            not_after: svid.not_after,
        })
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// End of the leaf's validity; renewal is due at half-life (ARCHITECTURE.md §4).
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The chain as sent to peers, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.key.cert
    }

    pub(crate) fn certified_key(&self) -> Arc<CertifiedKey> {
        self.key.clone()
    }
}

impl fmt::Debug for Certificate {
    // The key stays out of logs; the rest is what an operator needs to tell certificates apart.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("identity", &self.identity)
            .field("not_after", &verify::fmt_time(self.not_after))
            .field("chain_len", &self.key.cert.len())
            .finish_non_exhaustive()
    }
}

// === impl TrustBundle ===

/// The root certificates of a trust domain: what peer chains must lead to.
#[derive(Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// Loads one or more PEM `CERTIFICATE` blocks, all roots of `trust_domain`.
    pub fn from_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Self, TlsError> {
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem {
                what: "trust bundle",
                source,
            })?;
        Self::from_der(trust_domain, roots)
    }

    pub fn from_der(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, TlsError> {
        if roots.is_empty() {
            return Err(TlsError::PemEmpty {
                what: "root certificate",
                label: "CERTIFICATE",
            });
        }
        let anchors = roots
            .iter()
            .enumerate()
            .map(|(index, der)| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|anchor| anchor.to_owned())
                    .map_err(|source| TlsError::TrustAnchor { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            trust_domain,
            roots,
            anchors,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.len())
            .finish()
    }
}

// === impl CertResolver ===

/// Hands rustls the current certificate of one identity, for both server and client side.
///
/// Rotation swaps an `Arc`: a handshake that starts afterwards gets the new certificate, a
/// connection already established keeps its keys (TLS never re-reads them), and readers never
/// wait on a lock.
pub struct CertResolver {
    // Fixed at construction: pools and policy key on it, so a resolver never changes identity.
    identity: SpiffeId,
    current: ArcSwap<Certificate>,
}

impl CertResolver {
    pub fn new(cert: Certificate) -> Self {
        Self {
            identity: cert.identity.clone(),
            current: ArcSwap::from_pointee(cert),
        }
    }

    /// Replaces the certificate for new handshakes. It must be for the same identity.
    pub fn rotate(&self, cert: Certificate) -> Result<(), TlsError> {
        if cert.identity != self.identity {
            return Err(TlsError::IdentityChanged {
                current: self.identity.clone(),
                new: cert.identity,
            });
        }
        tracing::debug!(
            identity = %self.identity,
            not_after = %verify::fmt_time(cert.not_after),
            "certificate rotated"
        );
        self.current.store(Arc::new(cert));
        Ok(())
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The certificate new handshakes use.
    pub fn current(&self) -> Arc<Certificate> {
        self.current.load_full()
    }
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("current", &*self.current.load())
            .finish()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().certified_key())
    }
}

impl ResolvesClientCert for CertResolver {
    // The server's CA hints are ignored: there is one certificate, and a server of another
    // trust domain should say so itself rather than see no certificate at all.
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
