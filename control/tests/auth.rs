//! No anonymous access to the control plane: every discovery call needs a node, operator or
//! gateway credential; each may do only its part; API-key hashes reach the gateway only;
//! what a client sends is bounded.

mod ca_support;

use std::time::Duration;

use ca_support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};
use weft_control::server::limits;
use weft_link::control::ClientIdentity;
use weft_proto::discovery::v1::{
    ClientHello, ClientKind, ConfigDumpRequest, DiscoveryResponse, Nack, ResourceType,
    StatusRequest, SubscribeRequest, resource::Kind, subscribe_request::Message,
};

fn hello(kind: ClientKind, node: &str, types: &[ResourceType]) -> SubscribeRequest {
    SubscribeRequest {
        message: Some(Message::Hello(ClientHello {
            kind: kind.into(),
            name: format!("client-{node}"),
            node: node.to_string(),
            client_version: "test".into(),
            resource_types: types.iter().map(|t| (*t).into()).collect(),
        })),
    }
}

/// An open stream: its sender (the hello already sent) and the server's responses.
struct Stream {
    tx: mpsc::Sender<SubscribeRequest>,
    inbound: Streaming<DiscoveryResponse>,
}

/// Opens a stream with `first` as its first message; the refusal, if the server refuses
/// before or with its first response.
async fn open(
    mesh: &Mesh,
    identity: Option<&ClientIdentity>,
    first: SubscribeRequest,
) -> Result<(Stream, DiscoveryResponse), tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(first)
        .await
        .expect("the stream takes its first message");
    let mut inbound = mesh
        .discovery(identity)
        .subscribe(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let response = tokio::time::timeout(WAIT, inbound.message())
        .await
        .expect("an answer in time")?
        .expect("the stream is open");
    Ok((Stream { tx, inbound }, response))
}

