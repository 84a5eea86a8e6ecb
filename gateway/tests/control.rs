//! The gateway binary in `--control` mode: a real control plane on loopback (its CA, a gateway
//! credential), a mesh destination (weft-link's HBONE server standing in for the agent's
//! inbound, with a workload certificate), and plain backends.

mod common;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use common::*;
use parking_lot::Mutex;
use weft_control::{
    ca::{CertificateAuthority, Csr},
    config::Source,
    principal::gateway_spiffe_id,
    server::{ControlPlane, ServerConfig},
};
use weft_link::{
    hbone::{ConnectHandler, HboneServer, InboundConnect, Refusal},
    identity::{SpiffeId, TrustDomain},
    tls::{CertResolver, Certificate, TrustBundle},
};

/// The agent inbound of the test's "pod": relays each tunnel to the echo backend and
/// remembers who opened it.
struct Inbound {
    upstream: SocketAddr,
    peers: Mutex<Vec<(String, SocketAddr)>>,
}

impl ConnectHandler for Inbound {
    type Upstream = tokio::net::TcpStream;

    async fn connect(&self, req: InboundConnect) -> Result<tokio::net::TcpStream, Refusal> {
        self.peers
            .lock()
            .push((req.peer.as_str().to_string(), req.authority));
        tokio::net::TcpStream::connect(self.upstream)
            .await
            .map_err(|e| Refusal::new(http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
    }
}

fn mesh_docs(http_port: u16, pod_ip: &str, plain: SocketAddr) -> String {
    format!(
        "{gw}---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {{name: echo-0, namespace: demo, labels: {{app: echo}}}}
spec: {{serviceAccount: echo, node: node-a, ips: [\"{pod_ip}\"]}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: demo}}
spec: {{selector: {{app: echo}}, ports: [{{port: 8000, targetPort: 8080}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: mesh, namespace: demo}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /mesh}}}}]
    backendRefs: [{{name: echo, port: 8000}}]
---
{backend}---
{route}",
        gw = gateway_doc(http_port, None),
        backend = backend_doc("plain", &format!("http://{plain}")),
        route = route_doc("plain", "/plain", "plain"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_mode_reaches_a_mesh_service_over_hbone_as_the_gateway() {
    let echo = Backend::start("echo").await;
    let plain = Backend::start("plain").await;
    // A pod address of its own on loopback, so the fixed HBONE port cannot collide.
    let pod_ip = format!(
        "127.{}.{}.{}",
        100 + std::process::id() % 100,
        std::process::id() % 250 + 1,
        9
    );
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let http_port = free_port();
    write(
        config.path(),
        "mesh.yaml",
        &mesh_docs(http_port, &pod_ip, plain.addr),
    );

    // The control plane.
    let mut sc = ServerConfig::new(
        Source::Directory(config.path().to_path_buf()),
        "127.0.0.1:0".parse().unwrap(),
        state.path().to_path_buf(),
    );
    sc.debounce = Duration::from_millis(100);
    sc.init_ca = true;
    let cp = ControlPlane::new(sc).await.expect("control plane starts");
    let control_addr = cp.local_addr().unwrap();
    let root_pem = cp.root_pem().to_string();
    let (stop_cp, cp_stopped) = tokio::sync::oneshot::channel::<()>();
    let cp_task = tokio::spawn(async move {
        let _ = cp
            .run(async {
                let _ = cp_stopped.await;
            })
            .await;
    });
    let ca = CertificateAuthority::load(state.path()).unwrap();
    let td = TrustDomain::default();

    // The mesh destination: HBONE on pod_ip:15008 with the echo workload's certificate.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let echo_id = SpiffeId::new(td.clone(), "demo", "echo").unwrap();
    let issued = ca
        .sign_workload(
            &Csr::from_pem(&csr).unwrap(),
            &echo_id,
            Duration::from_secs(3600),
        )
        .unwrap();
    let cert =
        Certificate::from_pem(issued.cert_pem.as_bytes(), key.serialize_pem().as_bytes()).unwrap();
    let bundle = Arc::new(TrustBundle::from_pem(td.clone(), root_pem.as_bytes()).unwrap());
    let tls =
        weft_link::tls::server_config(Arc::new(CertResolver::new(cert)), bundle, None).unwrap();
    let inbound = Arc::new(Inbound {
        upstream: echo.addr,
        peers: Mutex::new(Vec::new()),
    });
    let hbone_listener = tokio::net::TcpListener::bind((pod_ip.as_str(), 15008))
        .await
        .unwrap();
    let (stop_hbone, hbone_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = HboneServer::new(hbone_listener, tls, inbound.clone());
    tokio::spawn(server.run(async {
        let _ = hbone_stopped.await;
    }));

    // The gateway, with its credential.
    let creds = tempfile::tempdir().unwrap();
    let (issued, gw_key) = ca
        .issue_client_credential(&gateway_spiffe_id(&td), "test", Duration::from_secs(3600))
        .unwrap();
    let (cert_path, key_path, root_path) = (
        creds.path().join("gateway-cert.pem"),
        creds.path().join("gateway-key.pem"),
        creds.path().join("root-cert.pem"),
    );
    std::fs::write(&cert_path, issued.cert_pem).unwrap();
    std::fs::write(&key_path, gw_key).unwrap();
    std::fs::write(&root_path, &root_pem).unwrap();
    let gw = Gateway::spawn(&[
        "--control",
        &format!("https://127.0.0.1:{}", control_addr.port()),
        "--control-ca",
        root_path.to_str().unwrap(),
        "--gateway-cert",
        cert_path.to_str().unwrap(),
        "--gateway-key",
        key_path.to_str().unwrap(),
    ]);
    gw.wait_ready();
    let base = format!("http://127.0.0.1:{http_port}");

    // Into the mesh: HBONE to pod_ip:15008, authority pod_ip:8080, as the gateway.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        // The mesh certificate may take a moment after the first configuration.
        let (status, body) = curl(&[&format!("{base}/mesh/hello")]);
        if status == 200 || std::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, 200, "{body}\n{}", gw.log());
    assert!(body.contains("\"backend\":\"echo\""), "{body}");
    let peers = inbound.peers.lock().clone();
    assert_eq!(
        peers.first().map(|(p, a)| (p.as_str(), a.to_string())),
        Some((
            "spiffe://cluster.local/ns/weft-system/sa/weft-gateway",
            format!("{pod_ip}:8080")
        )),
        "{peers:?}"
    );
    // A plain backend outside the mesh.
    let (status, body) = curl(&[&format!("{base}/plain/x")]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"backend\":\"plain\""));

    // A delta: a route added takes effect.
    write(
        config.path(),
        "two.yaml",
        &route_doc("two", "/two", "plain"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while curl(&[&format!("{base}/two/x")]).0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new route never served\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A version the gateway cannot put in force (a listener on a port something else holds)
    // is NACKed and the last good configuration stays in force.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let other = gateway_doc(taken_port, None).replace("name: edge", "name: other");
    write(config.path(), "conflict.yaml", &other);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rejections = gw.config()["control"]["last_rejections"].clone();
        if rejections.as_array().is_some_and(|r| !r.is_empty()) {
            assert!(
                rejections
                    .to_string()
                    .contains(&format!("cannot listen on 127.0.0.1:{taken_port}")),
                "{rejections}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no NACK\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        curl(&[&format!("{base}/two/x")]).0,
        200,
        "the last good configuration serves"
    );
    assert_eq!(curl(&[&format!("{base}/mesh/x")]).0, 200);
    assert_eq!(
        gw.config()["snapshot"]["ports"].as_array().map(Vec::len),
        Some(1)
    );
    drop(taken);

    drop(gw);
    let _ = stop_hbone.send(());
    let _ = stop_cp.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), cp_task).await;
}
