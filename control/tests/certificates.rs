//! `weft.identity.v1.Certificates/Sign` end to end: a real control plane on loopback, real
//! mutual TLS with node credentials, and the issued certificates checked with the TLS types
//! the agents use.

mod ca_support;

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ca_support::*;
use rcgen::{KeyPair, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, RsaKeySize};
use rustls::{
    client::danger::ServerCertVerifier,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
    server::danger::ClientCertVerifier,
};
use tonic::Code;
use weft_link::{
    certs::{SignRequest, Signer},
    control::{CaClient, CaClientConfig},
    identity::{SpiffeId, TrustDomain},
    tls::{Certificate, SpiffeClientVerifier, SpiffeServerVerifier, TrustBundle},
};
use weft_proto::identity::v1::SignRequest as PbSignRequest;
use x509_parser::{
    extensions::GeneralName,
    oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY},
};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn request(identity: &str, csr_pem: &str, ttl_seconds: u32) -> PbSignRequest {
    PbSignRequest {
        csr_pem: csr_pem.to_string(),
        identity: identity.to_string(),
        ttl_seconds,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64
}

#[tokio::test]
async fn a_node_gets_its_own_workloads_signed() {
    let mesh = Mesh::start(DAY).await;
    let node_a = mesh.node_identity("node-a");
    let mut client = mesh.certificates(Some(&node_a));
    let (key, csr) = csr_p256();
    let before = unix_now();
    let response = client
        .sign(request(WEB, &csr, 3600))
        .await
        .expect("node-a may have shop/web")
        .into_inner();
    assert_eq!(response.cert_chain_pem.len(), 1);
    assert_eq!(
        response.trust_roots_pem,
        std::slice::from_ref(&mesh.root_pem)
    );
    let leaf_pem = &response.cert_chain_pem[0];

    // X.509-SVID shape, read independently of the code that built it.
    let der = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        [GeneralName::URI(WEB)],
        "exactly one SAN, the URI"
    );
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
    assert_eq!(
        spki.subject_public_key.data.as_ref(),
        key.public_key_raw(),
        "the CSR's key is certified"
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!eku.any && !eku.code_signing && eku.other.is_empty());
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(!bc.ca, "not a CA");
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    assert_eq!(
        not_after - not_before,
        3600 + 5 * 60,
        "1 h plus 5 min backdating"
    );
    assert!((before + 3600..=unix_now() + 3600).contains(&not_after));
    // The CSR's subject and DNS SAN were ignored.
    assert!(!cert.subject().to_string().contains("ignored"));

    // It loads as the agents load certificates and validates against the root both ways.
    let td = TrustDomain::default();
    let loaded = Certificate::from_pem(leaf_pem.as_bytes(), key.serialize_pem().as_bytes())
        .expect("weft-link accepts the certificate and its key");
    assert_eq!(loaded.identity().as_str(), WEB);
    let bundle =
        Arc::new(TrustBundle::from_pem(td, response.trust_roots_pem[0].as_bytes()).unwrap());
    let now = UnixTime::now();
    SpiffeClientVerifier::new(bundle.clone(), None)
        .verify_client_cert(&der, &[], now)
        .expect("valid as a client certificate");
    let web: SpiffeId = WEB.parse().unwrap();
    SpiffeServerVerifier::new(bundle, vec![web])
        .verify_server_cert(
            &der,
            &[],
            &ServerName::try_from("10.1.0.10").unwrap(),
            &[],
            now,
        )
        .expect("valid as a server certificate");

    // Two issuances for the same key get different serials.
    let again = client
        .sign(request(WEB, &csr, 3600))
        .await
        .unwrap()
        .into_inner();
    let der2 = CertificateDer::from_pem_slice(again.cert_chain_pem[0].as_bytes()).unwrap();
    let (_, cert2) = x509_parser::parse_x509_certificate(der2.as_ref()).unwrap();
    assert_ne!(cert.raw_serial(), cert2.raw_serial());

    // An identity with workloads on both nodes is node-a's too.
    client.sign(request(API, &csr, 0)).await.unwrap();
    mesh.stop().await;
}

