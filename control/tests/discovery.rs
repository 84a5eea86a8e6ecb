//! The discovery protocol end to end: a real control plane and a real client on loopback,
//! over real TLS.

mod support;

use std::time::Duration;

use support::*;
use weft_proto::discovery::v1::{ResourceType, StatusRequest};

const TYPES: [ResourceType; 2] = [ResourceType::Workload, ResourceType::Service];

#[tokio::test]
async fn snapshot_then_deltas_on_file_changes() {
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    write(config.path(), "mesh.yaml", WORKLOADS);
    let server = Server::start(config.path(), state.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut client = TestClient::start(&server, TYPES.to_vec(), vec![]);

    let w = client.next().await;
    assert_eq!(
        (w.resource_type, w.version, w.snapshot),
        (ResourceType::Workload, 1, true)
    );
    assert_eq!(names(&w), ["shop/web-0"]);
    let s = client.next().await;
    assert_eq!((s.resource_type, s.snapshot), (ResourceType::Service, true));
    assert_eq!(names(&s), ["shop/web"]);

    // A new workload: a Workload delta, and a Service delta because web now selects it.
    write(config.path(), "more.yaml", MORE);
    let w = client.next().await;
    assert_eq!(
        (w.resource_type, w.version, w.snapshot),
        (ResourceType::Workload, 2, false)
    );
    assert_eq!(names(&w), ["shop/web-1"]);
    assert!(w.removed.is_empty());
    let s = client.next().await;
    assert_eq!(
        (s.resource_type, s.version, s.snapshot),
        (ResourceType::Service, 2, false)
    );
    let Some(weft_proto::discovery::v1::resource::Kind::Service(svc)) = &s.resources[0].kind else {
        panic!("not a service: {s:?}");
    };
    assert_eq!(svc.workload_uids, ["shop/web-0", "shop/web-1"]);

    // Removing it again: the removal is a delta of names.
    std::fs::remove_file(config.path().join("more.yaml")).unwrap();
    let w = client.next().await;
    assert_eq!((w.version, w.snapshot), (3, false));
    assert_eq!(w.removed, ["shop/web-1"]);
    assert!(w.resources.is_empty());
    let s = client.next().await;
    assert_eq!(s.resource_type, ResourceType::Service);

    assert_eq!(client.state.version(ResourceType::Workload), Some(3));
    assert!(client.state.is_synced());
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn acks_and_nacks_are_recorded_in_status() {
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    write(config.path(), "mesh.yaml", WORKLOADS);
    let server = Server::start(config.path(), state.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut client = TestClient::start(&server, TYPES.to_vec(), vec![ResourceType::Service]);
    client.next().await;
    client.next().await;

    // The answers travel asynchronously; poll until the server has both.
    let mut admin = server.admin().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
        assert_eq!(status.config_version, 1);
        let c = &status.clients[0];
        assert_eq!(
            (c.name.as_str(), c.node.as_str(), c.client_version.as_str()),
            ("agent-1", "node-1", "test")
        );
        let workload = c
            .types
            .iter()
            .find(|t| t.resource_type() == ResourceType::Workload)
            .unwrap();
        let service = c
            .types
            .iter()
            .find(|t| t.resource_type() == ResourceType::Service)
            .unwrap();
        if let (1, Some(nack)) = (workload.last_acked_version, &service.last_nack) {
            assert_eq!(nack.version, 1);
            assert_eq!(nack.resource_name, "some/resource");
            assert!(nack.reason.contains("test says no"));
            assert_eq!(service.last_acked_version, 0);
            assert_eq!(service.last_sent_version, 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never showed the ACK and NACK"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client kept no Service version, and the server keeps sending.
    assert_eq!(client.state.version(ResourceType::Service), None);
    write(config.path(), "more.yaml", MORE);
    assert_eq!(client.next().await.version, 2);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn a_bad_document_keeps_the_last_good_config() {
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    write(config.path(), "mesh.yaml", WORKLOADS);
    let server = Server::start(config.path(), state.path(), "127.0.0.1:0".parse().unwrap()).await;
    let mut client = TestClient::start(&server, TYPES.to_vec(), vec![]);
    client.next().await;
    client.next().await;

    // A valid document next to an invalid one: the whole new configuration is refused.
    write(
        config.path(),
        "more.yaml",
        &format!(
            "{MORE}---\napiVersion: v1\nkind: Service\nmetadata: {{name: bad}}\nspec: {{ports: [{{port: 70000}}]}}\n"
        ),
    );
    client.expect_nothing(Duration::from_millis(800)).await;
    let status = server
        .admin()
        .await
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.last_reload_rejected);
    assert_eq!(status.config_version, 1);
    assert!(
        status
            .config_problems
            .iter()
            .any(|p| p.contains("more.yaml: document 1 (0-based)")
                && p.contains("spec.ports[0].port: must be 1-65535, got 70000")),
        "{:?}",
        status.config_problems
    );

    // Fixing it publishes the change.
    write(config.path(), "more.yaml", MORE);
    let w = client.next().await;
    assert_eq!((w.version, names(&w)), (2, vec!["shop/web-1".to_string()]));
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn client_reconnects_and_resyncs_after_a_restart() {
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    write(config.path(), "mesh.yaml", WORKLOADS);
    let server = Server::start(config.path(), state.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = server.addr;
    let mut client = TestClient::start(&server, TYPES.to_vec(), vec![]);
    client.next().await;
    client.next().await;
    let mut watch = client.state.watch();

    server.stop().await;
    tokio::time::timeout(WAIT, watch.wait_for(|s| !s.connected))
        .await
        .unwrap()
        .unwrap();

    // While it is down the configuration changes; the restarted server (same state
    // directory, so the same root CA) starts over with snapshots.
    write(config.path(), "more.yaml", MORE);
    let server = Server::start(config.path(), state.path(), addr).await;
    let w = client.next().await;
    assert_eq!(
        (w.resource_type, w.snapshot),
        (ResourceType::Workload, true)
    );
    assert_eq!(names(&w), ["shop/web-0", "shop/web-1"]);
    let s = client.next().await;
    assert!(s.snapshot);
    tokio::time::timeout(WAIT, watch.wait_for(|s| s.synced))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(client.state.status().connects, 2);
    drop(client);
    server.stop().await;
}
