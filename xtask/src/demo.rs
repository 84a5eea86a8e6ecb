//! `cargo xtask demo`: a two-node mesh with traffic through it, then what the agents saw,
//! in words. The mesh is left running to look around.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use weft_tests::Testbed;
use weft_tests::scenario::{self, TcpCounters};
use weft_tests::testbed::{AgentConfig, Config, topology};

use crate::{run, setup, testbed};

/// How long the agents get to show the demo's connections in their metrics.
const METRICS_WAIT: Duration = Duration::from_secs(10);

pub fn run() -> anyhow::Result<()> {
    setup::ensure()?;
    let bin = run::build_agent(false)?;
    let config = Config::named(topology::DEFAULT_NAME).agent(AgentConfig::new(bin));
    let tb = testbed::bring_up(&config)?;

    let client = "pod-1a";
    let targets = [("pod-2a", "another node"), ("pod-1b", "the same node")];
    for (pod, _) in targets {
        scenario::serve_http(&tb, pod)
            .with_context(|| format!("starting an HTTP server in {pod}"))?;
        println!(
            "{pod}: python3 -m http.server on port {}",
            scenario::HTTP_PORT
        );
    }
    for (pod, where_) in targets {
        let ip = tb.pod(pod)?.ipv4.into();
        scenario::curl_whoami(&tb, client, pod, ip)?;
        println!(
            "{client}: curl {} -> answered by {pod} ({where_})",
            scenario::url(ip, scenario::HTTP_PORT, "/whoami.txt")
        );
    }

    wait_for_metrics(&tb, client, &targets.map(|(pod, _)| pod));
    println!(
        "what the agents counted (istio_tcp_* on :{}/metrics):",
        topology::METRICS_PORT
    );
    for node in tb.nodes() {
        match scenario::describe_traffic(&tb, &node.name) {
            Ok(lines) if lines.is_empty() => println!("  {}: no connections counted", node.name),
            Ok(lines) => lines.iter().for_each(|l| println!("  {l}")),
            Err(e) => println!("  {}: could not read the metrics: {e}", node.name),
        }
    }
    println!(
        "the mesh is still up. look around: cargo xtask testbed status / cargo xtask testbed exec \
         pod-1a -- curl -s http://10.78.2.11:8000/whoami.txt; take it down: cargo xtask testbed down"
    );
    Ok(())
}

/// Waits until the source agent shows bytes for every demo connection (they may only be
/// counted once the connection closes), or gives up quietly and shows what there is.
fn wait_for_metrics(tb: &Testbed, client: &str, servers: &[&str]) {
    let Ok(node) = tb.pod(client).map(|p| p.node.clone()) else {
        return;
    };
    let deadline = Instant::now() + METRICS_WAIT;
    while Instant::now() < deadline {
        let counted = servers.iter().all(|dst| {
            tb.metrics(&node)
                .map(|m| {
                    let c = TcpCounters::select(
                        &m,
                        &[("source_workload", client), ("destination_workload", dst)],
                    );
                    c.opened >= 1.0 && c.sent + c.received > 0.0
                })
                .unwrap_or(false)
        });
        if counted {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
