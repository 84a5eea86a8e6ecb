//! Node credentials: `weft-control node-credential` writes them, and a discovery subscriber
//! that presents one may only subscribe as its own node.

mod ca_support;

use std::{os::unix::fs::PermissionsExt, process::Command, time::Duration};

use ca_support::*;
use tonic::Code;
use weft_control::ca::CertificateAuthority;
use weft_link::control::ClientIdentity;
use weft_proto::discovery::v1::{
    ClientHello, ClientKind, ResourceType, SubscribeRequest, subscribe_request::Message,
};
use x509_parser::{
    extensions::GeneralName,
    oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY},
    pem::parse_x509_pem,
};

fn weft_control() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weft-control"))
}

#[test]
fn node_credential_writes_a_client_certificate_for_the_node() {
    let state = tempfile::tempdir().unwrap();
    // The root exists already: the server made it on its first start (--init-ca).
    let ca = CertificateAuthority::load_or_initialize(state.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().join("node-1");
    let run = weft_control()
        .args(["node-credential", "--node", "node-1", "--ttl", "30d"])
        .arg("--state-dir")
        .arg(state.path())
        .arg("--out-dir")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("spiffe://cluster.local/node/node-1"),
        "{stdout}"
    );

    // The state directory's root, copied next to the credential.
    let root = std::fs::read_to_string(out_dir.join("root-cert.pem")).unwrap();
    assert_eq!(root, ca.root_pem());
    let mode = |name: &str| {
        std::fs::metadata(out_dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("node-key.pem"), 0o600);
    assert_eq!(
        mode("node-cert.pem") & 0o077,
        0o044,
        "the certificate is readable"
    );

    let cert_pem = std::fs::read_to_string(out_dir.join("node-cert.pem")).unwrap();
    assert_eq!(
        cert_pem.matches("BEGIN CERTIFICATE").count(),
        1,
        "the leaf alone"
    );
    let (_, block) = parse_x509_pem(cert_pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&block.contents).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        [GeneralName::URI("spiffe://cluster.local/node/node-1")]
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty());
    assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
    let spki = cert.public_key();
    assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    assert_eq!(
        spki.algorithm
            .parameters
            .as_ref()
            .unwrap()
            .as_oid()
            .unwrap(),
        OID_EC_P256
    );
    let v = cert.validity();
    assert_eq!(
        v.not_after.timestamp() - v.not_before.timestamp(),
        30 * 24 * 3600 + 3600
    );
    // The key belongs to the certificate, in the form the agent loads.
    let key = std::fs::read_to_string(out_dir.join("node-key.pem")).unwrap();
    tonic::transport::Identity::from_pem(&cert_pem, &key);
    rcgen::KeyPair::from_pem(&key).unwrap();

    // A second run for another node reuses the same root.
    let run = weft_control()
        .args(["node-credential", "--node", "node-2"])
        .arg("--state-dir")
        .arg(state.path())
        .arg("--out-dir")
        .arg(out.path().join("node-2"))
        .output()
        .unwrap();
    assert!(run.status.success());
    let root2 = std::fs::read_to_string(out.path().join("node-2/root-cert.pem")).unwrap();
    assert_eq!(root2, root);
}

#[test]
fn node_credential_errors_are_one_clear_line() {
    let state = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = weft_control()
        .args(["node-credential", "--node", "Node_1"])
        .arg("--state-dir")
        .arg(state.path())
        .arg("--out-dir")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("node name \"Node_1\" is invalid: only lowercase letters"),
        "{stderr}"
    );
    assert!(!out.path().join("node-key.pem").exists());

    // An operator root that does not exist.
    let run = weft_control()
        .args([
            "node-credential",
            "--node",
            "n1",
            "--ca-cert",
            "/nonexistent/ca.pem",
        ])
        .args(["--ca-key", "/nonexistent/ca-key.pem"])
        .arg("--out-dir")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/ca.pem"),
        "{stderr}"
    );
}

#[test]
fn cert_ttl_below_a_minute_is_refused() {
    let run = weft_control()
        .args([
            "--state-dir",
            "/nonexistent",
            "--config-dir",
            "/nonexistent",
        ])
        .args(["--cert-ttl", "30s"])
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("--cert-ttl") && stderr.contains("it must be at least 1m"),
        "{stderr}"
    );
}

fn hello(node: &str) -> SubscribeRequest {
    SubscribeRequest {
        message: Some(Message::Hello(ClientHello {
            kind: ClientKind::Agent.into(),
            name: format!("weft-agent-{node}"),
            node: node.to_string(),
            client_version: "test".into(),
            resource_types: vec![ResourceType::Workload.into()],
        })),
    }
}

/// Opens a stream with `hello` and returns the first response's type, or the refusal.
async fn subscribe(
    mesh: &Mesh,
    identity: Option<&ClientIdentity>,
    node: &str,
) -> Result<ResourceType, tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(hello(node))
        .await
        .expect("the stream takes the hello");
    let mut inbound = mesh
        .discovery(identity)
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = tokio::time::timeout(WAIT, inbound.message())
        .await
        .expect("a snapshot in time")?
        .expect("the stream is open");
    drop(tx);
    Ok(first.resource_type())
}

#[tokio::test]
async fn a_node_credential_subscribes_only_as_its_node() {
    let mesh = Mesh::start(Duration::from_secs(3600)).await;
    let node_a = mesh.node_identity("node-a");

    let first = subscribe(&mesh, Some(&node_a), "node-a").await.unwrap();
    assert_eq!(first, ResourceType::Workload);

    let err = subscribe(&mesh, Some(&node_a), "node-b").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("\"node-b\"") && err.message().contains("node node-a"),
        "{}",
        err.message()
    );

    // Without a client certificate nothing: no snapshot, no status (see auth.rs).
    let err = subscribe(&mesh, None, "node-b").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    mesh.stop().await;
}
