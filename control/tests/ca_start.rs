//! The CA fails safe at start: a key that is not the certificate's, a certificate that is no
//! CA, a missing state directory without `--init-ca`, and a key others may read are each a
//! clear error; key files are created 0600, never over an existing file or through a
//! symlink.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions; a failure is a test failure"
)]

use std::{
    os::unix::fs::{PermissionsExt, symlink},
    path::Path,
    process::Command,
    time::Duration,
};

use weft_control::{
    ca::{CaError, CertificateAuthority, ROOT_CERT_FILE, ROOT_KEY_FILE},
    config::Source,
    node::write_node_credential,
    server::{ControlPlane, ServerConfig, ServerError},
};
use weft_link::identity::TrustDomain;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A root in a fresh state directory: (directory, cert path, key path).
fn initialized() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    CertificateAuthority::load_or_initialize(dir.path()).unwrap();
    let cert = dir.path().join(ROOT_CERT_FILE);
    let key = dir.path().join(ROOT_KEY_FILE);
    (dir, cert, key)
}

#[test]
fn a_missing_or_empty_state_directory_needs_init() {
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("state");
    let err = CertificateAuthority::load(&missing).unwrap_err();
    assert!(matches!(err, CaError::StateDirMissing { .. }), "{err}");
    assert!(err.to_string().contains("--init-ca"), "{err}");
    assert!(!missing.exists(), "nothing was created");

    let empty = tempfile::tempdir().unwrap();
    let err = CertificateAuthority::load(empty.path()).unwrap_err();
    assert!(matches!(err, CaError::NoRoot { .. }), "{err}");
    assert!(err.to_string().contains("--init-ca"), "{err}");
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);

    // With the flag: created, 0700, key 0600; and a second start loads the same root.
    let first = CertificateAuthority::load_or_initialize(&missing).unwrap();
    assert_eq!(mode(&missing), 0o700);
    assert_eq!(mode(&missing.join(ROOT_KEY_FILE)), 0o600);
    let again = CertificateAuthority::load_or_initialize(&missing).unwrap();
    assert_eq!(first.root_pem(), again.root_pem());
}

#[tokio::test]
async fn the_server_refuses_to_start_without_a_root_unless_asked_to_make_one() {
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("w.yaml"),
        "apiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata: {name: w, namespace: n}\nspec: {serviceAccount: s, node: n1, ips: [10.0.0.1]}\n",
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let server_config = |init: bool| {
        let mut c = ServerConfig::new(
            Source::Directory(config.path().to_path_buf()),
            "127.0.0.1:0".parse().unwrap(),
            state.path().join("lost-volume"),
        );
        c.init_ca = init;
        c
    };
    let err = ControlPlane::new(server_config(false))
        .await
        .err()
        .expect("no start without a root");
    assert!(
        matches!(err, ServerError::Ca(CaError::StateDirMissing { .. })),
        "{err}"
    );
    ControlPlane::new(server_config(true))
        .await
        .expect("--init-ca makes one");

    // The binary says so too, and exits non-zero.
    let out = Command::new(env!("CARGO_BIN_EXE_weft-control"))
        .arg("--config-dir")
        .arg(config.path())
        .arg("--state-dir")
        .arg(state.path().join("elsewhere"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not exist") && stderr.contains("--init-ca"),
        "{stderr}"
    );
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let (_a, cert_a, _) = initialized();
    let (_b, _, key_b) = initialized();
    let err = CertificateAuthority::from_files(&cert_a, &key_b).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("does not belong to the certificate"),
        "{err}"
    );
}

#[test]
fn a_certificate_that_is_not_a_ca_is_refused() {
    let (dir, cert, key) = initialized();
    let ca = CertificateAuthority::from_files(&cert, &key).unwrap();
    // A leaf of this root, with its own key: a valid pair, but no CA.
    let (leaf, leaf_key) = ca
        .issue_client_credential(
            "spiffe://cluster.local/node/n1",
            "n1",
            Duration::from_secs(60),
        )
        .unwrap();
    let leaf_cert = dir.path().join("leaf.pem");
    let leaf_key_path = dir.path().join("leaf-key.pem");
    std::fs::write(&leaf_cert, leaf.cert_pem).unwrap();
    std::fs::write(&leaf_key_path, leaf_key).unwrap();
    std::fs::set_permissions(&leaf_key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = CertificateAuthority::from_files(&leaf_cert, &leaf_key_path).unwrap_err();
    assert!(matches!(err, CaError::NotACa { .. }), "{err}");
    assert!(err.to_string().contains("CA:TRUE"), "{err}");
}

#[test]
fn a_key_others_may_read_is_refused() {
    let (_dir, cert, key) = initialized();
    for readable in [0o640, 0o604, 0o644, 0o660] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(readable)).unwrap();
        let err = CertificateAuthority::from_files(&cert, &key).unwrap_err();
        assert!(
            matches!(err, CaError::KeyPermissions { .. }),
            "{readable:o}: {err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    CertificateAuthority::from_files(&cert, &key).expect("owner-only is fine");
}

#[test]
fn key_files_are_never_written_over_or_through_a_symlink() {
    let ca = CertificateAuthority::generate().unwrap();
    let td = TrustDomain::default();
    let node = "node-1".parse().unwrap();
    let ttl = Duration::from_secs(60);

    // An existing file at the key's path stays as it was.
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("node-key.pem"), "precious").unwrap();
    let err = write_node_credential(&ca, &td, &node, ttl, out.path()).unwrap_err();
    assert!(matches!(err, CaError::Exists { .. }), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.path().join("node-key.pem")).unwrap(),
        "precious"
    );

    // A symlink at the key's path is not followed: its target is neither created nor
    // written.
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("elsewhere");
    symlink(&target, out.path().join("node-key.pem")).unwrap();
    let err = write_node_credential(&ca, &td, &node, ttl, out.path()).unwrap_err();
    assert!(matches!(err, CaError::Exists { .. }), "{err}");
    assert!(!target.exists());
    std::fs::write(&target, "precious").unwrap();
    write_node_credential(&ca, &td, &node, ttl, out.path()).unwrap_err();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");

    // The root's files likewise: a dangling symlink where the key would go is reported,
    // not written through.
    let state = tempfile::tempdir().unwrap();
    let target = state.path().join("stolen-key");
    symlink(&target, state.path().join(ROOT_KEY_FILE)).unwrap();
    let err = CertificateAuthority::load_or_initialize(state.path()).unwrap_err();
    assert!(matches!(err, CaError::HalfPresent { .. }), "{err}");
    assert!(!target.exists());

    // And a fresh write is 0600.
    let out = tempfile::tempdir().unwrap();
    let files = write_node_credential(&ca, &td, &node, ttl, out.path()).unwrap();
    assert_eq!(mode(&files.key), 0o600);
}
