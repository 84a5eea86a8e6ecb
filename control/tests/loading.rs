//! How a configuration directory is read: which files count, and metrics of a running
//! control plane.

mod support;

use std::time::Duration;

use weft_control::{
    config::{Source, load_paths},
    server::{ControlPlane, ServerConfig},
};

const SERVICE: &str =
    "apiVersion: v1\nkind: Service\nmetadata: {name: NAME}\nspec: {ports: [{port: 80}]}\n";

#[test]
fn reads_yaml_recursively_and_skips_hidden_and_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("sub")).unwrap();
    std::fs::create_dir_all(p.join("..2026_01_01")).unwrap();
    std::fs::write(p.join("a.yaml"), SERVICE.replace("NAME", "a")).unwrap();
    std::fs::write(p.join("sub/b.yml"), SERVICE.replace("NAME", "b")).unwrap();
    // Not YAML by name, an editor's swap file, and a ConfigMap's hidden data directory.
    std::fs::write(p.join("notes.txt"), "not: [yaml").unwrap();
    std::fs::write(p.join(".a.yaml.swp"), "not: [yaml").unwrap();
    std::fs::write(p.join("..2026_01_01/a.yaml"), SERVICE.replace("NAME", "a")).unwrap();
    let loaded = load_paths(&[p.to_path_buf()]);
    assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    assert_eq!(
        (loaded.files, loaded.documents, loaded.resources.len()),
        (2, 2, 2)
    );
}

#[tokio::test]
async fn serves_prometheus_metrics() {
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("a.yaml"), SERVICE.replace("NAME", "a")).unwrap();
    let mut sc = ServerConfig::new(
        Source::Directory(config.path().to_path_buf()),
        "127.0.0.1:0".parse().unwrap(),
        state.path().to_path_buf(),
    );
    sc.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    sc.debounce = Duration::from_millis(50);
    sc.init_ca = true;
    let cp = ControlPlane::new(sc).await.unwrap();
    let metrics = cp.metrics_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cp.run(async {
        let _ = stopped.await;
    }));

    let body = support::get_metrics(metrics).await;
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("weft_control_config_version 1"), "{body}");
    assert!(
        body.contains("weft_control_connected_clients{kind=\"agent\"} 0"),
        "{body}"
    );

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
