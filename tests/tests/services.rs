//! Service VIPs are resolved by the source agent: a connection to a VIP and service port goes
//! to one endpoint of the service on its target port (HBONE to another node, handed over on
//! the same node), metrics name the service, and a port the service does not declare, or a
//! service with no endpoint, is refused at once. The VIPs are routed nowhere in the testbed: the agent captures the
//! connect and never dials the VIP itself. The index itself is unit-tested in
//! `mesh/src/service.rs`, the load balancer in `mesh/src/lb.rs`; the `lb_` scenarios here
//! check its spread, failover, locality, readiness and the gateway's use of it.

// The helpers below are not `#[test]` functions; a failed step in them should fail the test
// like any assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{apply_web_services, eventually, label_web, mesh};
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

#[test]
fn a_vip_reaches_an_endpoint_on_either_node_and_an_undeclared_port_is_refused() {
    let tb = mesh("weft-e2e-svc-vip", 2, 2);
    // The client is pod-1a; one endpoint shares its node, the other is across.
    let _same = scenario::serve_http(&tb, "pod-1b").unwrap();
    let _remote = scenario::serve_http(&tb, "pod-2a").unwrap();
    label_web(&tb, &["pod-1b", "pod-2a"]);
    let ns = tb.pod("pod-1a").unwrap().namespace.clone();

    apply_web_services(&tb, &ns, VIP4, VIP6, EMPTY_VIP, SERVICE_PORT);

    // The load balancer spreads over two endpoints: both answer within a few connections, on
    // each family.
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

// === load balancing, passive health, locality and readiness ===

/// Sequential HTTP/1.0 GETs of `/whoami.txt` from inside a pod, one connection each: `count`
/// of them, then more until `seconds` have passed. One line per connection: the wall-clock
/// time it ended and who answered, or `ERR:<why>`.
const CLIENT_LOOP: &str = r#"
import socket, sys, time
ip, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
end = time.time() + seconds
i = 0
while i < count or time.time() < end:
    i += 1
    try:
        s = socket.create_connection((ip, port), timeout=5)
        s.sendall(b"GET /whoami.txt HTTP/1.0\r\nHost: web\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        ok = head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
        who = body.decode() if ok and body else "ERR:" + (head[:40].decode(errors="replace") or "empty")
    except Exception as e:
        who = "ERR:" + type(e).__name__
    print("%.6f %s" % (time.time(), who), flush=True)
"#;

/// One connection of [`connections`]: when it ended (seconds since the Unix epoch) and who
/// answered (`ERR:...` when it failed).
struct Answer {
    at: f64,
    who: String,
}

/// Runs [`CLIENT_LOOP`] in `pod` against `vip:port`.
fn connections(tb: &Testbed, pod: &str, vip: &str, count: u32, seconds: f64) -> Vec<Answer> {
    let (count, seconds) = (count.to_string(), seconds.to_string());
    let port = SERVICE_PORT.to_string();
    let out = tb
        .exec(
            pod,
            &["python3", "-c", CLIENT_LOOP, vip, &port, &count, &seconds],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "the client loop in {pod} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let (at, who) = line.split_once(' ').unwrap();
            Answer {
                at: at.parse().unwrap(),
                who: who.to_string(),
            }
        })
        .collect()
}

/// How many connections each answerer took.
fn tally(answers: &[Answer]) -> std::collections::BTreeMap<String, u32> {
    let mut counts = std::collections::BTreeMap::new();
    for a in answers {
        *counts.entry(a.who.clone()).or_default() += 1;
    }
    counts
}

/// Writes the service `web` (both VIPs, port 80 to `target`) selecting `tier: web`.
fn web_service(tb: &Testbed, ns: &str, target: &str, extra_spec: &str) {
    tb.apply_yaml(
        "web.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {ns}\n\
             spec:\n  selector:\n    tier: web\n  clusterIPs: [\"{VIP4}\", \"{VIP6}\"]\n{extra_spec}  \
             ports:\n  - {{name: http, port: {SERVICE_PORT}, targetPort: {target}}}\n"
        ),
    )
    .unwrap();
}

fn metric_at(tb: &Testbed, node: &str, name: &str, matchers: &[(&str, &str)]) -> f64 {
    tb.metrics(node).unwrap().sum(name, matchers)
}

