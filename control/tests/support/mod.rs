//! Shared test helpers: a real control plane on loopback with real TLS, and a real client.

// Helpers are not `#[test]` functions, so clippy's test exemption does not cover them; a
// failed setup step should panic the test like any assertion.
#![allow(dead_code, clippy::unwrap_used)]

use std::{net::SocketAddr, path::Path, time::Duration};

use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use weft_control::{
    ca::CertificateAuthority,
    config::Source,
    node::NodeName,
    principal::{OperatorName, gateway_spiffe_id, operator_spiffe_id},
    server::{ControlPlane, ServerConfig},
};
use weft_link::{
    control::{Client, ClientConfig, ClientIdentity, ConnectionState, Rejection, Update},
    identity::TrustDomain,
};
use weft_proto::discovery::v1::{ClientKind, ResourceType, discovery_client::DiscoveryClient};

pub const WAIT: Duration = Duration::from_secs(10);

/// The whole HTTP response to `GET /metrics` from a control plane's metrics address.
pub async fn get_metrics(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    response
}

pub struct Server {
    pub addr: SocketAddr,
    pub root_pem: String,
    /// The server's CA, to issue credentials from.
    pub ca: CertificateAuthority,
    /// Where `/metrics` is served, when the config asked for it.
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    pub async fn start(config_dir: &Path, state_dir: &Path, listen: SocketAddr) -> Server {
        let mut config = ServerConfig::new(
            Source::Directory(config_dir.to_path_buf()),
            listen,
            state_dir.to_path_buf(),
        );
        config.debounce = Duration::from_millis(100);
        config.init_ca = true;
        Server::run(config).await
    }

    /// Starts a control plane with `config` on a task; [`Server::stop`] ends it.
    pub async fn run(config: ServerConfig) -> Server {
        let state_dir = config.state_dir.clone();
        let operator_ca = config.ca.clone();
        let cp = ControlPlane::new(config)
            .await
            .expect("control plane starts");
        let ca = match operator_ca {
            Some((cert, key)) => CertificateAuthority::from_files(&cert, &key).unwrap(),
            None => CertificateAuthority::load(&state_dir).unwrap(),
        };
        let addr = cp.local_addr().unwrap();
        let root_pem = cp.root_pem().to_string();
        let metrics_addr = cp.metrics_addr();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            cp.run(async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
        });
        Server {
            addr,
            root_pem,
            ca,
            metrics_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server stops in time")
                .unwrap();
        }
    }

    /// A discovery client with an operator credential.
    pub async fn admin(&self) -> DiscoveryClient<tonic::transport::Channel> {
        self.client(Some(&self.operator_identity())).await
    }

    /// A discovery client presenting `identity`, or nothing.
    pub async fn client(
        &self,
        identity: Option<&ClientIdentity>,
    ) -> DiscoveryClient<tonic::transport::Channel> {
        let endpoint = weft_link::control::endpoint_with_identity(
            &self.url(),
            &self.root_pem,
            None,
            identity,
            WAIT,
        )
        .unwrap();
        DiscoveryClient::new(endpoint.connect().await.expect("client connects"))
    }

    pub fn node_identity(&self, node: &str) -> ClientIdentity {
        node_identity(&self.ca, node)
    }

    pub fn operator_identity(&self) -> ClientIdentity {
        operator_identity(&self.ca)
    }

    pub fn gateway_identity(&self) -> ClientIdentity {
        credential(&self.ca, &gateway_spiffe_id(&TrustDomain::default()))
    }
}

/// A client credential for `spiffe_id` from `ca`.
pub fn credential(ca: &CertificateAuthority, spiffe_id: &str) -> ClientIdentity {
    let (issued, key) = ca
        .issue_client_credential(spiffe_id, "test", Duration::from_secs(3600))
        .unwrap();
    ClientIdentity::new(issued.cert_pem, key)
}

pub fn node_identity(ca: &CertificateAuthority, node: &str) -> ClientIdentity {
    let node: NodeName = node.parse().unwrap();
    let (issued, key) = ca
        .issue_node_credential(&TrustDomain::default(), &node, Duration::from_secs(3600))
        .unwrap();
    ClientIdentity::new(issued.cert_pem, key)
}

pub fn operator_identity(ca: &CertificateAuthority) -> ClientIdentity {
    let name: OperatorName = "admin".parse().unwrap();
    credential(ca, &operator_spiffe_id(&TrustDomain::default(), &name))
}

/// A running client whose handler forwards every update to `updates`, and rejects the
/// types in `reject`.
pub struct TestClient {
    pub updates: mpsc::UnboundedReceiver<Update>,
    pub state: ConnectionState,
    stop: Option<oneshot::Sender<()>>,
}

impl TestClient {
    /// An agent of node-1, with node-1's credential.
    pub fn start(server: &Server, types: Vec<ResourceType>, reject: Vec<ResourceType>) -> Self {
        let (tx, updates) = mpsc::unbounded_channel();
        let mut config = ClientConfig::new(
            server.url(),
            server.root_pem.clone(),
            ClientKind::Agent,
            "agent-1",
            "node-1",
            types,
        );
        config.identity = Some(server.node_identity("node-1"));
        config.client_version = "test".into();
        config.initial_backoff = Duration::from_millis(50);
        config.max_backoff = Duration::from_millis(400);
        let client = Client::new(config, move |update: Update| {
            let rejected = reject.contains(&update.resource_type);
            let _ = tx.send(update);
            if rejected {
                Err(Rejection::new(
                    "some/resource",
                    "cannot convert: test says no",
                ))
            } else {
                Ok(())
            }
        })
        .unwrap();
        let state = client.state();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(client.run(async {
            let _ = stopped.await;
        }));
        TestClient {
            updates,
            state,
            stop: Some(stop),
        }
    }

    pub async fn next(&mut self) -> Update {
        tokio::time::timeout(WAIT, self.updates.recv())
            .await
            .expect("an update arrives in time")
            .expect("client is running")
    }

    /// Asserts that nothing arrives for `quiet`.
    pub async fn expect_nothing(&mut self, quiet: Duration) {
        if let Ok(Some(u)) = tokio::time::timeout(quiet, self.updates.recv()).await {
            panic!("unexpected update: {u:?}");
        }
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn names(update: &Update) -> Vec<String> {
    update.resources.iter().map(|r| r.name.clone()).collect()
}

/// Writes via a rename, as editors and ConfigMap updates do, so the watcher never sees a
/// half-written file.
pub fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

pub const WORKLOADS: &str = "\
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec: {serviceAccount: web, node: node-1, ips: [10.1.0.10]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  ports: [{port: 80, targetPort: 8080}]
";

pub const MORE: &str = "\
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {serviceAccount: web, node: node-2, ips: [10.1.0.11]}
";