#[tokio::test]
async fn anonymous_and_workload_callers_get_unauthenticated_and_no_data() {
    let mesh = Mesh::start(Duration::from_secs(3600)).await;
    // A workload certificate chains to the same root, but is no credential here.
    let workload = support_credential(&mesh, WEB);
    for identity in [None, Some(&workload)] {
        let err = open(
            &mesh,
            identity,
            hello(ClientKind::Agent, "node-a", &[ResourceType::Workload]),
        )
        .await
        .map(|(_, r)| r)
        .expect_err("no data without a credential");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert!(err.message().contains("operator-credential"), "{err:?}");

        let err = mesh
            .discovery(identity)
            .status(StatusRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        let err = mesh
            .discovery(identity)
            .config_dump(ConfigDumpRequest {
                node: "node-a".into(),
                resource_types: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    let metrics = mesh.metrics().await;
    for call in ["Subscribe", "Status", "ConfigDump"] {
        assert!(
            metrics.contains(&format!(
                "weft_control_unauthenticated_calls_total{{call=\"{call}\"}} 2"
            )),
            "{metrics}"
        );
    }
    mesh.stop().await;
}

fn support_credential(mesh: &Mesh, spiffe_id: &str) -> ClientIdentity {
    let (issued, key) = mesh
        .ca
        .issue_client_credential(spiffe_id, "test", Duration::from_secs(3600))
        .expect("the CA issues a credential");
    ClientIdentity::new(issued.cert_pem, key)
}

#[tokio::test]
async fn each_credential_does_only_its_part() {
    let mesh = Mesh::start(Duration::from_secs(3600)).await;
    let node_a = mesh.node_identity("node-a");
    let operator = mesh.operator_identity();
    let gateway = mesh.gateway_identity();
    let workloads = [ResourceType::Workload];
    let refused = |r: Result<(Stream, DiscoveryResponse), tonic::Status>| {
        r.map(|(_, r)| r).expect_err("refused").code()
    };

    // A node: its own node's agent only.
    assert!(
        open(
            &mesh,
            Some(&node_a),
            hello(ClientKind::Agent, "node-a", &workloads)
        )
        .await
        .is_ok()
    );
    for (kind, node) in [
        (ClientKind::Agent, "node-b"),
        (ClientKind::Gateway, "node-a"),
        (ClientKind::Ctl, "node-a"),
    ] {
        let r = open(&mesh, Some(&node_a), hello(kind, node, &workloads)).await;
        assert_eq!(refused(r), Code::PermissionDenied, "{kind:?} {node}");
    }
    // The gateway: as a gateway only.
    assert!(
        open(
            &mesh,
            Some(&gateway),
            hello(ClientKind::Gateway, "", &workloads)
        )
        .await
        .is_ok()
    );
    let r = open(
        &mesh,
        Some(&gateway),
        hello(ClientKind::Agent, "node-a", &workloads),
    )
    .await;
    assert_eq!(refused(r), Code::PermissionDenied);
    // An operator: anything.
    assert!(
        open(
            &mesh,
            Some(&operator),
            hello(ClientKind::Agent, "node-b", &workloads)
        )
        .await
        .is_ok()
    );

    // Status is the operator's; ConfigDump the operator's and a node's own.
    let status = |id: &ClientIdentity| {
        let mut client = mesh.discovery(Some(id));
        async move { client.status(StatusRequest {}).await.map(|_| ()) }
    };
    status(&operator).await.unwrap();
    for id in [&node_a, &gateway] {
        assert_eq!(status(id).await.unwrap_err().code(), Code::PermissionDenied);
    }
    let dump = |id: &ClientIdentity, node: &str| {
        let mut client = mesh.discovery(Some(id));
        let request = ConfigDumpRequest {
            node: node.into(),
            resource_types: vec![],
        };
        async move { client.config_dump(request).await.map(|_| ()) }
    };
    dump(&operator, "node-b").await.unwrap();
    dump(&node_a, "node-a").await.unwrap();
    for (id, node) in [(&node_a, "node-b"), (&gateway, "node-a")] {
        assert_eq!(
            dump(id, node).await.unwrap_err().code(),
            Code::PermissionDenied,
            "{node}"
        );
    }
    // And only a node credential obtains workload certificates (certificates.rs covers it
    // in full): an operator's is refused.
    let (_, csr) = csr_p256();
    let err = mesh
        .certificates(Some(&operator))
        .sign(weft_proto::identity::v1::SignRequest {
            csr_pem: csr,
            identity: WEB.into(),
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    mesh.stop().await;
}

const CONSUMER: &str = "\
apiVersion: weft.dev/v1alpha1
kind: Consumer
metadata: {name: acme, namespace: shop}
spec:
  apiKeySha256: [9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08]
";

fn hashes(response: &DiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .filter_map(|r| match &r.kind {
            Some(Kind::Consumer(c)) => Some(c.api_key_sha256.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[tokio::test]
async fn api_key_hashes_reach_the_gateway_only() {
    let mesh = Mesh::start(Duration::from_secs(3600)).await;
    let operator = mesh.operator_identity();
    // A first call: the server, and so its directory watcher, runs.
    mesh.discovery(Some(&operator))
        .status(StatusRequest {})
        .await
        .unwrap();
    std::fs::write(mesh.config_dir.path().join("consumer.yaml"), CONSUMER).unwrap();
    let consumers = [ResourceType::Consumer];
    // Wait for the reload that brings the consumer.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, first) = open(
            &mesh,
            Some(&operator),
            hello(ClientKind::Ctl, "", &consumers),
        )
        .await
        .unwrap();
        if !first.resources.is_empty() {
            assert!(hashes(&first).is_empty(), "an operator got {first:?}");
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let status = mesh
                .discovery(Some(&operator))
                .status(StatusRequest {})
                .await;
            panic!("no consumer: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (_, first) = open(
        &mesh,
        Some(&mesh.gateway_identity()),
        hello(ClientKind::Gateway, "", &consumers),
    )
    .await
    .unwrap();
    assert_eq!(hashes(&first).len(), 1, "the gateway gets the hashes");

    let (_, first) = open(
        &mesh,
        Some(&mesh.node_identity("node-a")),
        hello(ClientKind::Agent, "node-a", &consumers),
    )
    .await
    .unwrap();
    assert_eq!(first.resources.len(), 1);
    assert!(hashes(&first).is_empty(), "a node got {first:?}");

    for (id, node) in [
        (&operator, "node-b"),
        (&mesh.node_identity("node-a"), "node-a"),
    ] {
        let dump = mesh
            .discovery(Some(id))
            .config_dump(ConfigDumpRequest {
                node: node.into(),
                resource_types: vec![ResourceType::Consumer.into()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(dump.snapshots[0].resources.len(), 1);
        assert!(hashes(&dump.snapshots[0]).is_empty(), "{dump:?}");
    }

    // A delta is redacted too: the hash changes while a node is subscribed.
    let (mut stream, _) = open(
        &mesh,
        Some(&mesh.node_identity("node-a")),
        hello(ClientKind::Agent, "node-a", &consumers),
    )
    .await
    .unwrap();
    std::fs::write(
        mesh.config_dir.path().join("consumer.yaml"),
        CONSUMER.replace("9f86", "0f86"),
    )
    .unwrap();
    let delta = tokio::time::timeout(WAIT, stream.inbound.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!delta.snapshot && delta.resources.len() == 1, "{delta:?}");
    assert!(hashes(&delta).is_empty(), "{delta:?}");
    drop(stream.tx);
    mesh.stop().await;
}

#[tokio::test]
async fn oversize_messages_and_hello_fields_are_refused() {
    let mesh = Mesh::start(Duration::from_secs(3600)).await;
    let operator = mesh.operator_identity();
    let workloads = [ResourceType::Workload];

    let mut big = hello(ClientKind::Ctl, "", &workloads);
    if let Some(Message::Hello(h)) = &mut big.message {
        h.client_version = "x".repeat(limits::MAX_DISCOVERY_REQUEST + 1);
    }
    let err = open(&mesh, Some(&operator), big)
        .await
        .map(|(_, r)| r)
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");

    let field = |f: &dyn Fn(&mut ClientHello)| {
        let mut h = hello(ClientKind::Agent, "node-a", &workloads);
        if let Some(Message::Hello(h)) = &mut h.message {
            f(h);
        }
        h
    };
    let cases: [(&str, SubscribeRequest); 5] = [
        (
            "name",
            field(&|h| h.name = "n".repeat(limits::MAX_HELLO_NAME + 1)),
        ),
        ("name", field(&|h| h.name = "agent\nforged log line".into())),
        (
            "client_version",
            field(&|h| h.client_version = "v".repeat(limits::MAX_CLIENT_VERSION + 1)),
        ),
        ("node", field(&|h| h.node = "node-a\nx".into())),
        (
            "resource_types",
            field(&|h| h.resource_types = vec![1; limits::MAX_HELLO_TYPES + 1]),
        ),
    ];
    for (what, request) in cases {
        let err = open(&mesh, Some(&operator), request)
            .await
            .map(|(_, r)| r)
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(what), "{what}: {err:?}");
        assert!(!err.message().contains('\n'), "{what}: {err:?}");
    }
    mesh.stop().await;
}

#[tokio::test]
async fn a_huge_nack_reason_is_truncated_and_escaped_in_status_and_logs() {
    let logs = LogBuffer::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish(),
    );
    let mesh = Mesh::start(Duration::from_secs(3600)).await;
    let node_a = mesh.node_identity("node-a");
    let (stream, first) = open(
        &mesh,
        Some(&node_a),
        hello(ClientKind::Agent, "node-a", &[ResourceType::Workload]),
    )
    .await
    .unwrap();
    // 1 MiB of lines, the second of which would pass for a log record of its own.
    let reason = format!(
        "bad\nWARN forged: all is well\n{}",
        "z\n".repeat(512 * 1024)
    );
    stream
        .tx
        .send(SubscribeRequest {
            message: Some(Message::Nack(Nack {
                resource_type: ResourceType::Workload.into(),
                version: first.version,
                nonce: first.nonce.clone(),
                resource_name: "shop/web-0\nx".into(),
                reason,
            })),
        })
        .await
        .unwrap();

    let mut admin = mesh.discovery(Some(&mesh.operator_identity()));
    let deadline = tokio::time::Instant::now() + WAIT;
    let nack = loop {
        let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
        let nack = status
            .clients
            .iter()
            .flat_map(|c| &c.types)
            .find_map(|t| t.last_nack.clone());
        if let Some(nack) = nack {
            break nack;
        }
        assert!(tokio::time::Instant::now() < deadline, "no NACK in status");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        nack.reason.len() <= limits::MAX_NACK_REASON + 64,
        "{}",
        nack.reason.len()
    );
    assert!(
        nack.reason.starts_with("bad\\nWARN forged"),
        "{}",
        &nack.reason[..40]
    );
    assert!(
        nack.reason.ends_with("more bytes dropped]"),
        "{}",
        nack.reason
    );
    assert!(!nack.reason.contains('\n'));
    assert_eq!(nack.resource_name, "shop/web-0\\nx");

    let logged = logs.text();
    let line = logged
        .lines()
        .find(|l| l.contains("client rejected a version"))
        .unwrap_or_else(|| panic!("no NACK logged:\n{logged}"));
    assert!(line.contains("bad\\nWARN forged"), "{line}");
    assert!(line.len() < 4 * 1024, "{} bytes", line.len());
    assert!(
        !logged.lines().any(|l| l.starts_with("WARN forged")),
        "{logged}"
    );
    drop(stream.tx);
    mesh.stop().await;
}

/// Captures log output for assertions.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A `weft` Gateway with an HTTPS listener, and its TLS Secret (from tests/edge/).
fn gateway_config(hostname: &str) -> String {
    let edge = include_str!("edge/edge.yaml");
    // The fixture's first two documents: the Gateway and the Secret it names.
    let docs: Vec<&str> = edge.split("\n---\n").take(2).collect();
    docs.join("\n---\n")
        .replace("\"*.example.com\"", &format!("\"{hostname}\""))
}

fn private_keys(response: &DiscoveryResponse) -> Vec<(String, String)> {
    response
        .resources
        .iter()
        .filter_map(|r| match &r.kind {
            Some(Kind::Listener(l)) => Some(l.certificates.clone()),
            _ => None,
        })
        .flatten()
        .map(|c| (c.cert_pem, c.key_pem))
        .collect()
}

/// Every certificate carries its chain, and no private key.
#[track_caller]
fn assert_keys_cleared(response: &DiscoveryResponse) {
    let keys = private_keys(response);
    assert!(!keys.is_empty(), "{response:?}");
    for (cert, key) in keys {
        assert!(cert.contains("BEGIN CERTIFICATE"), "{response:?}");
        assert!(key.is_empty(), "a private key went out: {response:?}");
    }
}

#[tokio::test]
async fn listener_private_keys_reach_the_gateway_only() {
    let mesh = Mesh::start(Duration::from_secs(3600)).await;
    let operator = mesh.operator_identity();
    mesh.discovery(Some(&operator))
        .status(StatusRequest {})
        .await
        .unwrap();
    std::fs::write(
        mesh.config_dir.path().join("gateway.yaml"),
        gateway_config("*.example.com"),
    )
    .unwrap();
    let listeners = [ResourceType::Listener];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, first) = open(
            &mesh,
            Some(&operator),
            hello(ClientKind::Ctl, "", &listeners),
        )
        .await
        .unwrap();
        if first.resources.len() == 2 {
            assert_keys_cleared(&first);
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let status = mesh
                .discovery(Some(&operator))
                .status(StatusRequest {})
                .await;
            panic!("no listeners: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The gateway subscribes to every type it serves from, and gets the keys.
    let gateway_types = [
        ResourceType::Listener,
        ResourceType::ApiRoute,
        ResourceType::Consumer,
        ResourceType::Plan,
        ResourceType::Workload,
        ResourceType::Service,
    ];
    let (mut gateway_stream, mut snapshot) = open(
        &mesh,
        Some(&mesh.gateway_identity()),
        hello(ClientKind::Gateway, "", &gateway_types),
    )
    .await
    .unwrap();
    // One snapshot per type; the listeners' among them.
    let mut seen = vec![snapshot.resource_type()];
    while snapshot.resource_type() != ResourceType::Listener {
        snapshot = tokio::time::timeout(WAIT, gateway_stream.inbound.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(snapshot.resource_type());
    }
    assert!(seen.len() <= gateway_types.len(), "{seen:?}");
    let first = snapshot;
    let keys = private_keys(&first);
    assert_eq!(keys.len(), 1, "{first:?}");
    assert!(
        keys[0].1.contains("PRIVATE KEY"),
        "the gateway gets the key"
    );
    drop(gateway_stream.tx);

    let (_, first) = open(
        &mesh,
        Some(&mesh.node_identity("node-a")),
        hello(ClientKind::Agent, "node-a", &listeners),
    )
    .await
    .unwrap();
    assert_keys_cleared(&first);

    for (id, node) in [
        (&operator, "node-b"),
        (&mesh.node_identity("node-a"), "node-a"),
    ] {
        let dump = mesh
            .discovery(Some(id))
            .config_dump(ConfigDumpRequest {
                node: node.into(),
                resource_types: vec![ResourceType::Listener.into()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_keys_cleared(&dump.snapshots[0]);
    }

    // A delta is redacted too: the listeners change while a node is subscribed.
    let (mut stream, _) = open(
        &mesh,
        Some(&mesh.node_identity("node-a")),
        hello(ClientKind::Agent, "node-a", &listeners),
    )
    .await
    .unwrap();
    std::fs::write(
        mesh.config_dir.path().join("gateway.yaml"),
        gateway_config("*.example.org").replace("port: 8443", "port: 9443"),
    )
    .unwrap();
    let delta = tokio::time::timeout(WAIT, stream.inbound.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!delta.snapshot, "{delta:?}");
    assert_keys_cleared(&delta);
    drop(stream.tx);
    mesh.stop().await;
}
