//! The real `weftctl` binary: exit codes and output of validate, and status / config dump
//! against a real control plane on loopback over TLS.

use std::{path::Path, process::Command};

use weft_control::{
    config::Source,
    server::{ControlPlane, ServerConfig},
};

const GOOD: &str = "\
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec: {serviceAccount: web, node: node-1, ips: [10.1.0.10]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, clusterIP: 10.96.0.10, ports: [{port: 80}]}
";

const BAD: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  ports:
  - {name: a, port: 80}
  - {name: b, port: 70000}
";

fn weftctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(args)
        .env_remove("WEFT_CONTROL")
        .env_remove("WEFT_CA_CERT")
        .env_remove("WEFTCTL_CERT")
        .env_remove("WEFTCTL_KEY")
        .output()
        .expect("weftctl runs");
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

#[test]
fn validate_accepts_a_good_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), GOOD).unwrap();
    let (code, out, _) = weftctl(&["validate", path(dir.path())]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        "valid: 1 file(s), 2 document(s), 2 resource(s), 0 warning(s)\n"
    );
}

#[test]
fn validate_rejects_bad_documents_with_file_doc_and_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
    std::fs::write(dir.path().join("b.yaml"), BAD).unwrap();
    let (code, out, _) = weftctl(&["validate", path(dir.path())]);
    assert_eq!(code, 1, "{out}");
    let b = dir.path().join("b.yaml");
    let b = b.display();
    assert!(
        out.contains(&format!("{b}: document 0 (0-based) (Service): metadata.name: Service shop/web is already defined in")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{b}: document 1 (0-based) (Service): spec.ports[1].port: must be 1-65535, got 70000"
        )),
        "{out}"
    );
    assert!(
        out.ends_with("the control plane would reject this configuration\n"),
        "{out}"
    );
}

#[test]
fn validate_single_files_and_missing_paths() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.txt");
    std::fs::write(&file, GOOD).unwrap();
    // A file named explicitly is read whatever its extension.
    assert_eq!(weftctl(&["validate", path(&file)]).0, 0);
    let (code, out, _) = weftctl(&["validate", "/nonexistent/weft"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("/nonexistent/weft: cannot read"), "{out}");
    // No path at all is a usage error.
    assert_eq!(weftctl(&["validate"]).0, 2);
}

/// Nodes, EndpointSlices and the services fields they serve are checked as the control
/// plane checks them.
const SERVICES: &str = "\
apiVersion: v1
kind: Node
metadata:
  name: node-1
  labels: {topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: eu-1a}
---
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec: {node: node-1, ips: [10.1.0.10], ports: {http: 8080}, ready: false, weight: 2}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec: {clusterIP: 10.96.0.20, trafficDistribution: PreferClose, ports: [{name: http, port: 80, targetPort: http}]}
";

const GOOD_SLICE: &str = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-1, namespace: shop, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
endpoints:
- addresses: [10.78.1.50]
  conditions: {ready: true}
  nodeName: node-1
ports: [{name: http, port: 8080}]
";

#[test]
fn validate_accepts_nodes_and_endpoint_slices() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), SERVICES).unwrap();
    std::fs::write(dir.path().join("slice.yaml"), GOOD_SLICE).unwrap();
    let (code, out, _) = weftctl(&["validate", path(dir.path())]);
    assert_eq!(code, 0, "{out}");
    // The workload, the service, and the workload the slice's address becomes.
    assert_eq!(
        out,
        "valid: 2 file(s), 4 document(s), 3 resource(s), 0 warning(s)\n"
    );
}

#[test]
fn validate_rejects_a_bad_endpoint_slice_with_file_doc_and_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), SERVICES).unwrap();
    let bad = GOOD_SLICE
        .replace("addresses: [10.78.1.50]", "addresses: [\"fd00::50\"]")
        .replace("port: 8080", "port: 0");
    std::fs::write(dir.path().join("slice.yaml"), bad).unwrap();
    let (code, out, _) = weftctl(&["validate", path(dir.path())]);
    assert_eq!(code, 1, "{out}");
    let slice = dir.path().join("slice.yaml");
    let slice = slice.display();
    assert!(
        out.contains(&format!(
            "{slice}: document 0 (0-based) (EndpointSlice): endpoints[0].addresses[0]: fd00::50 \
             is not an IPv4 address, as addressType says"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{slice}: document 0 (0-based) (EndpointSlice): ports[0].port: must be 1-65535, got 0"
        )),
        "{out}"
    );
    assert!(out.contains("invalid: 2 error(s), 0 warning(s)"), "{out}");
}

