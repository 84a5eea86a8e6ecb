//! An emptied configuration directory (an unmounted volume) is not published: subscribers
//! keep the last configuration, and the refusal is logged and counted, unless
//! `--allow-empty-config` says an empty mesh is meant.

mod support;

use std::{path::Path, time::Duration};

use support::*;
use weft_control::{
    config::Source,
    server::{ControlPlane, ServerConfig, ServerError},
};
use weft_proto::discovery::v1::{ResourceType, StatusRequest};

const TYPES: [ResourceType; 2] = [ResourceType::Workload, ResourceType::Service];

async fn start(config: &Path, state: &Path, allow_empty: bool) -> Server {
    let mut c = ServerConfig::new(
        Source::Directory(config.to_path_buf()),
        "127.0.0.1:0".parse().expect("an address"),
        state.to_path_buf(),
    );
    c.debounce = Duration::from_millis(100);
    c.init_ca = true;
    c.allow_empty_config = allow_empty;
    c.metrics_addr = Some("127.0.0.1:0".parse().expect("an address"));
    Server::run(c).await
}

#[tokio::test]
async fn an_emptied_directory_keeps_the_last_configuration() {
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    write(config.path(), "mesh.yaml", WORKLOADS);
    let server = start(config.path(), state.path(), false).await;
    let mut client = TestClient::start(&server, TYPES.to_vec(), vec![]);
    client.next().await;
    client.next().await;

    std::fs::remove_file(config.path().join("mesh.yaml")).unwrap();
    client.expect_nothing(Duration::from_millis(800)).await;
    assert_eq!(client.state.version(ResourceType::Workload), Some(1));

    let status = server
        .admin()
        .await
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.config_version, 1);
    assert!(status.last_reload_rejected);
    assert!(
        status
            .config_problems
            .iter()
            .any(|p| p.contains("became empty") && p.contains("--allow-empty-config")),
        "{:?}",
        status.config_problems
    );
    let metrics = get_metrics(server.metrics_addr.unwrap()).await;
    assert!(
        metrics.contains("weft_control_config_reloads_total{result=\"refused_empty\"} 1"),
        "{metrics}"
    );

    // Configuration coming back is published as usual.
    write(config.path(), "more.yaml", MORE);
    let w = client.next().await;
    assert_eq!(w.version, 2);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn with_the_flag_an_emptied_directory_is_published() {
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    write(config.path(), "mesh.yaml", WORKLOADS);
    let server = start(config.path(), state.path(), true).await;
    let mut client = TestClient::start(&server, TYPES.to_vec(), vec![]);
    client.next().await;
    client.next().await;

    std::fs::remove_file(config.path().join("mesh.yaml")).unwrap();
    let w = client.next().await;
    assert_eq!((w.version, w.snapshot), (2, false));
    assert_eq!(w.removed, ["shop/web-0"]);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn an_empty_directory_at_start_needs_the_flag() {
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut c = ServerConfig::new(
        Source::Directory(config.path().to_path_buf()),
        "127.0.0.1:0".parse().unwrap(),
        state.path().to_path_buf(),
    );
    c.init_ca = true;
    let err = ControlPlane::new(c.clone())
        .await
        .err()
        .expect("an empty directory is refused at start");
    assert!(matches!(err, ServerError::EmptyConfig { .. }), "{err}");
    assert!(err.to_string().contains("--allow-empty-config"), "{err}");
    c.allow_empty_config = true;
    ControlPlane::new(c).await.expect("the flag allows it");
}
