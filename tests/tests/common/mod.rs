//! Helpers shared by the scenarios that run real agents.

#![allow(dead_code, reason = "each test crate uses a different subset")]

pub mod pki;

use std::time::{Duration, Instant};

use weft_tests::scenario::TcpCounters;
use weft_tests::testbed::{AgentConfig, Config, Testbed, TestbedGuard, control};

/// How long counters get to show a connection: bytes may be counted when it closes.
pub const COUNTER_WAIT: Duration = Duration::from_secs(10);

/// Privileged tests fail, never skip, without root.
pub fn require_root() {
    assert!(
        weft_tests::is_root(),
        "the end-to-end tests need root (namespaces, cgroups, eBPF); run them with `cargo xtask test`"
    );
}

/// The agent under test ($WEFT_AGENT_BIN or target/debug/weft-agent); fails if missing.
pub fn agent() -> AgentConfig {
    let agent = AgentConfig::from_env();
    assert!(
        agent.bin.is_file(),
        "no agent binary at {}: build it (`cargo build -p weft-agent`) or set WEFT_AGENT_BIN",
        agent.bin.display()
    );
    agent
}

/// A testbed with one agent per node, every agent ready.
pub fn mesh(name: &str, nodes: u32, pods: u32) -> TestbedGuard {
    require_root();
    let config = Config::named(name).size(nodes, pods).agent(agent());
    TestbedGuard::up(&config).unwrap_or_else(|e| panic!("bringing {name} up: {e}"))
}

/// The counters `node`'s agent reports as the source of `src` -> `dst` connections.
pub fn source_counters(tb: &Testbed, node: &str, src: &str, dst: &str) -> TcpCounters {
    let m = tb
        .metrics(node)
        .unwrap_or_else(|e| panic!("scraping {node}: {e}"));
    TcpCounters::select(
        &m,
        &[
            ("reporter", "source"),
            ("source_workload", src),
            ("destination_workload", dst),
        ],
    )
}

/// Polls `node`'s source counters for `src` -> `dst` until what grew since `before`
/// satisfies `done`, and returns the growth; fails after [`COUNTER_WAIT`] with what it saw.
pub fn wait_for_growth(
    tb: &Testbed,
    node: &str,
    src: &str,
    dst: &str,
    before: &TcpCounters,
    what: &str,
    done: impl Fn(&TcpCounters) -> bool,
) -> TcpCounters {
    let deadline = Instant::now() + COUNTER_WAIT;
    loop {
        let grown = source_counters(tb, node, src, dst).since(before);
        if done(&grown) {
            return grown;
        }
        if Instant::now() >= deadline {
            let text = tb.metrics_text(node).unwrap_or_default();
            let istio: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("istio_tcp"))
                .collect();
            panic!(
                "{node}'s agent does not show {what} for {src} -> {dst} after {COUNTER_WAIT:?}: \
                 grew by {grown:?}; its istio_tcp samples:\n{}",
                istio.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A connection was opened and bytes went both ways.
pub fn one_connection_with_bytes(c: &TcpCounters) -> bool {
    c.opened >= 1.0 && c.sent > 0.0 && c.received > 0.0
}

/// Polls `check` every 200 ms for up to `limit`, panicking with `what` if it never holds.
pub fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The agent's `/config_dump` on `node`, as JSON.
pub fn config_dump(tb: &Testbed, node: &str) -> serde_json::Value {
    let response = tb.config_dump(node).expect("fetching /config_dump");
    assert_eq!(response.status, 200, "{}", response.body);
    serde_json::from_str(&response.body).expect("/config_dump is JSON")
}

/// Sets `tier: web` on exactly `members` (and on no other pod), rewrites the testbed's
/// workload file, and waits until node-1's agent has the new labels.
pub fn label_web(tb: &Testbed, members: &[&str]) {
    let pods: Vec<_> = tb
        .pods()
        .iter()
        .cloned()
        .map(|mut p| {
            if members.contains(&p.name.as_str()) {
                p.labels.insert("tier".into(), "web".into());
            } else {
                p.labels.remove("tier");
            }
            p
        })
        .collect();
    let staged = tb.state_dir().join("pods.yaml.staged");
    std::fs::write(&staged, control::workload_documents(&pods, tb.unenrolled()))
        .expect("writing the workload file");
    std::fs::rename(
        &staged,
        control::config_dir(tb.state_dir()).join(control::PODS_FILE),
    )
    .expect("replacing the workload file");
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

/// Applies two Services in `ns`: `web` (VIPs `vip4` and `vip6`, port `port` to the HTTP
/// servers' port on every pod labelled `tier: web`) and `empty` (VIP `empty_vip`, selecting
/// nothing).
pub fn apply_web_services(
    tb: &Testbed,
    ns: &str,
    vip4: &str,
    vip6: &str,
    empty_vip: &str,
    port: u16,
) {
    let service = tb.state_dir().join("inputs").join("web.yaml");
    std::fs::create_dir_all(service.parent().expect("inputs has a parent"))
        .expect("creating the inputs directory");
    std::fs::write(
        &service,
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {ns}\n\
             spec:\n  selector:\n    tier: web\n  clusterIP: {vip4}\n  \
             clusterIPs: [\"{vip4}\", \"{vip6}\"]\n  ports:\n  \
             - {{name: http, port: {port}, targetPort: {}}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata:\n  name: empty\n  namespace: {ns}\n\
             spec:\n  selector:\n    tier: none\n  clusterIP: {empty_vip}\n  ports:\n  \
             - {{port: {port}}}\n",
            weft_tests::scenario::HTTP_PORT
        ),
    )
    .expect("writing the services");
    tb.apply(std::slice::from_ref(&service))
        .expect("applying the services");
}
