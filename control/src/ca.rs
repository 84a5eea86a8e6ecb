//! The mesh's certificate authority: a root key and certificate, generated on first start
//! and persisted in the state directory (or supplied by the operator), that signs the
//! control plane's own serving certificate, node credentials (see [`crate::node`]) and
//! workload certificates (X.509-SVIDs, ARCHITECTURE.md §4).
//!
//! Every leaf is built by one function, [`CertificateAuthority::issue_leaf`], so the three
//! kinds differ only in names, extended key usages and lifetimes.

use std::{
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use tracing::info;
use weft_link::identity::{SpiffeId, TrustDomain};
use x509_parser::{
    certification_request::X509CertificationRequest,
    oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    },
    prelude::FromDer,
};

use crate::node::{NodeName, node_spiffe_id};

/// File name of the root certificate in the state directory.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// File name of the root key in the state directory (mode 0600).
pub const ROOT_KEY_FILE: &str = "root-key.pem";

/// A generated root lives ten years: rotating a mesh root is an operator event, never a
/// surprise.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The serving certificate is issued afresh at every start, so one year is plenty.
const SERVING_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Validity starts a little in the past to tolerate clock skew between nodes.
const BACKDATE: Duration = Duration::from_secs(3600);
/// Workload certificates are short-lived, so their backdating is too: five minutes covers
/// the clock skew of nodes that run NTP, without stretching a 1-minute certificate much.
pub const WORKLOAD_BACKDATE: Duration = Duration::from_secs(5 * 60);
/// Random bits in every serial number (RFC 5280 allows up to 20 octets; CA/Browser Forum
/// baseline asks for at least 64 bits of randomness). The top bit is cleared so the
/// number stays positive.
const SERIAL_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source} (is the state directory writable?)")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} holds a root certificate but {missing} is missing; restore it or remove both to generate a new root"
    )]
    HalfPresent { path: PathBuf, missing: PathBuf },
    #[error("{what}: {source}")]
    Certificate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("no secure random numbers for a serial number: {reason}")]
    Random { reason: String },
}

/// Why a certificate signing request was refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("not a PEM certificate request: {reason}")]
    Pem { reason: String },
    #[error("PEM block is {label:?}, expected \"CERTIFICATE REQUEST\"")]
    Label { label: String },
    #[error("not a PKCS#10 certificate request: {reason}")]
    Malformed { reason: String },
    #[error("the key is {found}; only ECDSA P-256 keys are certified")]
    KeyType { found: String },
    #[error("the request is signed with {found}; sign it with ECDSA P-256 and SHA-256")]
    SignatureAlgorithm { found: String },
    #[error("the request's signature does not verify (was it made with the key it carries?)")]
    Signature,
    #[error(
        "cannot read the request: {source} (a request may carry only subjectAltName, \
         keyUsage, extendedKeyUsage and basicConstraints extensions; the CA ignores them \
         anyway, so leave others out)"
    )]
    Unsupported {
        #[source]
        source: rcgen::Error,
    },
}

/// A certificate request whose signature verified, for an ECDSA P-256 key. Its subject and
/// extensions are never used: the CA sets names, usages and validity itself.
pub struct Csr {
    request: CertificateSigningRequestParams,
}

impl std::fmt::Debug for Csr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Csr").finish_non_exhaustive()
    }
}

