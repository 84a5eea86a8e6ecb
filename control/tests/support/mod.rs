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
    config::Source,
    server::{ControlPlane, ServerConfig},
};
use weft_link::control::{Client, ClientConfig, ConnectionState, Rejection, Update};
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
        Server::run(config).await
    }

    /// Starts a control plane with `config` on a task; [`Server::stop`] ends it.
    pub async fn run(config: ServerConfig) -> Server {
        let cp = ControlPlane::new(config)
            .await
            .expect("control plane starts");
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

    pub async fn admin(&self) -> DiscoveryClient<tonic::transport::Channel> {
        let endpoint =
            weft_link::control::endpoint(&self.url(), &self.root_pem, None, WAIT).unwrap();
        DiscoveryClient::new(endpoint.connect().await.expect("admin connects"))
    }
}

/// A running client whose handler forwards every update to `updates`, and rejects the
/// types in `reject`.
pub struct TestClient {
    pub updates: mpsc::UnboundedReceiver<Update>,
    pub state: ConnectionState,
    stop: Option<oneshot::Sender<()>>,
}

impl TestClient {
    pub fn start(
        url: &str,
        root_pem: &str,
        types: Vec<ResourceType>,
        reject: Vec<ResourceType>,
    ) -> Self {
        let (tx, updates) = mpsc::unbounded_channel();
        let mut config =
            ClientConfig::new(url, root_pem, ClientKind::Agent, "agent-1", "node-1", types);
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
