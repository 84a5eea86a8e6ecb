//! Service VIPs are resolved by the source agent: a connection to a VIP and service port goes
//! to one endpoint of the service on its target port (HBONE to another node, handed over on
//! the same node), metrics name the service, and a port the service does not declare, or a
//! service with no endpoint, is refused at once. The VIPs are routed nowhere in the testbed: the agent captures the
//! connect and never dials the VIP itself. The index itself is unit-tested in
//! `mesh/src/service.rs`.

// The helpers below are not `#[test]` functions; a failed step in them should fail the test
// like any assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{config_dump, eventually, mesh};
use weft_tests::scenario;
use weft_tests::testbed::{Testbed, control};

const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";
/// A service that selects no workload.
const EMPTY_VIP: &str = "10.96.0.11";
const SERVICE_PORT: u16 = 80;

/// `curl` from `pod` with a short limit, for polling; its body when it succeeded.
fn quick_curl(tb: &Testbed, pod: &str, url: &str) -> Option<String> {
    let out = tb
        .exec(pod, &["curl", "-sS", "-g", "--max-time", "3", url])
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Adds `tier: web` to `members`, and writes the testbed's workload file again.
fn label_web(tb: &Testbed, members: &[&str]) {
    let pods: Vec<_> = tb
        .pods()
        .iter()
        .cloned()
        .map(|mut p| {
            if members.contains(&p.name.as_str()) {
                p.labels.insert("tier".into(), "web".into());
            }
            p
        })
        .collect();
    let staged = tb.state_dir().join("pods.yaml.staged");
    std::fs::write(&staged, control::workload_documents(&pods, tb.unenrolled())).unwrap();
    std::fs::rename(
        &staged,
        control::config_dir(tb.state_dir()).join(control::PODS_FILE),
    )
    .unwrap();
    eventually("the new labels at node-1", Duration::from_secs(15), || {
        config_dump(tb, "node-1")["workloads"]
            .as_array()
            .is_some_and(|ws| {
                ws.iter()
                    .filter(|w| w["labels"]["tier"].as_str() == Some("web"))
                    .count()
                    == members.len()
            })
    });
}

#[test]
fn a_vip_reaches_an_endpoint_on_either_node_and_an_undeclared_port_is_refused() {
    let tb = mesh("weft-e2e-svc-vip", 2, 2);
    // The client is pod-1a; one endpoint shares its node, the other is across.
    let _same = scenario::serve_http(&tb, "pod-1b").unwrap();
    let _remote = scenario::serve_http(&tb, "pod-2a").unwrap();
    label_web(&tb, &["pod-1b", "pod-2a"]);
    let ns = tb.pod("pod-1a").unwrap().namespace.clone();

    let service = tb.state_dir().join("inputs").join("web.yaml");
    std::fs::create_dir_all(service.parent().unwrap()).unwrap();
    std::fs::write(
        &service,
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {ns}\n\
             spec:\n  selector:\n    tier: web\n  clusterIP: {VIP4}\n  \
             clusterIPs: [\"{VIP4}\", \"{VIP6}\"]\n  ports:\n  \
             - {{name: http, port: {SERVICE_PORT}, targetPort: {}}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata:\n  name: empty\n  namespace: {ns}\n\
             spec:\n  selector:\n    tier: none\n  clusterIP: {EMPTY_VIP}\n  ports:\n  \
             - {{port: {SERVICE_PORT}}}\n",
            scenario::HTTP_PORT
        ),
    )
    .unwrap();
    tb.apply(std::slice::from_ref(&service)).unwrap();

    // Round robin over two endpoints: both answer within a few connections, on each family.
    for vip in [VIP4, VIP6] {
        let url = scenario::url(vip.parse().unwrap(), SERVICE_PORT, "/whoami.txt");
        let mut answered = BTreeSet::new();
        eventually(
            &format!("both endpoints to answer on {url}"),
            Duration::from_secs(30),
            || {
                if let Some(body) = quick_curl(&tb, "pod-1a", &url) {
                    assert!(
                        body == "pod-1b" || body == "pod-2a",
                        "{url} answered by something else: {body:?}"
                    );
                    answered.insert(body);
                }
                answered.len() == 2
            },
        );
    }

    // The source agent names the service, and the endpoint it chose, in its metrics.
    let host = format!("web.{ns}.svc.cluster.local");
    let metrics = tb.metrics("node-1").unwrap();
    for endpoint in ["pod-1b", "pod-2a"] {
        let opened = metrics.sum(
            scenario::CONNECTIONS_OPENED,
            &[
                ("reporter", "source"),
                ("destination_service", host.as_str()),
                ("destination_workload", endpoint),
                ("source_workload", "pod-1a"),
            ],
        );
        assert!(
            opened >= 1.0,
            "{} connections to {host} via {endpoint} at node-1: {opened}\n{}",
            scenario::CONNECTIONS_OPENED,
            tb.metrics_text("node-1").unwrap_or_default()
        );
    }

    // A port the service does not declare, or a service with no endpoint: refused at once,
    // not left to time out.
    for (vip, port, reason) in [
        (VIP4, 81, "service_port_unknown"),
        (EMPTY_VIP, SERVICE_PORT, "service_no_endpoints"),
    ] {
        let url = scenario::url(vip.parse::<IpAddr>().unwrap(), port, "/");
        let started = Instant::now();
        let out = scenario::curl(&tb, "pod-1a", &url).unwrap();
        let took = started.elapsed();
        assert!(!out.status.success(), "{url} answered");
        assert!(
            took < Duration::from_secs(2),
            "refusing {url} took {took:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let denied = tb
            .metrics("node-1")
            .unwrap()
            .sum("weft_connections_denied_total", &[("reason", reason)]);
        assert_eq!(denied, 1.0, "{reason} refusals counted at node-1");
    }
}