#[test]
fn validate_rejects_a_bad_node_with_file_doc_and_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), SERVICES).unwrap();
    std::fs::write(
        dir.path().join("nodes.yaml"),
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n  namespace: shop\n  labels: {topology.kubernetes.io/zone: \"eu 1b\"}\n",
    )
    .unwrap();
    let (code, out, _) = weftctl(&["validate", path(dir.path())]);
    assert_eq!(code, 1, "{out}");
    let nodes = dir.path().join("nodes.yaml");
    let nodes = nodes.display();
    let mesh = dir.path().join("mesh.yaml");
    for expected in [
        format!(
            "{nodes}: document 0 (0-based) (Node): metadata.namespace: a Node belongs to no namespace"
        ),
        format!(
            "{nodes}: document 0 (0-based) (Node): metadata.labels.topology.kubernetes.io/zone: label value \"eu 1b\" is invalid"
        ),
        format!(
            "{nodes}: document 0 (0-based) (Node): metadata.name: Node node-1 is already defined in {}: document 0 (0-based)",
            mesh.display()
        ),
    ] {
        assert!(out.contains(&expected), "{expected}\n---\n{out}");
    }
}

/// Every kind of the edge gateway, valid together (the control plane's test fixture).
const EDGE: &str = include_str!("../../control/tests/edge/edge.yaml");

const BAD_EDGE: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: demo}
spec:
  gatewayClassName: weft
  listeners: [{name: https, port: 8443, protocol: HTTPS}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: demo, namespace: demo}
spec:
  parentRefs: [{name: edge}]
  rules:
  - filters:
    - {type: URLRewrite, urlRewrite: {hostname: a.example.com}}
    - {type: RequestRedirect, requestRedirect: {scheme: https}}
---
apiVersion: weft.dev/v1alpha1
kind: ApiPolicy
metadata: {name: demo, namespace: demo}
spec:
  targetRefs: [{kind: HTTPRoute, name: demo}]
  apiKey: {}
  plans: [platinum]
---
apiVersion: weft.dev/v1alpha1
kind: Listener
metadata: {name: old, namespace: demo}
spec: {port: 80, protocol: HTTP}
";

#[test]
fn validate_accepts_every_edge_gateway_kind() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), GOOD).unwrap();
    std::fs::write(dir.path().join("edge.yaml"), EDGE).unwrap();
    let (code, out, _) = weftctl(&["validate", path(dir.path())]);
    assert_eq!(code, 0, "{out}");
    // 12 edge documents: 2 listeners, 2 API routes, 2 services, a consumer and a plan.
    assert_eq!(
        out,
        "valid: 2 file(s), 14 document(s), 10 resource(s), 0 warning(s)\n"
    );
}