#[test]
fn lb_spreads_over_replicas_fails_over_and_refuses_when_all_are_gone() {
    let tb = mesh("weft-e2e-lb-spread", 2, 2);
    // The client is pod-1a; one replica shares its node, two are across.
    let replicas = ["pod-1b", "pod-2a", "pod-2b"];
    let mut servers: std::collections::HashMap<&str, _> = replicas
        .iter()
        .map(|p| (*p, scenario::serve_http(&tb, p).unwrap()))
        .collect();
    label_web(&tb, &replicas);
    let ns = tb.pod("pod-1a").unwrap().namespace.clone();
    web_service(&tb, &ns, &scenario::HTTP_PORT.to_string(), "");
    let host = format!("web.{ns}.svc.cluster.local");
    let url = scenario::url(VIP4.parse().unwrap(), SERVICE_PORT, "/whoami.txt");
    eventually("the VIP to answer", Duration::from_secs(30), || {
        quick_curl(&tb, "pod-1a", &url).is_some()
    });

    // Spread: each replica's share of n connections is binomial(n, 1/3); 5 standard
    // deviations is a bound a fair spread misses about once in 3.5 million runs.
    let n = 300;
    let answers = connections(&tb, "pod-1a", VIP4, n, 0.0);
    let counts = tally(&answers);
    let p = 1.0 / replicas.len() as f64;
    let mean = f64::from(n) * p;
    let bound = 5.0 * (mean * (1.0 - p)).sqrt();
    println!(
        "spread of {n} connections over 3 replicas: {counts:?} (mean {mean:.0} +- {bound:.1})"
    );
    for r in replicas {
        let got = f64::from(counts.get(r).copied().unwrap_or(0));
        assert!(
            (got - mean).abs() <= bound,
            "{r} took {got} of {n} connections, outside {mean:.0} +- {bound:.1}: {counts:?}"
        );
    }
    assert_eq!(
        counts.values().sum::<u32>(),
        n,
        "only the replicas answer, every time: {counts:?}"
    );

    // Failover: the same-node replica's server and a remote one's die. Every connection
    // still succeeds (a refused connect, or a refused tunnel, is retried on another
    // endpoint), and both dead endpoints are ejected.
    for dead in ["pod-1b", "pod-2a"] {
        servers[dead].stop(Duration::from_secs(2)).unwrap();
    }
    let answers = connections(&tb, "pod-1a", VIP4, 60, 0.0);
    let counts = tally(&answers);
    assert_eq!(
        counts.get("pod-2b").copied(),
        Some(60),
        "every connection answered by the live replica: {counts:?}"
    );
    let node1 = |name| metric_at(&tb, "node-1", name, &[("service", host.as_str())]);
    let ejections = node1("weft_service_endpoint_ejections_total");
    let retries = node1("weft_service_connect_retries_total");
    println!("after two replicas died: {ejections} ejections, {retries} retries");
    assert!(ejections >= 2.0, "both dead endpoints ejected: {ejections}");
    assert!(retries >= 2.0, "failed connects retried: {retries}");

    // Back: once its server is up again, the remote replica answers again after its
    // back-off (probation, then restored).
    servers.insert("pod-2a", scenario::serve_http(&tb, "pod-2a").unwrap());
    let back = Instant::now();
    eventually("pod-2a to answer again", Duration::from_secs(45), || {
        tally(&connections(&tb, "pod-1a", VIP4, 20, 0.0)).contains_key("pod-2a")
    });
    println!(
        "pod-2a answered again {:?} after its server restarted",
        back.elapsed()
    );

    // Every endpoint gone: refused at once (each attempt is refused), not a hang; as is a
    // port the service does not declare.
    for r in ["pod-2a", "pod-2b"] {
        servers[r].stop(Duration::from_secs(2)).unwrap();
    }
    for (vip, port) in [(VIP4, SERVICE_PORT), (VIP6, SERVICE_PORT), (VIP4, 81)] {
        let url = scenario::url(vip.parse().unwrap(), port, "/whoami.txt");
        let started = Instant::now();
        let out = scenario::curl(&tb, "pod-1a", &url).unwrap();
        let took = started.elapsed();
        assert!(
            !out.status.success(),
            "{url} answered with every server down"
        );
        assert!(
            took < Duration::from_secs(3),
            "refusing {url} with every server down took {took:?} (curl's limit is {}s): {}",
            scenario::CURL_MAX_TIME,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Writes the testbed's workload file again: `replicas` labelled `tier: web` with the named
/// port `http` (the test servers' port), those in `not_ready` with `ready: false`.
fn write_workloads(tb: &Testbed, replicas: &[&str], not_ready: &[&str]) {
    let mut out = String::from("# Written by the test: one Workload per pod.\n");
    for pod in tb.pods() {
        let mut labels: Vec<String> = pod
            .labels
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let mut extra = String::new();
        if replicas.contains(&pod.name.as_str()) {
            labels.push("tier: web".into());
            extra.push_str(&format!("  ports: {{http: {}}}\n", scenario::HTTP_PORT));
        }
        if not_ready.contains(&pod.name.as_str()) {
            extra.push_str("  ready: false\n");
        }
        out.push_str(&format!(
            "---\napiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: {}\n  \
             namespace: {}\n  uid: {}\n  labels: {{{}}}\nspec:\n  serviceAccount: {}\n  \
             node: {}\n  ips: [\"{}\", \"{}\"]\n  protocol: HBONE\n{extra}",
            pod.name,
            pod.namespace,
            pod.uid,
            labels.join(", "),
            pod.service_account,
            pod.node,
            pod.ipv4,
            pod.ipv6,
        ));
    }
    let staged = tb.state_dir().join("pods.yaml.staged");
    std::fs::write(&staged, out).unwrap();
    std::fs::rename(
        &staged,
        control::config_dir(tb.state_dir()).join(control::PODS_FILE),
    )
    .unwrap();
}

/// Seconds since the Unix epoch, as the client loop prints them.
fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits until `count` connections in a row from pod-1a to `vip` all reach `replica`.
fn all_reach(tb: &Testbed, vip: &str, replica: &str, why: &str) {
    let mut last = Default::default();
    eventually(
        &format!("every connection to {vip} to reach {replica} ({why})"),
        Duration::from_secs(30),
        || {
            last = tally(&connections(tb, "pod-1a", vip, 20, 0.0));
            last.len() == 1 && last.contains_key(replica)
        },
    );
}

#[test]
fn lb_prefers_close_endpoints_and_stops_sending_to_unready_ones_at_once() {
    let tb = mesh("weft-e2e-lb-local", 3, 2);
    // node-1 and node-2 share zone eu-1a; node-3 is in eu-1b. The client is pod-1a.
    let replicas = ["pod-1b", "pod-2a", "pod-3a"];
    let _servers: Vec<_> = replicas
        .iter()
        .map(|p| scenario::serve_http(&tb, p).unwrap())
        .collect();
    let mut nodes = String::new();
    for (node, zone) in [
        ("node-1", "eu-1a"),
        ("node-2", "eu-1a"),
        ("node-3", "eu-1b"),
    ] {
        nodes.push_str(&format!(
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n  labels:\n    \
             topology.kubernetes.io/region: eu\n    topology.kubernetes.io/zone: {zone}\n"
        ));
    }
    tb.apply_yaml("nodes.yaml", &nodes).unwrap();
    write_workloads(&tb, &replicas, &[]);
    let ns = tb.pod("pod-1a").unwrap().namespace.clone();
    // A named target port, resolved per endpoint from the workloads' `ports`.
    web_service(&tb, &ns, "http", "  trafficDistribution: PreferClose\n");

    // Same node first, on both families.
    for vip in [VIP4, VIP6] {
        all_reach(&tb, vip, "pod-1b", "same node");
    }

    // Not ready: the same-node replica stops getting connections (measured from the
    // workload file's write to the last connection it answered), and the same zone takes
    // over, with no connection failing meanwhile.
    let (answers, written) = std::thread::scope(|s| {
        let client = s.spawn(|| connections(&tb, "pod-1a", VIP4, 0, 6.0));
        std::thread::sleep(Duration::from_secs(2));
        let written = now_unix();
        write_workloads(&tb, &replicas, &["pod-1b"]);
        (client.join().unwrap(), written)
    });
    let failed: Vec<_> = answers
        .iter()
        .filter(|a| a.who.starts_with("ERR"))
        .collect();
    assert!(failed.is_empty(), "{} connections failed", failed.len());
    let last_1b = answers
        .iter()
        .filter(|a| a.who == "pod-1b")
        .map(|a| a.at)
        .fold(f64::NAN, f64::max);
    let delay = (last_1b - written).max(0.0);
    println!(
        "readiness: pod-1b's last connection {:.0} ms after its workload was written not \
         ready ({} connections in 6 s: {:?})",
        delay * 1000.0,
        answers.len(),
        tally(&answers)
    );
    assert!(
        delay < 5.0,
        "pod-1b still got connections {delay:.3} s after it was not ready"
    );
    let after: Vec<_> = answers.iter().filter(|a| a.at > last_1b).collect();
    assert!(
        !after.is_empty() && after.iter().all(|a| a.who == "pod-2a"),
        "after pod-1b, only pod-2a (same zone): {:?}",
        tally(&answers)
    );

    // The same zone not ready either: anywhere.
    write_workloads(&tb, &replicas, &["pod-1b", "pod-2a"]);
    all_reach(&tb, VIP4, "pod-3a", "the other zone");
    // Ready again: back on the node.
    write_workloads(&tb, &replicas, &[]);
    all_reach(&tb, VIP4, "pod-1b", "ready again");
}

#[test]
fn lb_gateway_spreads_a_service_backend_and_ejects_a_dead_endpoint() {
    use weft_tests::edge::{self, Client as Via, ECHO_PORT, NAMESPACE};
    common::require_root();
    let config = weft_tests::testbed::Config::named("weft-e2e-lb-gw")
        .size(2, 2)
        .agent(common::agent())
        .with_gateway();
    let tb = weft_tests::testbed::TestbedGuard::up(&config).unwrap();
    let replicas = ["pod-1b", "pod-2a"];
    let servers: Vec<_> = replicas
        .iter()
        .map(|p| edge::serve_echo(&tb, p, ECHO_PORT).unwrap())
        .collect();
    label_web(&tb, &replicas);
    // One retry, at once: a connect failure goes to an endpoint not tried yet.
    let docs = [
        edge::gateway_doc(),
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {NAMESPACE}}}\n\
             spec:\n  selector: {{tier: web}}\n  clusterIP: {VIP4}\n  ports:\n  \
             - {{name: http, port: {ECHO_PORT}, targetPort: {ECHO_PORT}}}\n"
        ),
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web, \
             namespace: {NAMESPACE}}}\nspec:\n  parentRefs: [{{name: edge}}]\n  rules:\n  \
             - matches: [{{path: {{type: PathPrefix, value: /web/}}}}]\n    \
             backendRefs: [{{name: web, port: {ECHO_PORT}}}]\n    \
             retry: {{attempts: 1, backoff: 1ms}}\n"
        ),
    ]
    .join("---\n");
    tb.apply_yaml("edge.yaml", &docs).unwrap();
    let url = edge::gateway_url(&tb, "/web/x").unwrap();
    edge::curl_until(&tb, Via::Node("node-1"), &[&url], 200).unwrap();
    let who = |tb: &Testbed| {
        let reply = edge::curl(tb, Via::Node("node-1"), &[&url]).unwrap();
        if reply.status == 200 {
            reply.json()["pod"].as_str().unwrap_or("?").to_string()
        } else {
            format!("HTTP {}", reply.status)
        }
    };
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        seen.insert(who(&tb));
    }
    assert_eq!(
        seen,
        replicas.iter().map(|r| r.to_string()).collect(),
        "both endpoints answer through the gateway"
    );

    // pod-1b's server dies: every request still answered (the retry goes to pod-2a), and
    // pod-1b is ejected after 3 failed connects, then probed once per back-off (1 s, 2 s,
    // 4 s, ...): at most 3 + 1 + log2(1 + elapsed seconds) connects reach it.
    servers[0].stop(Duration::from_secs(2)).unwrap();
    let failed_at_1b = |tb: &Testbed| {
        metric_at(
            tb,
            "node-1",
            scenario::CONNECTIONS_CLOSED,
            &[
                ("reporter", "destination"),
                ("destination_workload", "pod-1b"),
                ("response_flags", "UF"),
            ],
        )
    };
    let before = failed_at_1b(&tb);
    let started = Instant::now();
    let n = 40;
    let answers: Vec<String> = (0..n).map(|_| who(&tb)).collect();
    let elapsed = started.elapsed().as_secs_f64();
    let failed = failed_at_1b(&tb) - before;
    let bound = 3.0 + 1.0 + (1.0 + elapsed).log2().floor();
    println!(
        "gateway: {n} requests in {elapsed:.1} s with pod-1b down: {failed} connects to it \
         failed (bound {bound})"
    );
    assert!(
        answers.iter().all(|a| a == "pod-2a"),
        "every request answered by pod-2a: {answers:?}"
    );
    assert!(
        (1.0..=bound).contains(&failed),
        "{failed} failed connects to pod-1b in {elapsed:.1} s: it was not ejected (bound {bound})"
    );
}
