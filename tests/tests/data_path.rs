//! The data path's defences: connections to the agent's own ports are refused and cost it
//! nothing, resets reach the client as resets on every path, and shutdown drains inbound
//! HBONE tunnels.

// The helpers below are not `#[test]` functions; a failed step in them should fail the test
// like any assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::{NetnsSockets, TD, id_of, svid};
use common::{agent, eventually, require_root};
use rcgen::{Issuer, KeyPair};
use weft_link::hbone::{ClientOptions, ConnectRequest, HboneClient};
use weft_link::tls::{CertResolver, ClientTls, TrustBundle};
use weft_tests::scenario;
use weft_tests::testbed::{Background, Config, Testbed, TestbedGuard};

/// The denial counter and the reason for the agent's own ports.
const DENIED: &str = "weft_connections_denied_total";
const AGENT_PORT: &str = "agent_port";

/// Opens one idle connection to each `host:port` argument (after the first, the seconds to
/// hold them), holds them, then prints one JSON object: per target, `reset` or `closed` when
/// the other end ended it, `open` when it is still open, or `refused`/`error: ...` when the
/// connect failed.
const HOLD: &str = r#"
import json, socket, sys, time
hold = float(sys.argv[1])
socks, result = [], {}
for target in sys.argv[2:]:
    host, port = target.rsplit(":", 1)
    try:
        socks.append((target, socket.create_connection((host, int(port)), timeout=5)))
    except ConnectionRefusedError:
        result[target] = "refused"
    except ConnectionResetError:
        result[target] = "reset"
    except OSError as e:
        result[target] = "error: %s" % e
time.sleep(hold)
for target, s in socks:
    s.settimeout(0.5)
    try:
        result[target] = "closed" if s.recv(1) == b"" else "data"
    except ConnectionResetError:
        result[target] = "reset"
    except socket.timeout:
        result[target] = "open"
    except OSError as e:
        result[target] = "error: %s" % e
print(json.dumps(result), flush=True)
"#;

