//! `cargo xtask demo`: a two-node mesh with traffic through it, then what the agents saw,
//! in words; then the edge gateway publishing a sample API at `/demo/` (backed by pod-2a's
//! server through a mesh Service), with an API key on a plan of 5 requests per second, and
//! the curl lines that show a 200, a 401 and a 429, run once; then the same Service called by
//! its DNS name. The mesh is left running to look around.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use weft_tests::Testbed;
use weft_tests::edge::{self, Client};
use weft_tests::scenario::{self, TcpCounters};
use weft_tests::testbed::{AgentConfig, Config, topology};

use crate::{run, setup, testbed};

/// How long the agents get to show the demo's connections in their metrics.
const METRICS_WAIT: Duration = Duration::from_secs(10);
/// The demo API's consumer key and its plan's limit.
const DEMO_KEY: &str = "demo-key";
const DEMO_PER_SECOND: u32 = 5;
/// The VIP of the Service in front of pod-2a's server.
const DEMO_VIP: &str = "10.96.0.80";
/// The nameserver in the client pod's resolv.conf: routed nowhere, its queries are captured.
const DEMO_NAMESERVER: &str = "10.96.0.53";
/// The file the demo's gateway documents are written to in the control plane's directory.
const DEMO_FILE: &str = "demo-api.yaml";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The testbed's name (the mesh is left up under it).
    #[arg(long, default_value = topology::DEFAULT_NAME)]
    pub name: String,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    topology::validate_name(&args.name)?;
    setup::ensure()?;
    let bin = run::build_agent(false)?;
    run::build_gateway(false)?;
    let config = Config::named(&args.name)
        .agent(AgentConfig::new(bin))
        .with_gateway();
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
    let flag = name_flag(&args.name);
    publish_api(&tb, client, &flag)?;
    by_name(&tb, client)?;
    println!(
        "the mesh is still up. look around: cargo xtask testbed status{flag} / cargo xtask testbed \
         exec{flag} pod-1a -- curl -s http://10.78.2.11:8000/whoami.txt; take it down: cargo xtask \
         testbed down{flag}"
    );
    Ok(())
}

/// Calls the demo Service by its name from `client`: the pod's resolv.conf names a
/// nameserver that nothing answers, the kernel sends the query to the agent's DNS proxy in
/// the pod, which answers with the Service's VIP; the agent then resolves the VIP to pod-2a.
fn by_name(tb: &Testbed, client: &str) -> anyhow::Result<()> {
    let ns = edge::NAMESPACE;
    tb.write_pod_resolv_conf(
        client,
        &format!(
            "nameserver {DEMO_NAMESERVER}\nsearch {ns}.svc.cluster.local svc.cluster.local \
             cluster.local\noptions ndots:5 timeout:2 attempts:1\n"
        ),
    )?;
    let url = format!(
        "http://demo.{ns}.svc.cluster.local:{}/whoami.txt",
        scenario::HTTP_PORT
    );
    let out = tb.exec_resolving(client, &["curl", "-sS", "--max-time", "5", &url])?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let error = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if out.status.success() {
        println!(
            "{client}: curl {url} -> {answer} (the name answered by the agent's DNS proxy in \
             {client} with the VIP {DEMO_VIP}, the VIP resolved to pod-2a by the agent)"
        );
    } else {
        println!("{client}: curl {url} failed: {error} (see the agents' logs)");
    }
    Ok(())
}

/// Publishes the demo API through the gateway, prints the curl lines that show each answer
/// and runs them once.
fn publish_api(tb: &Testbed, client: &str, flag: &str) -> anyhow::Result<()> {
    tb.apply_yaml(
        DEMO_FILE,
        &edge::demo_api_documents(DEMO_KEY, DEMO_PER_SECOND, DEMO_VIP)?,
    )?;
    let url = edge::gateway_url(tb, "/demo/whoami.txt")?;
    println!(
        "gateway {}: publishes {url} (HTTPRoute demo -> Service demo -> pod-2a over HBONE), \
         API key required, consumer key {DEMO_KEY} on a plan of {DEMO_PER_SECOND} requests per \
         second; documents in {}",
        tb.gateway_ip()?,
        tb.config_dir().join(DEMO_FILE).display()
    );
    let with_key = format!("-H 'x-api-key: {DEMO_KEY}' ");
    let code = "curl -s -o /dev/null -w '%{http_code}\\n'";
    // What each line shows, its command, and whether its codes are the ones it is for.
    type Expect = fn(&[String]) -> bool;
    let lines: [(&str, String, Expect); 3] = [
        ("200 (the key)", format!("{code} {with_key}{url}"), |c| {
            c.iter().all(|c| c == "200")
        }),
        ("401 (no key)", format!("{code} {url}"), |c| {
            c.iter().all(|c| c == "401")
        }),
        (
            "429 after 5 (a burst of 10)",
            format!("for i in $(seq 10); do {code} {with_key}{url}; done"),
            |c| c.iter().any(|c| c == "429"),
        ),
    ];
    edge::curl_until(
        tb,
        Client::Pod(client),
        &["-H", &format!("x-api-key: {DEMO_KEY}"), &url],
        200,
    )
    .context("the demo API did not answer 200 through the gateway")?;
    // A fresh second for the burst.
    std::thread::sleep(Duration::from_millis(1100));
    for (what, line, expected) in &lines {
        println!("  {what}: cargo xtask testbed exec{flag} {client} -- sh -c \"{line}\"");
        let out = tb.exec(client, &["sh", "-c", line])?;
        let codes: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let note = if expected(&codes) {
            ""
        } else {
            "  (not what this line is for: see the gateway's log)"
        };
        println!("    -> {}{note}", codes.join(" "));
    }
    Ok(())
}

/// ` --name NAME` for the printed commands, or nothing for the default testbed.
fn name_flag(name: &str) -> String {
    if name == topology::DEFAULT_NAME {
        String::new()
    } else {
        format!(" --name {name}")
    }
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
