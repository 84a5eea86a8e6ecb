//! A workload that stops being ready reaches subscribed agents fast: the file watcher's
//! debounce, the reload and the push are all that stand between the document and the
//! agent, and together they must stay well within a second.

mod support;

use std::time::{Duration, Instant};

use support::*;
use weft_control::{config::Source, server::ServerConfig};
use weft_proto::discovery::v1::{ResourceType, WorkloadStatus, resource::Kind};

const WEB: &str = "\
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec: {serviceAccount: web, node: node-1, ips: [10.1.0.10], ports: {http: 8080}READY}
";

const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  ports: [{port: 80, targetPort: http}]
";

fn web(ready: Option<bool>) -> String {
    WEB.replace(
        "READY",
        &ready.map_or(String::new(), |r| format!(", ready: {r}")),
    )
}

/// The status of the one workload of `update`, which must be a Workload delta.
#[track_caller]
fn status_of(update: &weft_link::control::Update) -> WorkloadStatus {
    assert_eq!(update.resource_type, ResourceType::Workload, "{update:?}");
    assert!(!update.snapshot, "a delta, not a snapshot: {update:?}");
    assert_eq!(names(update), ["shop/web-0"]);
    match &update.resources[0].kind {
        Some(Kind::Workload(w)) => w.status(),
        other => panic!("not a workload: {other:?}"),
    }
}

#[tokio::test]
async fn a_workload_that_stops_being_ready_reaches_agents_as_a_delta_at_once() {
    let config_dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    write(config_dir.path(), "web.yaml", &web(None));
    write(config_dir.path(), "service.yaml", SERVICE);
    // The control plane as it runs by default: the default debounce.
    let mut config = ServerConfig::new(
        Source::Directory(config_dir.path().to_path_buf()),
        "127.0.0.1:0".parse().unwrap(),
        state.path().to_path_buf(),
    );
    config.init_ca = true;
    let server = Server::run(config).await;
    let mut client = TestClient::start(
        &server,
        vec![ResourceType::Workload, ResourceType::Service],
        vec![],
    );
    let w = client.next().await;
    assert!(w.snapshot);
    let Some(Kind::Workload(first)) = &w.resources[0].kind else {
        panic!("{w:?}");
    };
    assert_eq!(first.status(), WorkloadStatus::Ready);
    client.next().await; // the Service snapshot
    // Let the watcher's first parse settle, so the change below is a change.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut delays = Vec::new();
    for (ready, want) in [
        (false, WorkloadStatus::NotReady),
        (true, WorkloadStatus::Ready),
        (false, WorkloadStatus::NotReady),
    ] {
        let start = Instant::now();
        write(config_dir.path(), "web.yaml", &web(Some(ready)));
        let update = client.next().await;
        let delay = start.elapsed();
        assert_eq!(status_of(&update), want);
        // Readiness changes the workload only: the service's members stay.
        client.expect_nothing(Duration::from_millis(50)).await;
        delays.push(delay);
    }
    println!(
        "readiness change, document written -> delta received: {:?} (debounce {:?})",
        delays,
        weft_control::config::source::DEFAULT_DEBOUNCE
    );
    drop(client);
    server.stop().await;
}

async fn start(dir: &std::path::Path, state: &std::path::Path) -> (Server, TestClient) {
    let mut config = ServerConfig::new(
        Source::Directory(dir.to_path_buf()),
        "127.0.0.1:0".parse().expect("an address"),
        state.to_path_buf(),
    );
    config.init_ca = true;
    let server = Server::run(config).await;
    let mut client = TestClient::start(&server, vec![ResourceType::Workload], vec![]);
    assert!(client.next().await.snapshot);
    (server, client)
}

/// A directory that never goes quiet (something rewrites a file every 50 ms, less than the
/// debounce) does not hold a readiness change back: the wait is capped.
#[tokio::test]
async fn a_busy_directory_does_not_hold_readiness_back() {
    let config_dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    write(config_dir.path(), "web.yaml", &web(None));
    write(config_dir.path(), "service.yaml", SERVICE);
    let (server, mut client) = start(config_dir.path(), state.path()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let busy = config_dir.path().to_path_buf();
    // Busy for 3 s: rewrites that change the file, not the mesh.
    const WRITES: u32 = 60;
    let writer = tokio::spawn(async move {
        for n in 0..WRITES {
            write(&busy, "service.yaml", &format!("{SERVICE}# {}\n", n % 2));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    write(config_dir.path(), "web.yaml", &web(Some(false)));
    let update = client.next().await;
    let delay = start.elapsed();
    // Without a cap the delta would only come once the directory went quiet.
    let still_busy = !writer.is_finished();
    writer.await.unwrap();
    assert_eq!(status_of(&update), WorkloadStatus::NotReady);
    assert!(
        still_busy,
        "the delta came only after the directory went quiet ({delay:?})"
    );
    println!(
        "readiness change in a directory rewritten every 50 ms: {delay:?} (cap {:?})",
        weft_control::config::source::MAX_COALESCE
    );
    drop(client);
    server.stop().await;
}
