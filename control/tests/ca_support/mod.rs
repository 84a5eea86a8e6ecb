//! Helpers of the CA tests: a real control plane on loopback with a mesh of workloads on
//! node-a and node-b, node credentials from its root, and clients that present them.

// Helpers are not `#[test]` functions, so clippy's test exemption does not cover them; a
// failed setup step should panic the test like any assertion.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use tonic::transport::Channel;
use weft_control::{ca::CertificateAuthority, config::Source, server::ServerConfig};
use weft_link::control::ClientIdentity;
use weft_proto::{
    discovery::v1::discovery_client::DiscoveryClient,
    identity::v1::certificates_client::CertificatesClient,
};

// The discovery tests' control-plane runner, shared.
#[path = "../support/mod.rs"]
mod support;

pub use support::WAIT;

/// shop/web runs on node-a, shop/db on node-b, shop/api on both.
pub const MESH: &str = "\
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {name: web-0, namespace: shop}
spec: {serviceAccount: web, node: node-a, ips: [10.1.0.10]}
---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {name: db-0, namespace: shop}
spec: {serviceAccount: db, node: node-b, ips: [10.1.0.20]}
---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {name: api-0, namespace: shop}
spec: {serviceAccount: api, node: node-a, ips: [10.1.0.30]}
---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {name: api-1, namespace: shop}
spec: {serviceAccount: api, node: node-b, ips: [10.1.0.31]}
";

pub const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
pub const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";
pub const API: &str = "spiffe://cluster.local/ns/shop/sa/api";

/// A running control plane, its directories and its CA.
pub struct Mesh {
    pub url: String,
    pub root_pem: String,
    pub ca: CertificateAuthority,
    pub config_dir: tempfile::TempDir,
    pub state_dir: tempfile::TempDir,
    server: support::Server,
}

impl Mesh {
    /// Serves [`MESH`] with workload certificates capped at `cert_ttl`.
    pub async fn start(cert_ttl: Duration) -> Mesh {
        let config_dir = tempfile::tempdir().unwrap();
        let state_dir = tempfile::tempdir().unwrap();
        std::fs::write(config_dir.path().join("mesh.yaml"), MESH).unwrap();
        let mut config = ServerConfig::new(
            Source::Directory(config_dir.path().to_path_buf()),
            "127.0.0.1:0".parse().unwrap(),
            state_dir.path().to_path_buf(),
        );
        config.cert_ttl = cert_ttl;
        config.init_ca = true;
        config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        let server = support::Server::run(config).await;
        let url = server.url();
        let root_pem = server.root_pem.clone();
        // The same root the server loaded, from the state directory it generated it in.
        let ca = CertificateAuthority::load(state_dir.path()).unwrap();
        assert_eq!(ca.root_pem(), root_pem);
        Mesh {
            url,
            root_pem,
            ca,
            config_dir,
            state_dir,
            server,
        }
    }

    /// A node credential for `node` from the mesh root.
    pub fn node_identity(&self, node: &str) -> ClientIdentity {
        support::node_identity(&self.ca, node)
    }

    pub fn operator_identity(&self) -> ClientIdentity {
        support::operator_identity(&self.ca)
    }

    pub fn gateway_identity(&self) -> ClientIdentity {
        self.server.gateway_identity()
    }

    pub fn channel(&self, identity: Option<&ClientIdentity>) -> Channel {
        weft_link::control::endpoint_with_identity(&self.url, &self.root_pem, None, identity, WAIT)
            .unwrap()
            .connect_lazy()
    }

    pub fn certificates(&self, identity: Option<&ClientIdentity>) -> CertificatesClient<Channel> {
        CertificatesClient::new(self.channel(identity))
    }

    pub fn discovery(&self, identity: Option<&ClientIdentity>) -> DiscoveryClient<Channel> {
        DiscoveryClient::new(self.channel(identity))
    }

    /// The control plane's `/metrics` response.
    pub async fn metrics(&self) -> String {
        support::get_metrics(self.server.metrics_addr.unwrap()).await
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// A fresh ECDSA P-256 key and a CSR for it (PEM), with a subject and SAN the CA must
/// ignore.
pub fn csr_p256() -> (KeyPair, String) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = csr_for(&key);
    (key, csr)
}

pub fn csr_for(key: &KeyPair) -> String {
    let mut params = CertificateParams::new(vec!["ignored.example".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ignored");
    params.serialize_request(key).unwrap().pem().unwrap()
}
