//! `--source kubernetes` without a reachable API server fails at once with one line that
//! names the server and the way out. (With one, the watchers start; no API server runs in
//! these tests, see the README.)

use std::{process::Command, time::Duration};

use weft_control::config::kubernetes::{KubernetesError, KubernetesOptions, KubernetesSource};

/// An address nothing listens on: a port that was just free.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    listener.local_addr().expect("has an address").port()
}

#[tokio::test]
async fn an_unreachable_api_server_is_one_clear_error() {
    let port = closed_port();
    let config = kube::Config::new(format!("https://127.0.0.1:{port}").parse().unwrap());
    let options = KubernetesOptions {
        connect_timeout: Duration::from_secs(5),
        ..KubernetesOptions::default()
    };
    let err = KubernetesSource::connect_with(config, options)
        .await
        .unwrap_err();
    assert!(
        matches!(err, KubernetesError::Unreachable { .. }),
        "{err:?}"
    );
    let line = err.to_string();
    assert!(
        line.starts_with(&format!(
            "cannot reach the Kubernetes API server at https://127.0.0.1:{port}/: "
        )),
        "{line}"
    );
    assert!(
        line.ends_with("; run with --source files --config-dir DIR for standalone mode"),
        "{line}"
    );
    assert!(!line.contains('\n'), "{line}");
}

#[test]
fn the_binary_says_so_and_exits() {
    let port = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             users:\n- name: test\n  user:\n    token: not-a-real-token\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weft-control"))
        .args(["--source", "kubernetes", "--state-dir"])
        .arg(dir.path().join("state"))
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        // anyhow adds a backtrace when these ask for one.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "Error: cannot reach the Kubernetes API server at https://127.0.0.1:{port}/: "
        )),
        "{stderr}"
    );
    assert!(
        lines[0].contains("--source files --config-dir DIR"),
        "{stderr}"
    );
}

#[test]
fn files_stay_the_default_and_need_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weft-control"))
        .arg("--state-dir")
        .arg(dir.path())
        .env_remove("WEFT_CONFIG_DIR")
        .env_remove("WEFT_SOURCE")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--config-dir is required with --source files"),
        "{stderr}"
    );
}
