//! The Kubernetes source end to end, against a stand-in API server on loopback that lists
//! and watches as the real one does (HTTP/1.1 list, then a chunked watch stream of JSON
//! events): a pod whose Ready condition turns False reaches a subscribed agent as a
//! Workload delta, through the real reflectors, the real control plane and a real client.

mod support;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use weft_control::{
    config::{
        Source,
        kubernetes::{KubernetesOptions, KubernetesSource},
    },
    server::ServerConfig,
};
use weft_proto::discovery::v1::{ResourceType, WorkloadStatus, resource::Kind};

type Body = BoxBody<Bytes, Infallible>;
type Events = mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>;

/// The stand-in API server: the objects of each collection path, and the open watches.
#[derive(Default)]
struct Fake {
    lists: BTreeMap<&'static str, Vec<Value>>,
    watches: Mutex<Vec<(String, Events)>>,
}

impl Fake {
    /// Sends a watch event to every watch of `path`.
    fn event(&self, path: &str, kind: &str, object: &Value) {
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        for (p, tx) in self.watches.lock().iter() {
            if p == path {
                let _ = tx.send(Ok(Frame::data(Bytes::from(line.clone()))));
            }
        }
    }

    fn answer(&self, req: &Request<hyper::body::Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("");
        let json_response = |status: StatusCode, v: Value| {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(v.to_string())).boxed())
                .expect("a response")
        };
        if path == "/version" {
            return json_response(
                StatusCode::OK,
                json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0",
                       "gitCommit": "0", "gitTreeState": "clean",
                       "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
                       "compiler": "gc", "platform": "linux/amd64"}),
            );
        }
        let Some((key, items)) = self.lists.iter().find(|(p, _)| **p == path) else {
            // Optional CRDs' discovery and anything else: not served.
            return json_response(
                StatusCode::NOT_FOUND,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": "NotFound", "code": 404}),
            );
        };
        if query.contains("watch=true") || query.contains("watch=1") {
            let (tx, rx) = mpsc::unbounded_channel();
            self.watches.lock().push((key.to_string(), tx));
            return Response::builder()
                .header("content-type", "application/json")
                .body(BodyExt::boxed(StreamBody::new(
                    UnboundedReceiverStream::new(rx),
                )))
                .expect("a response");
        }
        json_response(
            StatusCode::OK,
            json!({"kind": "List", "apiVersion": "v1",
                   "metadata": {"resourceVersion": "1"}, "items": items}),
        )
    }
}

async fn serve(fake: Arc<Fake>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let fake = fake.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let fake = fake.clone();
                    async move { Ok::<_, Infallible>(fake.answer(&req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn pod(ready: &str, resource_version: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", "uid": "pod-web-0",
                     "resourceVersion": resource_version, "labels": {"app": "web"},
                     "creationTimestamp": "2026-03-02T09:14:02Z"},
        "spec": {"nodeName": "node-1", "serviceAccountName": "web",
                 "containers": [{"name": "web", "image": "web",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": "10.244.1.17",
                   "podIPs": [{"ip": "10.244.1.17"}],
                   "conditions": [{"type": "Ready", "status": ready}]}
    })
}

#[tokio::test]
async fn a_pod_that_stops_being_ready_reaches_agents_as_a_delta() {
    let mut fake = Fake::default();
    fake.lists.insert(
        "/api/v1/nodes",
        vec![json!({"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": "node-1", "resourceVersion": "1",
                                 "labels": {"topology.kubernetes.io/region": "eu",
                                            "topology.kubernetes.io/zone": "eu-1a"}}})],
    );
    fake.lists.insert("/api/v1/pods", vec![pod("True", "1")]);
    fake.lists.insert(
        "/api/v1/services",
        vec![json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "1"},
                    "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10",
                             "clusterIPs": ["10.96.0.10"],
                             "ports": [{"port": 80, "targetPort": "http"}]}})],
    );
    fake.lists.insert("/api/v1/secrets", vec![]);
    fake.lists
        .insert("/apis/discovery.k8s.io/v1/endpointslices", vec![]);
    fake.lists
        .insert("/apis/networking.k8s.io/v1/networkpolicies", vec![]);
    let fake = Arc::new(fake);
    let api = serve(fake.clone()).await;

    let config = kube::Config::new(format!("http://{api}").parse().expect("a URL"));
    let options = KubernetesOptions {
        connect_timeout: Duration::from_secs(5),
        sync_timeout: Duration::from_secs(10),
        ..KubernetesOptions::default()
    };
    let source = KubernetesSource::connect_with(config, options)
        .await
        .expect("lists every kind");
    let state = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(
        Source::Kubernetes(source),
        "127.0.0.1:0".parse().unwrap(),
        state.path().to_path_buf(),
    );
    config.init_ca = true;
    let server = Server::run(config).await;
    let mut client = TestClient::start(&server, vec![ResourceType::Workload], vec![]);
    let snapshot = client.next().await;
    assert!(snapshot.snapshot);
    let Some(Kind::Workload(w)) = &snapshot.resources[0].kind else {
        panic!("{snapshot:?}");
    };
    assert_eq!(w.status(), WorkloadStatus::Ready);
    assert_eq!(w.ports.get("http"), Some(&8080));
    assert_eq!(w.locality.clone().unwrap_or_default().zone, "eu-1a");

    // Wait until the pod watch is open, then the kubelet reports the pod not ready.
    let deadline = Instant::now() + WAIT;
    while !fake.watches.lock().iter().any(|(p, _)| p == "/api/v1/pods") {
        assert!(Instant::now() < deadline, "the pod watch never opened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = Instant::now();
    fake.event("/api/v1/pods", "MODIFIED", &pod("False", "2"));
    let update = client.next().await;
    let delay = start.elapsed();
    assert_eq!(update.resource_type, ResourceType::Workload);
    assert!(!update.snapshot, "{update:?}");
    assert_eq!(names(&update), ["pod-web-0"]);
    let Some(Kind::Workload(w)) = &update.resources[0].kind else {
        panic!("{update:?}");
    };
    assert_eq!(w.status(), WorkloadStatus::NotReady);
    println!("pod Ready=False, watch event sent -> delta received: {delay:?}");

    // And ready again.
    let start = Instant::now();
    fake.event("/api/v1/pods", "MODIFIED", &pod("True", "3"));
    let update = client.next().await;
    let Some(Kind::Workload(w)) = &update.resources[0].kind else {
        panic!("{update:?}");
    };
    assert_eq!(w.status(), WorkloadStatus::Ready);
    println!("pod Ready=True: {:?}", start.elapsed());
    drop(client);
    server.stop().await;
}
