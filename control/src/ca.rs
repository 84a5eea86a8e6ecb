//! The mesh's certificate authority: a root key and certificate, generated on first start
//! and persisted in the state directory (or supplied by the operator), that signs the
//! control plane's own serving certificate now and workload certificates later.

use std::{
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use tracing::info;

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
        (params.not_before, params.not_after) = validity(ROOT_LIFETIME);
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
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Weft");
        dn.push(DnType::CommonName, "weft-control");
        params.distinguished_name = dn;
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
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity(SERVING_LIFETIME);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(err("signing the serving certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn validity(lifetime: Duration) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let at = |secs: i64| {
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    (
        at(now - BACKDATE.as_secs() as i64),
        at(now + lifetime.as_secs() as i64),
    )
}

/// Writes via a temporary file and a rename, so a crash never leaves half a key.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
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
