//! The CA's files: reading a private key only if its owner alone may, checking that a
//! certificate is a CA for a key, and creating key and certificate files so that nothing
//! existing is overwritten or followed and nothing is lost to a crash.

use std::{io::Write, path::Path};

use rcgen::KeyPair;

use super::CaError;

/// Reads a private key, refusing one that group or others may read. The mode is checked
/// on the opened file, so it is the mode of what is read.
pub(super) fn read_private(path: &Path) -> Result<String, CaError> {
    use std::{io::Read, os::unix::fs::PermissionsExt};
    let err = |source| CaError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(err)?;
    let mode = file.metadata().map_err(err)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut pem = String::new();
    file.read_to_string(&mut pem).map_err(err)?;
    Ok(pem)
}

/// That `cert_pem` is a CA certificate (basicConstraints CA:TRUE, and keyCertSign if it has
/// a key usage) for `key`.
pub(super) fn check_ca_certificate(
    cert_path: &Path,
    cert_pem: &str,
    key_path: &Path,
    key: &KeyPair,
) -> Result<(), CaError> {
    let not_ca = |reason: String| CaError::NotACa {
        path: cert_path.to_path_buf(),
        reason,
    };
    let (_, block) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| not_ca(format!("not a PEM certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&block.contents)
        .map_err(|e| not_ca(format!("not an X.509 certificate: {e}")))?;
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| not_ca(format!("its basicConstraints cannot be read: {e}")))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(not_ca("its basicConstraints do not say CA:TRUE".into()));
    }
    let usage = cert
        .key_usage()
        .map_err(|e| not_ca(format!("its keyUsage cannot be read: {e}")))?;
    if usage.is_some_and(|u| !u.value.key_cert_sign()) {
        return Err(not_ca("its keyUsage lacks keyCertSign".into()));
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(CaError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        });
    }
    Ok(())
}

/// Creates `path` with `contents`: never over an existing file and never through a symlink
/// (`O_CREAT|O_EXCL|O_NOFOLLOW`), with `mode` from the start (no window in which a key is
/// readable by others), flushed, and the directory entry flushed too so that a crash after
/// start-up cannot lose a root the mesh already trusts. A failed write removes the partial
/// file.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| CaError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => CaError::Exists {
                path: path.to_path_buf(),
            },
            _ => err(source),
        })?;
    let written = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| sync_dir(path));
    if let Err(source) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(err(source));
    }
    Ok(())
}

/// Flushes the directory holding `path`, so a new entry survives a crash.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}