/// A server on `port` (dual stack) that answers every connection with `size` bytes of a
/// fixed pattern, `chunk` bytes every `pace` seconds, then ends it with a reset (`reset`) or
/// a clean close (`close`). Prints `listening`, then per connection `sent <n> <sha256>`.
const SERVER: &str = r#"
import hashlib, socket, struct, sys, time
port, end, size, chunk, pace = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
srv.bind(("::", port))
srv.listen(64)
print("listening", flush=True)
while True:
    c, _ = srv.accept()
    digest, sent, i = hashlib.sha256(), 0, 0
    try:
        # The client's line, read so that closing never finds unread data (which resets).
        c.recv(64)
        while sent < size:
            block = bytes((i * 7 + j) % 251 for j in range(256)) * (chunk // 256)
            block = block[: size - sent]
            c.sendall(block)
            digest.update(block)
            sent += len(block)
            i += 1
            print("progress %d" % sent, flush=True)
            time.sleep(pace)
        time.sleep(0.3)
        if end == "reset":
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            c.shutdown(socket.SHUT_WR)
    except OSError as e:
        print("error %s" % e, flush=True)
    finally:
        c.close()
    print("sent %d %s" % (sent, digest.hexdigest()), flush=True)
"#;

/// Connects to `host port`, sends a line, reads to the end and prints `eof <n> <sha256>`
/// for a clean end, `reset <n>` for a reset, or `error <what> <n>`.
const CLIENT: &str = r#"
import hashlib, socket, sys
n, digest = 0, hashlib.sha256()
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
    s.sendall(b"hello\n")
    while True:
        d = s.recv(65536)
        if not d:
            print("eof %d %s" % (n, digest.hexdigest()), flush=True)
            break
        n += len(d)
        digest.update(d)
except ConnectionResetError:
    print("reset %d" % n, flush=True)
except OSError as e:
    print("error %s %d" % (e, n), flush=True)
"#;

fn ip_of(tb: &Testbed, pod: &str) -> IpAddr {
    tb.pod(pod).unwrap().ipv4.into()
}

/// Starts [`SERVER`] in `pod` and waits until it listens.
fn serve(
    tb: &Testbed,
    pod: &str,
    port: u16,
    end: &str,
    size: usize,
    chunk: usize,
    pace: &str,
) -> Background {
    let (port_s, size_s, chunk_s) = (port.to_string(), size.to_string(), chunk.to_string());
    let server = tb
        .spawn(
            pod,
            &[
                "python3", "-c", SERVER, &port_s, end, &size_s, &chunk_s, pace,
            ],
        )
        .unwrap();
    eventually("the test server to listen", Duration::from_secs(15), || {
        std::fs::read_to_string(&server.log).is_ok_and(|l| l.contains("listening"))
    });
    server
}

/// Runs [`CLIENT`] in `pod` against `ip:port`; its one-line verdict.
fn client(tb: &Testbed, pod: &str, ip: IpAddr, port: u16) -> String {
    let out = tb
        .exec(
            pod,
            &["python3", "-c", CLIENT, &ip.to_string(), &port.to_string()],
        )
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// The agent's process on `node`: open file descriptors and resident memory (KiB).
fn agent_usage(tb: &Testbed, node: &str) -> (usize, u64) {
    let pid = tb.node(node).unwrap().agent.unwrap().pid;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (fds, rss)
}

fn denied(tb: &Testbed, node: &str) -> f64 {
    tb.metrics(node)
        .unwrap()
        .sum(DENIED, &[("reason", AGENT_PORT)])
}

/// A CONNECT to `authority` through `pod`'s port 15008, from `node`'s namespace, with a mesh
/// certificate of `as_pod`'s identity: the HTTP status, 200 if the tunnel opened.
fn hbone_connect(tb: &Testbed, node: &str, as_pod: &str, pod: &str, authority: SocketAddr) -> u16 {
    let control = tb.state_dir().join("control");
    let root_pem = std::fs::read_to_string(control.join("root-cert.pem")).unwrap();
    let root_key =
        KeyPair::from_pem(&std::fs::read_to_string(control.join("root-key.pem")).unwrap()).unwrap();
    let mesh_ca = Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
    let bundle = Arc::new(TrustBundle::from_pem(TD.parse().unwrap(), root_pem.as_bytes()).unwrap());
    let now = time::OffsetDateTime::now_utc();
    let cert = svid(
        &mesh_ca,
        &id_of(tb, as_pod),
        now - time::Duration::hours(1),
        time::Duration::hours(2),
    );
    let tls = ClientTls::new(Arc::new(CertResolver::new(cert)), bundle);
    let netns = Path::new("/run/netns").join(&tb.node(node).unwrap().netns);
    let pod_ip = ip_of(tb, pod);
    let request = ConnectRequest::new(SocketAddr::new(pod_ip, 15008), id_of(tb, pod), authority);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let hbone = HboneClient::new(Arc::new(NetnsSockets(netns)), ClientOptions::default());
        match hbone.connect(&tls, request).await {
            Ok(tunnel) => {
                // Held briefly, as an idle client would; the agent must not loop meanwhile.
                tokio::time::sleep(Duration::from_secs(2)).await;
                drop(tunnel);
                200
            }
            Err(err) => err
                .status()
                .map(|s| s.as_u16())
                .unwrap_or_else(|| panic!("CONNECT {authority}: {}", weft_link::error_chain(&err))),
        }
    })
}

// === the agent's own ports ===