#[test]
fn validate_rejects_broken_edge_documents_with_file_doc_and_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("edge.yaml"), BAD_EDGE).unwrap();
    let (code, out, _) = weftctl(&["validate", path(dir.path())]);
    assert_eq!(code, 1, "{out}");
    let file = dir.path().join("edge.yaml");
    let file = file.display();
    for line in [
        format!(
            "{file}: document 0 (0-based) (Gateway): spec.listeners[0].tls: required for \
             HTTPS: give mode Terminate and certificateRefs"
        ),
        format!(
            "{file}: document 1 (0-based) (HTTPRoute): spec.rules[0].filters: RequestRedirect \
             and URLRewrite cannot be used together"
        ),
        format!(
            "{file}: document 2 (0-based) (ApiPolicy): spec.plans[0]: no Plan \"platinum\" is \
             defined in namespace \"demo\""
        ),
        format!(
            "{file}: document 3 (0-based) (Listener): kind: the weft.dev Listener kind is gone: \
             write a Gateway"
        ),
    ] {
        assert!(out.contains(&line), "missing {line:?} in:\n{out}");
    }
    assert!(
        out.ends_with("the control plane would reject this configuration\n"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_config_dump_against_a_real_control_plane() {
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("mesh.yaml"), GOOD).unwrap();
    let mut server_config = ServerConfig::new(
        Source::Directory(config.path().to_path_buf()),
        "127.0.0.1:0".parse().unwrap(),
        state.path().to_path_buf(),
    );
    server_config.init_ca = true;
    let cp = ControlPlane::new(server_config).await.unwrap();
    // The operator credential, as `weft-control operator-credential --name admin` writes it.
    let credential = tempfile::tempdir().unwrap();
    let files = weft_control::node::write_credential(
        &weft_control::ca::CertificateAuthority::load(state.path()).unwrap(),
        "spiffe://cluster.local/operator/admin",
        "admin",
        std::time::Duration::from_secs(3600),
        credential.path(),
        ("operator-cert.pem", "operator-key.pem"),
    )
    .unwrap();
    let (cert, key) = (path(&files.cert).to_string(), path(&files.key).to_string());
    let control = format!("127.0.0.1:{}", cp.local_addr().unwrap().port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cp.run(async {
        let _ = stopped.await;
    }));
    let state_ca = state.path().join("root-cert.pem");
    let ca = path(&state_ca).to_string();

    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            weftctl(&args)
        })
    };
    let base = |cmd: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--control".into(),
            control.clone(),
            "--ca-cert".into(),
            ca.clone(),
            "--cert".into(),
            cert.clone(),
            "--key".into(),
            key.clone(),
        ]);
        v
    };

    // Without the operator credential: UNAUTHENTICATED, nothing shown, and what to do.
    for cmd in [&["status"][..], &["config", "dump", "--node", "node-1"]] {
        let mut args = base(cmd);
        args.truncate(args.len() - 4);
        let (code, out, err) = run(args).await.unwrap();
        assert_eq!(code, 2, "{out}");
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains("Status needs a credential")
                || err.contains("ConfigDump needs a credential"),
            "{err}"
        );
        assert!(
            err.contains("operator-credential") && err.contains("--cert"),
            "{err}"
        );
    }

    let (code, out, err) = run(base(&["status"])).await.unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration version 1"), "{out}");

    // The credential from the environment, as the README sets it up.
    let (c, k, ctl) = (cert.clone(), key.clone(), control.clone());
    let by_env = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_weftctl"))
            .args(["status", "--control", &ctl, "--ca-cert"])
            .arg(path(&state_ca))
            .env("WEFTCTL_CERT", c)
            .env("WEFTCTL_KEY", k)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        by_env.status.success(),
        "{}",
        String::from_utf8_lossy(&by_env.stderr)
    );
    assert!(out.contains("no clients connected"), "{out}");

    let (code, out, err) = run(base(&["status", "-o", "json"])).await.unwrap();
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["configVersion"], "1");
    assert_eq!(json["lastReloadRejected"], false);

    let (code, out, err) = run(base(&[
        "config", "dump", "--node", "node-1", "--type", "workload", "-o", "json",
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let snapshot = &json["snapshots"][0];
    assert_eq!(snapshot["resourceType"], "RESOURCE_TYPE_WORKLOAD");
    assert_eq!(snapshot["resources"][0]["workload"]["ips"][0], "10.1.0.10");

    let (code, out, err) = run(base(&["config", "dump", "--node", "node-1"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("name: shop/web"), "{out}");

    // A wrong CA is a clear connection error, exit 2.
    let other = tempfile::tempdir().unwrap();
    weft_control::ca::CertificateAuthority::load_or_initialize(other.path()).unwrap();
    let bogus_ca = path(&other.path().join("root-cert.pem")).to_string();
    let (code, _, err) = run(vec![
        "status".into(),
        "--control".into(),
        control.clone(),
        "--ca-cert".into(),
        bogus_ca,
    ])
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(err.contains("cannot connect to the control plane"), "{err}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