#[tokio::test]
async fn another_nodes_identity_is_refused() {
    let mesh = Mesh::start(DAY).await;
    let (_, csr) = csr_p256();
    let node_a = mesh.node_identity("node-a");
    let err = mesh
        .certificates(Some(&node_a))
        .sign(request(DB, &csr, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("node-a") && err.message().contains(DB),
        "{}",
        err.message()
    );
    // node-b may have it.
    let node_b = mesh.node_identity("node-b");
    mesh.certificates(Some(&node_b))
        .sign(request(DB, &csr, 0))
        .await
        .unwrap();
    // A node that runs nothing gets nothing.
    let node_c = mesh.node_identity("node-c");
    let err = mesh
        .certificates(Some(&node_c))
        .sign(request(WEB, &csr, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let metrics = mesh.metrics().await;
    for line in [
        "weft_control_certificate_requests_total{result=\"issued\"} 1",
        "weft_control_certificate_requests_total{result=\"denied\"} 2",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
    mesh.stop().await;
}

#[tokio::test]
async fn signing_needs_a_node_credential() {
    let mesh = Mesh::start(DAY).await;
    let (key, csr) = csr_p256();
    let err = mesh
        .certificates(None)
        .sign(request(WEB, &csr, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("Sign needs a node credential")
            && err.message().contains("weft-control node-credential"),
        "{}",
        err.message()
    );

    // A workload certificate from the same root is a valid client certificate, but not a
    // node credential.
    let node_a = mesh.node_identity("node-a");
    let svid = mesh
        .certificates(Some(&node_a))
        .sign(request(WEB, &csr, 0))
        .await
        .unwrap()
        .into_inner();
    let as_client = weft_link::control::ClientIdentity::new(
        svid.cert_chain_pem[0].clone(),
        key.serialize_pem(),
    );
    let err = mesh
        .certificates(Some(&as_client))
        .sign(request(WEB, &csr, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains(WEB), "{}", err.message());

    // A credential from another root does not get through TLS at all.
    let stranger = weft_control::ca::CertificateAuthority::generate().unwrap();
    let (issued, key) = stranger
        .issue_node_credential(
            &TrustDomain::default(),
            &"node-a".parse().unwrap(),
            Duration::from_secs(60),
        )
        .unwrap();
    let forged = weft_link::control::ClientIdentity::new(issued.cert_pem, key);
    let err = mesh
        .certificates(Some(&forged))
        .sign(request(WEB, &csr, 0))
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    let metrics = mesh.metrics().await;
    assert!(
        metrics.contains("weft_control_certificate_requests_total{result=\"unauthenticated\"} 2"),
        "{metrics}"
    );
    mesh.stop().await;
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let mesh = Mesh::start(DAY).await;
    let node_a = mesh.node_identity("node-a");
    let mut client = mesh.certificates(Some(&node_a));
    let (_, csr) = csr_p256();
    let rsa = csr_for(&KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048).unwrap());
    let p384 = csr_for(&KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap());
    let cert_not_csr = mesh.root_pem.clone();
    let cases = [
        (
            "spiffe://example.org/ns/shop/sa/web",
            csr.as_str(),
            "identity: spiffe://example.org/ns/shop/sa/web is outside trust domain cluster.local",
        ),
        (
            "shop/web",
            csr.as_str(),
            "identity: \"shop/web\" is not a SPIFFE ID",
        ),
        (
            "spiffe://cluster.local/node/node-a",
            csr.as_str(),
            "identity: SPIFFE ID \"spiffe://cluster.local/node/node-a\" has path",
        ),
        ("", csr.as_str(), "identity:"),
        (WEB, "garbage", "csr_pem: not a PEM certificate request"),
        (WEB, "", "csr_pem: not a PEM certificate request"),
        (
            WEB,
            cert_not_csr.as_str(),
            "csr_pem: PEM block is \"CERTIFICATE\"",
        ),
        (
            WEB,
            rsa.as_str(),
            "csr_pem: the key is RSA; only ECDSA P-256 keys are certified",
        ),
        (
            WEB,
            p384.as_str(),
            "csr_pem: the key is ECDSA P-384; only ECDSA P-256 keys are certified",
        ),
    ];
    for (identity, csr_pem, want) in cases {
        let err = client
            .sign(request(identity, csr_pem, 0))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{identity} {err:?}");
        assert!(
            err.message().starts_with(want),
            "{identity}: {:?} does not start with {want:?}",
            err.message()
        );
        assert!(!err.message().contains('\n'), "{}", err.message());
    }

    // A CSR whose signature does not verify: the key of one request, signed by another.
    let tampered = tamper_signature(&csr);
    let err = client.sign(request(WEB, &tampered, 0)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("csr_pem: "), "{}", err.message());
    // Every case above and the tampered CSR are counted as invalid; nothing was issued.
    let metrics = mesh.metrics().await;
    let invalid = format!(
        "weft_control_certificate_requests_total{{result=\"invalid\"}} {}",
        cases.len() + 1
    );
    assert!(
        metrics.contains(&invalid),
        "missing {invalid:?} in:\n{metrics}"
    );
    assert!(!metrics.contains("result=\"issued\""), "{metrics}");
    mesh.stop().await;
}

/// Flips a bit in the last byte of the CSR's signature.
fn tamper_signature(csr_pem: &str) -> String {
    let (_, block) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).expect("a PEM CSR");
    let mut der = block.contents;
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let body = base64_lines(&der);
    format!("-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n")
}

fn base64_lines(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    let mut lines = String::new();
    for line in out.as_bytes().chunks(64) {
        lines.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        lines.push('\n');
    }
    lines
}

#[tokio::test]
async fn lifetimes_are_capped_by_cert_ttl() {
    let mesh = Mesh::start(Duration::from_secs(120)).await;
    let node_a = mesh.node_identity("node-a");
    let mut client = mesh.certificates(Some(&node_a));
    let (_, csr) = csr_p256();
    // (requested, expected): 0 is the default (24 h), capped like any other.
    for (requested, expected) in [(3600, 120), (0, 120), (60, 60), (120, 120)] {
        let response = client
            .sign(request(WEB, &csr, requested))
            .await
            .unwrap()
            .into_inner();
        let der = CertificateDer::from_pem_slice(response.cert_chain_pem[0].as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let v = cert.validity();
        assert_eq!(
            v.not_after.timestamp() - v.not_before.timestamp(),
            expected + 300,
            "requested {requested} s"
        );
    }
    mesh.stop().await;
}

#[tokio::test]
async fn the_link_ca_client_signs_end_to_end() {
    let mesh = Mesh::start(DAY).await;
    let config = CaClientConfig::new(&mesh.url, &mesh.root_pem, mesh.node_identity("node-a"));
    // Built outside any request, as the agent does; it connects on first use.
    let ca = CaClient::new(config).unwrap();
    let signer: &dyn Signer = &ca;
    let (key, csr) = csr_p256();
    let signed = signer
        .sign(SignRequest {
            csr_pem: csr.clone(),
            identity: WEB.parse().unwrap(),
            ttl: Some(Duration::from_secs(600)),
        })
        .await
        .expect("signed");
    assert_eq!(signed.trust_roots_pem, std::slice::from_ref(&mesh.root_pem));
    let cert = Certificate::from_pem(
        signed.chain_pem.join("").as_bytes(),
        key.serialize_pem().as_bytes(),
    )
    .unwrap();
    assert_eq!(cert.identity().as_str(), WEB);
    let left = cert
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap()
        .as_secs();
    assert!((590..=600).contains(&left), "{left}");

    // A refusal is final and says what happened.
    let err = signer
        .sign(SignRequest {
            csr_pem: csr.clone(),
            identity: DB.parse().unwrap(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert!(!err.retryable);
    assert!(
        err.message
            .starts_with(&format!("the CA at {} refused {DB}: node node-a", mesh.url)),
        "{}",
        err.message
    );

    // Without a node credential: refused, not retryable.
    let mut anonymous = CaClientConfig::new(&mesh.url, &mesh.root_pem, mesh.node_identity("x"));
    anonymous.identity = None;
    let err = CaClient::new(anonymous)
        .unwrap()
        .sign_certificate(SignRequest {
            csr_pem: csr.clone(),
            identity: WEB.parse().unwrap(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert!(!err.retryable);
    assert!(
        err.message.contains("Sign needs a node credential"),
        "{}",
        err.message
    );

    // A control plane that is gone: retryable, and says so.
    let url = mesh.url.clone();
    let root = mesh.root_pem.clone();
    let identity = mesh.node_identity("node-a");
    mesh.stop().await;
    let err = CaClient::new(CaClientConfig::new(&url, &root, identity))
        .unwrap()
        .sign_certificate(SignRequest {
            csr_pem: csr,
            identity: WEB.parse().unwrap(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert!(err.retryable, "{}", err.message);
    assert!(
        err.message.starts_with("cannot reach the CA at"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn the_gateway_credential_gets_the_gateway_identity_only() {
    const GATEWAY: &str = "spiffe://cluster.local/ns/weft-system/sa/weft-gateway";
    let mesh = Mesh::start(DAY).await;
    let (_, csr) = csr_p256();
    let gateway = mesh.gateway_identity();
    let issued = mesh
        .certificates(Some(&gateway))
        .sign(request(GATEWAY, &csr, 0))
        .await
        .unwrap()
        .into_inner();
    let leaf = x509_parser::pem::parse_x509_pem(issued.cert_chain_pem[0].as_bytes())
        .unwrap()
        .1;
    let (uri, _) = weft_link::tls::single_uri_san(&leaf.contents).unwrap();
    assert_eq!(uri, GATEWAY);
    // Any other identity is refused, workload or not.
    for other in [WEB, "spiffe://cluster.local/ns/weft-system/sa/other"] {
        let err = mesh
            .certificates(Some(&gateway))
            .sign(request(other, &csr, 0))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{other}: {err:?}");
        assert!(err.message().contains(GATEWAY), "{}", err.message());
    }
    // A node credential does not get the gateway's identity (no such workload runs there).
    let err = mesh
        .certificates(Some(&mesh.node_identity("node-a")))
        .sign(request(GATEWAY, &csr, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    mesh.stop().await;
}