impl Csr {
    /// Parses a PEM `CERTIFICATE REQUEST`, checks the key is ECDSA P-256 and the signature
    /// proves possession of it.
    pub fn from_pem(pem: &str) -> Result<Self, CsrError> {
        let (_, block) =
            x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| CsrError::Pem {
                reason: e.to_string(),
            })?;
        if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
            return Err(CsrError::Label { label: block.label });
        }
        // The key type is checked on the request as sent: rcgen infers it from the signature
        // algorithm, which would misname a P-384 key signed with SHA-256.
        let (_, parsed) = X509CertificationRequest::from_der(&block.contents).map_err(|e| {
            CsrError::Malformed {
                reason: e.to_string(),
            }
        })?;
        let spki = &parsed.certification_request_info.subject_pki;
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
            let found = if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
                "RSA".to_string()
            } else if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
                format!("of algorithm {}", spki.algorithm.algorithm)
            } else if curve == Some(OID_NIST_EC_P384) {
                "ECDSA P-384".to_string()
            } else {
                match curve {
                    Some(oid) => format!("ECDSA on curve {oid}"),
                    None => "ECDSA without a named curve".to_string(),
                }
            };
            return Err(CsrError::KeyType { found });
        }
        // rcgen verifies the signature and keeps the key.
        let der = block.contents.into();
        let request =
            CertificateSigningRequestParams::from_der(&der).map_err(|source| match source {
                rcgen::Error::InvalidCertificationRequestSignature => CsrError::Signature,
                rcgen::Error::CouldNotParseCertificationRequest => CsrError::Malformed {
                    reason: source.to_string(),
                },
                source => CsrError::Unsupported { source },
            })?;
        // rcgen writes the certificate's key info from this algorithm, so it must name the
        // key's own curve.
        let alg = request.public_key.algorithm();
        if alg != &PKCS_ECDSA_P256_SHA256 {
            return Err(CsrError::SignatureAlgorithm {
                found: format!("{alg:?}"),
            });
        }
        Ok(Csr { request })
    }

    /// The requested key, as it goes into the certificate.
    pub fn public_key(&self) -> &impl PublicKeyData {
        &self.request.public_key
    }
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// What distinguishes one kind of leaf certificate from another.
struct Leaf<'a> {
    /// The subject's common name; `None` leaves only the organisation (X.509-SVIDs identify
    /// by URI SAN, not by name).
    common_name: Option<&'a str>,
    sans: Vec<SanType>,
    extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    backdate: Duration,
    lifetime: Duration,
}

/// The root CA.
pub struct CertificateAuthority {
    root_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads the root from `state_dir`, or generates and persists one there on first start.
    pub fn load_or_generate(state_dir: &Path) -> Result<Self, CaError> {
        let cert_path = state_dir.join(ROOT_CERT_FILE);
        let key_path = state_dir.join(ROOT_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => return Self::from_files(&cert_path, &key_path),
            (true, false) => {
                return Err(CaError::HalfPresent {
                    path: cert_path,
                    missing: key_path,
                });
            }
            (false, true) => {
                return Err(CaError::HalfPresent {
                    path: key_path,
                    missing: cert_path,
                });
            }
            (false, false) => {}
        }
        std::fs::create_dir_all(state_dir).map_err(|source| CaError::Write {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let ca = Self::generate()?;
        // The key first: a crash between the two writes then leaves a key without a
        // certificate, which the next start reports instead of silently replacing.
        write_file(&key_path, ca.issuer.key().serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, ca.root_pem.as_bytes(), 0o644)?;
        info!(cert = %cert_path.display(), "generated a new mesh root CA");
        Ok(ca)
    }

    /// Generates a new root (ECDSA P-256) without persisting it.
    pub fn generate() -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            CaError::Certificate {
                what: "generating the root key".into(),
                source,
            }
        })?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Weft");
        dn.push(DnType::CommonName, "Weft mesh root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let (not_before, not_after) = validity_from(SystemTime::now(), BACKDATE, ROOT_LIFETIME);
        (params.not_before, params.not_after) = (to_offset(not_before), to_offset(not_after));
        let cert = params
            .self_signed(&key)
            .map_err(|source| CaError::Certificate {
                what: "self-signing the root".into(),
                source,
            })?;
        Ok(CertificateAuthority {
            root_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads an operator-supplied root certificate and key (PEM).
    pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CaError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| CaError::Certificate {
            what: format!("{}: not a PEM private key", key_path.display()),
            source,
        })?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|source| CaError::Certificate {
                what: format!("{}: not a PEM CA certificate", cert_path.display()),
                source,
            })?;
        Ok(CertificateAuthority {
            root_pem: cert_pem,
            issuer,
        })
    }

