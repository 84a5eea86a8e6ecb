//! The control plane as the agents' source of truth: configuration changes reach every agent
//! without a restart, a bad document changes nothing, and a control plane restart while pods
//! send traffic fails no connection (agents keep their last good state and resynchronise).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions; a failure is a test failure"
)]

mod common;

use std::time::Duration;

use common::{config_dump, eventually, mesh, source_counters, wait_for_growth};
use weft_tests::scenario;
use weft_tests::testbed::Testbed;

fn workload_names(tb: &Testbed, node: &str) -> Vec<String> {
    config_dump(tb, node)["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_owned())
        .collect()
}

fn workload_version(tb: &Testbed, node: &str) -> u64 {
    config_dump(tb, node)["control"]["versions"]["RESOURCE_TYPE_WORKLOAD"]
        .as_u64()
        .unwrap()
}

const OUTSIDE_DB: &str = "\
apiVersion: weft.dev/v1alpha1
kind: Workload
metadata:
  name: outside-db
  namespace: external
  labels: {app: legacy-db}
spec:
  serviceAccount: db
  node: node-9
  ips: [\"10.99.9.9\"]
";

#[test]
fn configuration_changes_reach_every_agent_without_a_restart() {
    let tb = mesh("weft-e2e-cfg", 2, 1);
    let pids: Vec<_> = tb.nodes().iter().map(|n| n.agent.unwrap().pid).collect();
    let dir = tb.state_dir().join("inputs");
    std::fs::create_dir_all(&dir).unwrap();

    let good = dir.join("outside.yaml");
    std::fs::write(&good, OUTSIDE_DB).unwrap();
    tb.apply(std::slice::from_ref(&good)).unwrap();
    for node in ["node-1", "node-2"] {
        eventually(
            "the new workload at every agent",
            Duration::from_secs(10),
            || workload_names(&tb, node).contains(&"outside-db".to_owned()),
        );
    }
    let version = workload_version(&tb, "node-1");

    // A bad document (an IP another workload has) rejects the whole new configuration.
    let bad = dir.join("clash.yaml");
    std::fs::write(
        &bad,
        OUTSIDE_DB
            .replace("outside-db", "clash")
            .replace("10.99.9.9", "10.78.2.11"),
    )
    .unwrap();
    tb.apply(std::slice::from_ref(&bad)).unwrap();
    let log = tb.state_dir().join("control/control.log");
    eventually(
        "the control plane to report the bad document",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.contains("clash.yaml: document 0") && text.contains("spec.ips[0]")
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    for node in ["node-1", "node-2"] {
        assert_eq!(
            workload_version(&tb, node),
            version,
            "{node} saw a new version"
        );
        assert!(!workload_names(&tb, node).contains(&"clash".to_owned()));
    }

    // Removing both files: the clash is gone and so is the outside workload.
    tb.delete(&[bad, good]).unwrap();
    for node in ["node-1", "node-2"] {
        eventually("the workload to go", Duration::from_secs(10), || {
            !workload_names(&tb, node).contains(&"outside-db".to_owned())
        });
        assert!(workload_version(&tb, node) > version);
    }
    let after: Vec<_> = tb.nodes().iter().map(|n| n.agent.unwrap().pid).collect();
    assert_eq!(pids, after, "no agent restarted");
    assert!(
        tb.delete(&[dir.join("outside.yaml")])
            .unwrap_err()
            .to_string()
            .contains("not applied")
    );
}

#[test]
fn control_plane_restart_under_traffic_fails_no_connection() {
    const REQUESTS: u32 = 60;
    let mut tb = mesh("weft-e2e-cprs", 2, 1);
    scenario::serve_http(&tb, "pod-2a").unwrap();
    let before = source_counters(&tb, "node-1", "pod-1a", "pod-2a");
    let ip = tb.pod("pod-2a").unwrap().ipv4;
    let script = format!(
        "ok=0; fails=0; for i in $(seq 1 {REQUESTS}); do \
         if curl -sf -o /dev/null --max-time 5 http://{ip}:8000/whoami.txt; \
         then ok=$((ok+1)); else fails=$((fails+1)); fi; sleep 0.1; done; \
         echo \"ok=$ok fails=$fails\""
    );
    let traffic = tb.spawn("pod-1a", &["sh", "-c", &script]).unwrap();

    std::thread::sleep(Duration::from_millis(800));
    tb.stop_control().unwrap();
    eventually("node-1's agent to notice", Duration::from_secs(10), || {
        !config_dump(&tb, "node-1")["control"]["connected"]
            .as_bool()
            .unwrap()
    });
    // Still ready and still holding its workloads while the control plane is away.
    tb.wait_ready("node-1").unwrap();
    assert!(workload_names(&tb, "node-1").contains(&"pod-2a".to_owned()));
    std::thread::sleep(Duration::from_millis(1500));
    tb.start_control().unwrap();
    for node in ["node-1", "node-2"] {
        eventually(
            "the agent to resynchronise",
            Duration::from_secs(30),
            || {
                let control = &config_dump(&tb, node)["control"];
                control["connected"].as_bool().unwrap()
                    && control["synced"].as_bool().unwrap()
                    && control["connects"].as_u64().unwrap() >= 2
            },
        );
    }

    eventually(
        "the traffic loop to finish",
        Duration::from_secs(60),
        || !traffic.is_alive(),
    );
    let out = std::fs::read_to_string(&traffic.log).unwrap();
    assert!(
        out.contains(&format!("ok={REQUESTS} fails=0")),
        "connections failed across the restart: {out}"
    );
    // And they went through the agent.
    wait_for_growth(
        &tb,
        "node-1",
        "pod-1a",
        "pod-2a",
        &before,
        "every request counted",
        |c| c.opened >= f64::from(REQUESTS),
    );
}

/// weftctl against the testbed's control plane: refused without the operator credential
/// the testbed issues, answered with it.
#[test]
fn weftctl_needs_the_operator_credential() {
    let tb = mesh("weft-e2e-ctl-op", 1, 1);
    let node = &tb.nodes()[0];
    let weftctl = tb
        .agent_config()
        .unwrap()
        .control_bin()
        .with_file_name("weftctl");
    let status = |credential: bool| {
        let mut command = std::process::Command::new("nsenter");
        command
            .arg(format!("--net={}", node.netns_path.display()))
            .arg(&weftctl)
            .args(["status", "--control", &tb.control_url(), "--ca-cert"])
            .arg(tb.control_ca())
            .env_remove("WEFTCTL_CERT")
            .env_remove("WEFTCTL_KEY");
        if credential {
            command
                .arg("--cert")
                .arg(tb.operator_cert())
                .arg("--key")
                .arg(tb.operator_key());
        }
        command.output().unwrap()
    };
    let refused = status(false);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Status needs a credential"), "{stderr}");
    assert!(refused.stdout.is_empty());

    let answered = status(true);
    let stdout = String::from_utf8_lossy(&answered.stdout);
    assert!(
        answered.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&answered.stderr)
    );
    assert!(stdout.contains(&node.name), "the agent is listed: {stdout}");
}