#[test]
fn connections_to_the_agents_own_ports_are_refused_and_cost_it_nothing() {
    require_root();
    let config = Config::named("weft-e2e-dat-selfport")
        .size(2, 2)
        .agent(agent())
        .unenrolled(&["pod-1b"]);
    let tb = TestbedGuard::up(&config).unwrap();
    let _a = scenario::serve_http(&tb, "pod-2a").unwrap();
    let _b = scenario::serve_http(&tb, "pod-2b").unwrap();
    let ip2a = ip_of(&tb, "pod-2a");
    let (fds_before, rss_before) = agent_usage(&tb, "node-2");

    let targets = |ports: &[u16]| -> Vec<String> {
        ports
            .iter()
            .map(|p| SocketAddr::new(ip2a, *p).to_string())
            .collect()
    };
    // From outside the mesh (sk_lookup passes 15006 and steers the node ports to 15006),
    // from pod-2a through its own capture, and from pod-1a through node-1's agent.
    let outside = targets(&[15006, 15000, 15020, 15021]);
    // (Its own 15008 is not captured: connect4 passes HBONE, and the listener answers it.)
    let itself = targets(&[15006, 15001, 15020]);
    let mesh = targets(&[15006]);
    let hold = |pod: &str, targets: &[String]| {
        let mut argv = vec!["python3", "-c", HOLD, "4"];
        argv.extend(targets.iter().map(String::as_str));
        tb.spawn(pod, &argv).unwrap()
    };
    let holders = [
        hold("pod-1b", &outside),
        hold("pod-2a", &itself),
        hold("pod-1a", &mesh),
    ];
    // While they are held: the agent's descriptors stay where they were.
    let mut fds_peak = fds_before;
    let deadline = Instant::now() + Duration::from_secs(30);
    while holders.iter().any(Background::is_alive) {
        assert!(
            Instant::now() < deadline,
            "the holding clients never finished"
        );
        fds_peak = fds_peak.max(agent_usage(&tb, "node-2").0);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (fds_held, rss_held) = agent_usage(&tb, "node-2");
    for holder in &holders {
        let log = std::fs::read_to_string(&holder.log).unwrap();
        let result: BTreeMap<String, String> = serde_json::from_str(log.trim())
            .unwrap_or_else(|e| panic!("{} printed {log:?}: {e}", holder.pod));
        for (target, state) in &result {
            assert!(
                state == "reset" || state == "refused",
                "from {}: the connection to {target} was {state}, not refused at once \
                 (node-2's agent: {fds_before} open files before, {fds_peak} at most since)",
                holder.pod
            );
        }
    }
    let fds_bound = fds_before + 20;
    let rss_bound = rss_before + 32 * 1024;
    assert!(
        fds_peak < fds_bound && fds_held < fds_bound,
        "node-2's agent went from {fds_before} to {fds_peak} open files"
    );
    assert!(
        rss_held < rss_bound,
        "node-2's agent grew from {rss_before} KiB to {rss_held} KiB"
    );

    // And as an HBONE CONNECT from node-1 with pod-1a's identity: 400, as ztunnel answers.
    for port in [15006, 15008, 15021] {
        let status = hbone_connect(
            &tb,
            "node-1",
            "pod-1a",
            "pod-2a",
            SocketAddr::new(ip2a, port),
        );
        let fds = agent_usage(&tb, "node-2").0;
        assert_eq!(
            status, 400,
            "CONNECT to pod-2a:{port} (node-2's agent: {fds_before} open files before, {fds} now)"
        );
        fds_peak = fds_peak.max(fds);
    }
    let (fds_after, rss_after) = agent_usage(&tb, "node-2");
    assert!(
        fds_peak < fds_bound && fds_after < fds_bound,
        "node-2's agent went from {fds_before} to {fds_peak} open files"
    );
    assert!(
        rss_after < rss_bound,
        "node-2's agent grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Every refusal is counted where it was decided, and logged.
    let at_node2 = (outside.len() + itself.len() + 3) as f64;
    eventually("node-2's refusals counted", Duration::from_secs(10), || {
        denied(&tb, "node-2") >= at_node2
    });
    assert_eq!(
        denied(&tb, "node-2"),
        at_node2,
        "one count per refused connection"
    );
    assert_eq!(denied(&tb, "node-1"), mesh.len() as f64);
    let log = std::fs::read_to_string(tb.agent_log("node-2").unwrap()).unwrap();
    assert!(
        log.contains("one of the agent's own ports"),
        "no refusal logged"
    );

    // The pods' traffic is unaffected: cross-node HBONE, same node, plaintext from outside.
    scenario::curl_whoami(&tb, "pod-1a", "pod-2a", ip2a).unwrap();
    scenario::curl_whoami(&tb, "pod-2a", "pod-2b", ip_of(&tb, "pod-2b")).unwrap();
    scenario::curl_whoami(&tb, "pod-1b", "pod-2a", ip2a).unwrap();
}

// === resets ===

#[test]
fn resets_reach_the_client_as_resets_on_every_path() {
    require_root();
    let config = Config::named("weft-e2e-dat-reset")
        .size(2, 2)
        .agent(agent())
        .unenrolled(&["pod-2b"]);
    let tb = TestbedGuard::up(&config).unwrap();
    const RESETS: u16 = 7000;
    const CLOSES: u16 = 7001;
    const CLOSED_PORT: u16 = 9;
    let mut servers = Vec::new();
    for pod in ["pod-1b", "pod-2a"] {
        servers.push(serve(&tb, pod, RESETS, "reset", 64 * 1024, 16 * 1024, "0"));
        servers.push(serve(&tb, pod, CLOSES, "close", 64 * 1024, 16 * 1024, "0"));
    }
    // pod-1a -> pod-1b: same node; pod-1a -> pod-2a: HBONE; pod-2b -> pod-2a: plaintext
    // from outside the mesh.
    let paths = [
        ("same-node", "pod-1a", "pod-1b"),
        ("HBONE", "pod-1a", "pod-2a"),
        ("plaintext", "pod-2b", "pod-2a"),
    ];
    for (path, src, dst) in paths {
        let ip = ip_of(&tb, dst);
        let upstream_reset = client(&tb, src, ip, RESETS);
        assert!(
            upstream_reset.starts_with("reset"),
            "{path}: the server reset the connection and {src} saw {upstream_reset:?}"
        );
        let failed = client(&tb, src, ip, CLOSED_PORT);
        assert!(
            failed.starts_with("reset"),
            "{path}: nothing listens on {dst}:{CLOSED_PORT} and {src} saw {failed:?}"
        );
        // A clean close stays one, with every byte.
        let clean = client(&tb, src, ip, CLOSES);
        assert!(
            clean.starts_with("eof 65536 "),
            "{path}: the server closed cleanly and {src} saw {clean:?}"
        );
    }
}

// === drain ===

#[test]
fn shutdown_drains_an_inbound_hbone_tunnel_carrying_a_transfer() {
    require_root();
    let mut agent = agent();
    agent.extra_args = vec!["--drain-deadline".into(), "20s".into()];
    let config = Config::named("weft-e2e-dat-drain").size(2, 1).agent(agent);
    let tb = TestbedGuard::up(&config).unwrap();
    const PORT: u16 = 7002;
    // 128 chunks of 32 KiB, one every 50 ms: some 6.4 s, longer than any built-in
    // deadline but the configured one.
    const TOTAL: usize = 128 * 32 * 1024;
    let server = serve(&tb, "pod-2a", PORT, "close", TOTAL, 32 * 1024, "0.05");
    let ip = ip_of(&tb, "pod-2a");
    let (ip_s, port_s) = (ip.to_string(), PORT.to_string());
    let transfer = tb
        .spawn("pod-1a", &["python3", "-c", CLIENT, &ip_s, &port_s])
        .unwrap();
    eventually("the transfer to start", Duration::from_secs(15), || {
        std::fs::read_to_string(&server.log).is_ok_and(|l| l.contains("progress"))
    });

    let agent2 = tb.node("node-2").unwrap().agent.unwrap();
    let stopping = Instant::now();
    agent2.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    // Draining, the agent has released capture: the window in which the node's pods bypass
    // the mesh, which its metrics and readiness must show (the README's fail-open section).
    eventually(
        "node-2 to report capture released",
        Duration::from_secs(5),
        || {
            tb.metrics("node-2").is_ok_and(|m| {
                m.sum("weft_captured_pods", &[]) == 0.0 && m.sum("weft_enrolled_pods", &[]) == 1.0
            })
        },
    );
    let readiness = tb.node("node-2").unwrap().readiness_addr;
    let ready = tb
        .node_http_get("node-2", readiness, weft_tests::testbed::READY_PATH)
        .unwrap();
    assert_eq!(
        ready.status, 503,
        "a draining agent is not ready: {}",
        ready.body
    );
    assert!(ready.body.contains("capture released"), "{}", ready.body);
    assert!(
        agent2.wait_exit(Duration::from_secs(25)),
        "node-2's agent did not exit within its drain deadline"
    );
    let took = stopping.elapsed();
    assert!(transfer.process.wait_exit(Duration::from_secs(30)));
    let got = std::fs::read_to_string(&transfer.log).unwrap();
    // The server reports what it sent once the connection is over, cut or not.
    eventually("the server's report", Duration::from_secs(30), || {
        std::fs::read_to_string(&server.log).is_ok_and(|l| l.contains("sent "))
    });
    let server_log = std::fs::read_to_string(&server.log).unwrap();
    let sent = server_log
        .lines()
        .find_map(|l| l.strip_prefix("sent "))
        .unwrap();
    let (size, digest) = sent.split_once(' ').unwrap();
    assert_eq!(
        size,
        TOTAL.to_string(),
        "the transfer was cut (node-2's agent exited {took:?} after SIGTERM); the client saw \
         {got:?}"
    );
    assert_eq!(
        got.trim(),
        format!("eof {size} {digest}"),
        "the transfer did not arrive intact through the draining agent"
    );
    let log = std::fs::read_to_string(tb.agent_log("node-2").unwrap()).unwrap();
    assert!(
        !log.contains("still open at the drain deadline"),
        "the agent gave up on its connections:\n{log}"
    );
}