    /// The root certificate (PEM) clients verify the control plane with.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Issues a TLS server certificate for the control plane with `localhost`, 127.0.0.1,
    /// ::1 and `extra_sans` (IP addresses or DNS names). Returns `(chain_pem, key_pem)`.
    pub fn issue_serving(&self, extra_sans: &[String]) -> Result<(String, String), CaError> {
        let err = |what: &str| {
            let what = what.to_string();
            move |source| CaError::Certificate { what, source }
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(err("generating the serving key"))?;
        let mut sans = vec![
            SanType::DnsName("localhost".try_into().map_err(err("SAN localhost"))?),
            SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
            SanType::IpAddress(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])),
        ];
        for san in extra_sans {
            let san = match san.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    san.as_str()
                        .try_into()
                        .map_err(err(&format!("SAN {san:?} is neither an IP nor a DNS name")))?,
                ),
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let issued = self.issue_leaf(
            &key,
            Leaf {
                common_name: Some("weft-control"),
                sans,
                extended_key_usages: vec![ExtendedKeyUsagePurpose::ServerAuth],
                backdate: BACKDATE,
                lifetime: SERVING_LIFETIME,
            },
            "the serving certificate",
        )?;
        Ok((issued.cert_pem, key.serialize_pem()))
    }

    /// Issues a client certificate for a node's agent: a new ECDSA P-256 key, exactly one
    /// URI SAN (the node's SPIFFE ID, [`node_spiffe_id`]), client authentication only, not a
    /// CA. Returns the certificate and its key (PEM).
    pub fn issue_node_credential(
        &self,
        trust_domain: &TrustDomain,
        node: &NodeName,
        lifetime: Duration,
    ) -> Result<(Issued, String), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            CaError::Certificate {
                what: "generating the node key".into(),
                source,
            }
        })?;
        let issued = self.issue_leaf(
            &key,
            Leaf {
                common_name: Some(node.as_str()),
                sans: vec![uri_san(&node_spiffe_id(trust_domain, node))?],
                extended_key_usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
                backdate: BACKDATE,
                lifetime,
            },
            "the node credential",
        )?;
        Ok((issued, key.serialize_pem()))
    }

    /// Issues an X.509-SVID for `csr`'s key: exactly one URI SAN (`identity`), server and
    /// client authentication, valid from [`WORKLOAD_BACKDATE`] ago for `lifetime`. The
    /// caller has decided that the requester may have this identity.
    pub fn sign_workload(
        &self,
        csr: &Csr,
        identity: &SpiffeId,
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        self.issue_leaf(
            csr.public_key(),
            Leaf {
                common_name: None,
                sans: vec![uri_san(identity.as_str())?],
                extended_key_usages: vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
                backdate: WORKLOAD_BACKDATE,
                lifetime,
            },
            "the workload certificate",
        )
    }

    /// The one place leaves are built: organisation "Weft", key usage digitalSignature
    /// (enough for ECDSA in TLS 1.3), an explicit CA:false, a random serial and the root's
    /// key identifier, signed by the root.
    fn issue_leaf(
        &self,
        key: &impl PublicKeyData,
        leaf: Leaf<'_>,
        what: &str,
    ) -> Result<Issued, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Weft");
        if let Some(cn) = leaf.common_name {
            dn.push(DnType::CommonName, cn);
        }
        params.distinguished_name = dn;
        params.subject_alt_names = leaf.sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = leaf.extended_key_usages;
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        let (not_before, not_after) =
            validity_from(SystemTime::now(), leaf.backdate, leaf.lifetime);
        (params.not_before, params.not_after) = (to_offset(not_before), to_offset(not_after));
        let cert = params
            .signed_by(key, &self.issuer)
            .map_err(|source| CaError::Certificate {
                what: format!("signing {what}"),
                source,
            })?;
        Ok(Issued {
            cert_pem: cert.pem(),
            not_before,
            not_after,
        })
    }
}

fn uri_san(uri: &str) -> Result<SanType, CaError> {
    Ok(SanType::URI(uri.try_into().map_err(|source| {
        CaError::Certificate {
            what: format!("URI SAN {uri:?}"),
            source,
        }
    })?))
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; SERIAL_LEN];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|e| CaError::Random {
            reason: format!("{e:?}"),
        })?;
    bytes[0] &= 0x7f;
    // A leading zero octet would shorten the encoding; keep every serial the same length.
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// `[now - backdate, now + lifetime]`, whole seconds (X.509 times have no fractions).
fn validity_from(
    now: SystemTime,
    backdate: Duration,
    lifetime: Duration,
) -> (SystemTime, SystemTime) {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let now = UNIX_EPOCH + Duration::from_secs(secs);
    (
        now.checked_sub(backdate).unwrap_or(UNIX_EPOCH),
        now.checked_add(lifetime).unwrap_or(now),
    )
}

/// RFC 3339 in UTC (`2025-01-31T12:00:00Z`), for logs and messages.
pub fn rfc3339(t: SystemTime) -> String {
    let t = to_offset(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn to_offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Writes via a temporary file and a rename, so a crash never leaves half a key.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let err = |source| CaError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_persists_and_reloads_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let first = CertificateAuthority::load_or_generate(dir.path()).unwrap();
        let again = CertificateAuthority::load_or_generate(dir.path()).unwrap();
        assert_eq!(first.root_pem(), again.root_pem());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(ROOT_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (chain, key) = again
            .issue_serving(&["10.0.0.1".into(), "cp.example".into()])
            .unwrap();
        assert!(chain.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY"));
    }
}
