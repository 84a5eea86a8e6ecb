//! The mesh's certificate authority: a root key and certificate, generated on the first
//! start when asked to (`--init-ca`) and persisted in the state directory (or supplied by
//! the operator), that signs the
//! control plane's own serving certificate, node credentials (see [`crate::node`]) and
//! workload certificates (X.509-SVIDs, ARCHITECTURE.md §4).
//!
//! Every leaf is built by one function, [`CertificateAuthority::issue_leaf`], so the three
//! kinds differ only in names, extended key usages and lifetimes.

use std::{
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

mod files;

pub(crate) use files::write_file;
use files::{check_ca_certificate, read_private};

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
    #[error(
        "the state directory {path} does not exist; on the first start pass --init-ca to create \
         it with a new mesh root (without it a missing directory is an error, so that a lost \
         volume never silently replaces the root every node trusts)"
    )]
    StateDirMissing { path: PathBuf },
    #[error(
        "{dir} holds no root CA ({ROOT_CERT_FILE}, {ROOT_KEY_FILE}); pass --init-ca to generate \
         one on the first start, or --ca-cert/--ca-key to use your own"
    )]
    NoRoot { dir: PathBuf },
    #[error(
        "{path} is readable by group or others (mode {mode:03o}); a CA key must be readable by \
         its owner only: chmod 600 {path}"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error(
        "{path} is not a CA certificate: {reason}; give the root CA certificate whose key signs the mesh's certificates"
    )]
    NotACa { path: PathBuf, reason: String },
    #[error(
        "the key {key} does not belong to the certificate {cert} (their public keys differ); \
         give the key the CA certificate was issued for"
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "{path} already exists; refusing to overwrite it or follow it (remove it first if it is \
         to be replaced)"
    )]
    Exists { path: PathBuf },
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
    /// Loads the root from `state_dir`. A missing directory, or one without a root, is an
    /// error: a new root is only ever made on request ([`Self::load_or_initialize`]).
    pub fn load(state_dir: &Path) -> Result<Self, CaError> {
        Self::open(state_dir, false)
    }

    /// Loads the root from `state_dir`, or, on first start (no directory, or one without
    /// either file), generates one and persists it there: `--init-ca`.
    pub fn load_or_initialize(state_dir: &Path) -> Result<Self, CaError> {
        Self::open(state_dir, true)
    }

    fn open(state_dir: &Path, initialize: bool) -> Result<Self, CaError> {
        use std::os::unix::fs::DirBuilderExt;
        let cert_path = state_dir.join(ROOT_CERT_FILE);
        let key_path = state_dir.join(ROOT_KEY_FILE);
        if !initialize && !state_dir.is_dir() {
            return Err(CaError::StateDirMissing {
                path: state_dir.to_path_buf(),
            });
        }
        // symlink_metadata: a dangling link at either path counts as present, so it is
        // reported rather than written through.
        let present = |p: &Path| std::fs::symlink_metadata(p).is_ok();
        match (present(&cert_path), present(&key_path)) {
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
            (false, false) if !initialize => {
                return Err(CaError::NoRoot {
                    dir: state_dir.to_path_buf(),
                });
            }
            (false, false) => {}
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| CaError::Write {
                path: state_dir.to_path_buf(),
                source,
            })?;
        let ca = Self::generate()?;
        // The key first: a crash between the two writes then leaves a key without a
        // certificate, which the next start reports instead of silently replacing.
        write_file(&key_path, ca.issuer.key().serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, ca.root_pem.as_bytes(), 0o644)?;
        info!(cert = %cert_path.display(), "generated a new mesh root CA (--init-ca)");
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

    /// Loads a root certificate and its key (PEM), the state directory's or the operator's.
    /// Refuses a key readable by anyone but its owner, a certificate that is not a CA, and a
    /// key that is not the certificate's: each would otherwise surface later as a leak or as
    /// certificates nobody can verify.
    pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let cert_pem = std::fs::read_to_string(cert_path).map_err(|source| CaError::Read {
            path: cert_path.to_path_buf(),
            source,
        })?;
        let key_pem = read_private(key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| CaError::Certificate {
            what: format!("{}: not a PEM private key", key_path.display()),
            source,
        })?;
        check_ca_certificate(cert_path, &cert_pem, key_path, &key)?;
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
        self.issue_client_credential(&node_spiffe_id(trust_domain, node), node.as_str(), lifetime)
    }

    /// Issues a client certificate (node, operator or gateway credential, see
    /// [`crate::principal`]): a new ECDSA P-256 key, exactly one URI SAN (`spiffe_id`),
    /// client authentication only, not a CA. Returns the certificate and its key (PEM).
    pub fn issue_client_credential(
        &self,
        spiffe_id: &str,
        common_name: &str,
        lifetime: Duration,
    ) -> Result<(Issued, String), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
            CaError::Certificate {
                what: "generating the credential's key".into(),
                source,
            }
        })?;
        let issued = self.issue_leaf(
            &key,
            Leaf {
                common_name: Some(common_name),
                sans: vec![uri_san(spiffe_id)?],
                extended_key_usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
                backdate: BACKDATE,
                lifetime,
            },
            "the client credential",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_persists_and_reloads_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let first = CertificateAuthority::load_or_initialize(dir.path()).unwrap();
        let again = CertificateAuthority::load(dir.path()).unwrap();
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
