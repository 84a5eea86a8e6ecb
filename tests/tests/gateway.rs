//! The edge gateway on the testbed, with real agents and real clients (curl, h2load): its
//! own namespace on the fabric, configured by the control plane, reaching mesh services over
//! HBONE with its own identity. One test per feature; the gRPC one is in `gateway_grpc.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read as _;
use std::time::{Duration, SystemTime};

use common::{config_dump, eventually, require_root};
use weft_tests::edge::{
    self, CONSUMER_HEADER, Client, ECHO_PORT, HTTPS_LISTENER_PORT, NAMESPACE, curl, curl_until,
};
use weft_tests::scenario::CONNECTIONS_OPENED;
use weft_tests::testbed::gateway::{GATEWAY_PRINCIPAL, GATEWAY_SPIFFE_ID};
use weft_tests::testbed::{Config, Testbed, TestbedGuard};

/// Every testbed here is called `<PREFIX>-<what>`.
const PREFIX: &str = "weft-e2e-gw";
/// The echo Service's VIP.
const ECHO_VIP: &str = "10.96.23.10";

/// Two nodes of one pod each (pod-1a a client, pod-2a the backend) and the gateway.
fn edge_mesh(what: &str) -> TestbedGuard {
    require_root();
    let name = format!("{PREFIX}-{what}");
    let config = Config::named(&name)
        .size(2, 1)
        .agent(common::agent())
        .with_gateway();
    TestbedGuard::up(&config).unwrap_or_else(|e| panic!("bringing {name} up: {e}"))
}

/// The echo server in pod-2a behind Service `echo`, and the `edge` Gateway with an HTTPRoute
/// `echo` from `/echo/` to it.
fn publish_echo(tb: &Testbed) {
    edge::serve_echo(tb, "pod-2a", ECHO_PORT).unwrap();
    let docs = [
        edge::gateway_doc(),
        edge::service_doc("echo", "pod-2a", ECHO_PORT, ECHO_VIP),
        edge::http_route_doc("echo", "/echo/", "echo", ECHO_PORT),
    ]
    .join("---\n");
    tb.apply_yaml("edge.yaml", &docs).unwrap();
}

/// The echo route behind an API key policy: consumer `alice` (key `alice-key`) on plan
/// `gold` with `per_second` requests per second.
fn protect_echo(tb: &Testbed, per_second: u32) {
    let docs = [
        edge::api_key_policy_doc("echo-api", "echo", "gold"),
        edge::plan_doc("gold", per_second),
        edge::consumer_doc("alice", "alice-key", "gold").unwrap(),
    ]
    .join("---\n");
    tb.apply_yaml("echo-api.yaml", &docs).unwrap();
}

fn url(tb: &Testbed, path: &str) -> String {
    edge::gateway_url(tb, path).unwrap()
}

// === the testbed ===

#[test]
fn the_gateway_node_sits_on_the_fabric_and_goes_with_a_failed_test() {
    let name = format!("{PREFIX}-node");
    let seen = std::cell::Cell::new(None);
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let tb = edge_mesh("node");
        let gw = tb.gateway().unwrap().clone();
        assert_eq!(gw.ipv4.to_string(), "10.77.0.2");
        assert_eq!(gw.netns, format!("{name}-gateway"));
        assert!(tb.gateway_alive(), "the gateway runs");
        assert!(tb.gateway_cert().unwrap().is_file(), "its credential");
        // What `testbed status --json` shows is read back from the state file.
        let loaded = Testbed::load(&name).unwrap();
        assert_eq!(loaded.gateway().unwrap().ipv4, gw.ipv4);
        assert_eq!(loaded.gateway().unwrap().process, gw.process);
        // The gateway reaches the pods of every node through that node.
        for pod in ["pod-1a", "pod-2a"] {
            let ip = tb.pod(pod).unwrap().ipv4.to_string();
            let out = tb
                .exec_gateway(&["ping", "-c", "1", "-W", "3", &ip])
                .unwrap();
            assert!(
                out.status.success(),
                "the gateway cannot reach {pod}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let args: Vec<String> = tb
            .gateway_args()
            .unwrap()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--control" && w[1] == "https://10.77.0.1:15012"),
            "{args:?}"
        );
        seen.set(gw.process);
        panic!("a test fails with the gateway up");
    }));
    assert!(failed.is_err());
    let process = seen.get().expect("the gateway was started");
    assert!(!process.is_alive(), "the gateway outlived its testbed");
    assert_eq!(
        weft_tests::testbed::leftover_netns(&name).unwrap(),
        Vec::<String>::new()
    );
}

// === into the mesh ===

#[test]
fn gateway_reaches_a_mesh_service_over_hbone_as_its_own_identity() {
    let tb = edge_mesh("hbone");
    let gw = tb.gateway().unwrap();
    assert_eq!(gw.ipv4.to_string(), "10.77.0.2");
    assert!(tb.gateway_alive());
    publish_echo(&tb);
    // pod-2a admits the gateway's identity only.
    tb.apply_yaml(
        "only-gateway.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  \
             name: only-gateway\n  namespace: {NAMESPACE}\nspec:\n  selector:\n    \
             matchLabels: {{app: pod-2a}}\n  action: ALLOW\n  rules:\n  - from:\n    \
             - source:\n        principals: [\"{GATEWAY_PRINCIPAL}\"]\n"
        ),
    )
    .unwrap();
    eventually("the policy at node-2", Duration::from_secs(15), || {
        config_dump(&tb, "node-2")["policies"].as_u64() == Some(1)
    });

    let target = url(&tb, "/echo/hello");
    let reply = curl_until(&tb, Client::Node("node-1"), &[&target], 200).unwrap();
    let echo = reply.json();
    assert_eq!(echo["pod"], "pod-2a", "{reply:?}");
    assert_eq!(echo["path"], "/echo/hello", "{reply:?}");

    // The destination's agent saw the gateway's proven identity, over mutual TLS.
    eventually(
        "node-2 to count a connection from the gateway's identity",
        Duration::from_secs(10),
        || {
            tb.metrics("node-2").unwrap().sum(
                CONNECTIONS_OPENED,
                &[
                    ("reporter", "destination"),
                    ("source_principal", GATEWAY_SPIFFE_ID),
                    ("destination_workload", "pod-2a"),
                    ("connection_security_policy", "mutual_tls"),
                ],
            ) >= 1.0
        },
    );
    // A pod without that identity is refused by the same policy.
    let direct = curl(
        &tb,
        Client::Pod("pod-1a"),
        &[&format!("http://10.78.2.11:{ECHO_PORT}/echo/hello")],
    )
    .unwrap();
    assert_ne!(
        direct.json()["pod"],
        "pod-2a",
        "pod-1a reached pod-2a despite the policy: {direct:?}"
    );
    // And the gateway still gets through after the refusal.
    let again = curl(&tb, Client::Node("node-1"), &[&target]).unwrap();
    assert_eq!(again.status, 200, "{again:?}");
}

// === consumers and credentials ===

#[test]
fn api_key_admits_its_consumer_and_answers_401_without_it() {
    let tb = edge_mesh("apikey");
    publish_echo(&tb);
    protect_echo(&tb, 1000);
    let target = url(&tb, "/echo/k");
    let anonymous = curl_until(&tb, Client::Node("node-1"), &[&target], 401).unwrap();
    assert!(
        anonymous.header("www-authenticate").is_some(),
        "a 401 names the scheme: {anonymous:?}"
    );
    let wrong = curl(
        &tb,
        Client::Node("node-1"),
        &["-H", "x-api-key: not-a-key", &target],
    )
    .unwrap();
    assert_eq!(wrong.status, 401, "{wrong:?}");

    let ok = curl(
        &tb,
        Client::Node("node-1"),
        &["-H", "x-api-key: alice-key", &target],
    )
    .unwrap();
    assert_eq!(ok.status, 200, "{ok:?}");
    // The key in the query parameter works too.
    let query = curl(
        &tb,
        Client::Node("node-1"),
        &[&url(&tb, "/echo/k?apikey=alice-key")],
    )
    .unwrap();
    assert_eq!(query.status, 200, "{query:?}");
    // The credential is stripped before the request goes upstream.
    let headers = &ok.json()["headers"];
    assert!(headers.get("x-api-key").is_none(), "{headers}");
    assert!(
        !query.json()["path"]
            .as_str()
            .unwrap_or("")
            .contains("alice-key"),
        "{query:?}"
    );
}

#[test]
fn the_consumer_reaches_the_backend_in_a_header_the_gateway_sets() {
    let tb = edge_mesh("consumer");
    publish_echo(&tb);
    protect_echo(&tb, 1000);
    let target = url(&tb, "/echo/who");
    let reply = curl_until(
        &tb,
        Client::Node("node-1"),
        &[
            "-H",
            "x-api-key: alice-key",
            // A client's own copies are never believed.
            "-H",
            &format!("{CONSUMER_HEADER}: mallory"),
            "-H",
            "baggage: weft-consumer=mallory,tenant=blue",
            &target,
        ],
        200,
    )
    .unwrap();
    let headers = &reply.json()["headers"];
    // Consumers are namespaced: namespace/name.
    assert_eq!(
        headers[CONSUMER_HEADER],
        format!("{NAMESPACE}/alice"),
        "{headers}"
    );
    let baggage = headers["baggage"].as_str().unwrap_or("");
    assert!(
        baggage.contains(&format!("{NAMESPACE}/alice")) && !baggage.contains("mallory"),
        "the consumer travels in baggage too, the client's claim dropped: {headers}"
    );
    assert!(
        baggage.contains("tenant=blue"),
        "the client's other baggage stays: {headers}"
    );
}

// === plans ===

#[test]
fn a_plan_limit_answers_429_with_retry_after_and_ratelimit_headers() {
    let tb = edge_mesh("plan");
    publish_echo(&tb);
    protect_echo(&tb, 5);
    let target = url(&tb, "/echo/burst");
    curl_until(
        &tb,
        Client::Node("node-1"),
        &["-H", "x-api-key: alice-key", &target],
        200,
    )
    .unwrap();
    // A full bucket or a new window (more than a second without requests), then a burst
    // of 10 on one connection within a few milliseconds: exactly 5 pass.
    std::thread::sleep(Duration::from_millis(1100));
    edge::align_to_second();
    let replies = edge::burst(
        &tb,
        Client::Node("node-1"),
        &["-H", "x-api-key: alice-key"],
        &target,
        10,
    )
    .unwrap();
    let codes: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(codes.len(), 10, "{replies:?}");
    let limited = replies.iter().find(|r| r.status == 429).cloned();
    let ok = codes.iter().filter(|c| **c == 200).count();
    assert!(
        codes.iter().all(|c| *c == 200 || *c == 429),
        "only 200 and 429: {codes:?}"
    );
    assert_eq!(ok, 5, "5 of 10 pass: {codes:?}");
    let limited = limited.unwrap_or_else(|| panic!("no 429 in the burst: {codes:?}"));
    let retry: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a numeric Retry-After: {limited:?}"));
    assert!(retry <= 1, "{limited:?}");
    assert!(
        limited.header("ratelimit-policy").is_some() && limited.header("ratelimit").is_some(),
        "the IETF RateLimit-Policy and RateLimit headers: {limited:?}"
    );
}

// === listeners ===

/// A self-signed certificate for `host` (its own root), PEM certificate and key.
fn self_signed(host: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn indent(pem: &str) -> String {
    pem.lines()
        .map(|l| format!("      {l}\n"))
        .collect::<String>()
}

#[test]
fn https_listener_picks_the_certificate_by_sni() {
    let tb = edge_mesh("sni");
    publish_echo(&tb);
    let hosts = ["a.example.com", "b.example.com"];
    let mut docs = vec![
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge, \
             namespace: {NAMESPACE}}}\nspec:\n  gatewayClassName: weft\n  listeners:\n  \
             - {{name: http, port: {}, protocol: HTTP}}\n  - name: https\n    port: \
             {HTTPS_LISTENER_PORT}\n    protocol: HTTPS\n    tls:\n      mode: Terminate\n      \
             certificateRefs: [{{kind: Secret, name: cert-a}}, {{kind: Secret, name: cert-b}}]\n",
            edge::HTTP_LISTENER_PORT
        ),
        edge::service_doc("echo", "pod-2a", ECHO_PORT, ECHO_VIP),
        edge::http_route_doc("echo", "/echo/", "echo", ECHO_PORT),
    ];
    let dir = tb.state_dir().join("sni");
    std::fs::create_dir_all(&dir).unwrap();
    for (host, secret) in hosts.iter().zip(["cert-a", "cert-b"]) {
        let (cert, key) = self_signed(host);
        std::fs::write(dir.join(format!("{host}.pem")), &cert).unwrap();
        docs.push(format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {secret}, namespace: {NAMESPACE}}}\n\
             type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(&cert),
            indent(&key)
        ));
    }
    tb.apply_yaml("edge.yaml", &docs.join("---\n")).unwrap();
    let gw = tb.gateway_ip().unwrap();
    for host in hosts {
        // Each host is verified against its own certificate alone: the wrong one fails.
        let ca = dir.join(format!("{host}.pem")).display().to_string();
        let resolve = format!("{host}:{HTTPS_LISTENER_PORT}:{gw}");
        let target = format!("https://{host}:{HTTPS_LISTENER_PORT}/echo/tls");
        let reply = curl_until(
            &tb,
            Client::Node("node-1"),
            &["--resolve", &resolve, "--cacert", &ca, &target],
            200,
        )
        .unwrap();
        assert_eq!(reply.json()["pod"], "pod-2a", "{reply:?}");
        // HTTP/2 over TLS by ALPN.
        let h2 = curl(
            &tb,
            Client::Node("node-1"),
            &["--http2", "--resolve", &resolve, "--cacert", &ca, &target],
        )
        .unwrap();
        assert_eq!(h2.status, 200, "{h2:?}");
    }
    let other = dir.join("b.example.com.pem").display().to_string();
    let wrong = curl(
        &tb,
        Client::Node("node-1"),
        &[
            "--resolve",
            &format!("a.example.com:{HTTPS_LISTENER_PORT}:{gw}"),
            "--cacert",
            &other,
            &format!("https://a.example.com:{HTTPS_LISTENER_PORT}/echo/tls"),
        ],
    )
    .unwrap();
    assert_eq!(
        wrong.status, 0,
        "a.example.com must present its own certificate, not b's: {wrong:?}"
    );
}

#[test]
fn h2c_requests_pass_the_gateway_with_h2load() {
    let tb = edge_mesh("h2");
    publish_echo(&tb);
    let target = url(&tb, "/echo/h2");
    curl_until(
        &tb,
        Client::Node("node-1"),
        &["--http2-prior-knowledge", &target],
        200,
    )
    .unwrap();
    let out = tb
        .exec_node(
            "node-1",
            &["h2load", "-n", "200", "-c", "4", "-m", "8", &target],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load failed: {text}");
    assert!(
        text.contains("200 total, 200 started, 200 done, 200 succeeded"),
        "every request succeeds: {text}"
    );
    assert!(
        text.contains("status codes: 200 2xx, 0 3xx, 0 4xx, 0 5xx"),
        "every answer is a 2xx: {text}"
    );
    assert!(text.contains("h2c"), "HTTP/2 with prior knowledge: {text}");
}

// === proof on the wire ===

#[test]
fn the_gateway_to_pod_leg_is_mutual_tls_on_port_15008() {
    let tb = edge_mesh("wire");
    publish_echo(&tb);
    let pcap = tb.state_dir().join("gateway-eth0.pcap");
    let pcap_arg = pcap.display().to_string();
    let capture = tb
        .spawn_gateway_side(&[
            "tcpdump",
            "--immediate-mode",
            "-U",
            "-n",
            "-i",
            "eth0",
            "-Z",
            "root",
            "-w",
            &pcap_arg,
            "tcp",
        ])
        .unwrap();
    eventually("tcpdump to start", Duration::from_secs(10), || {
        std::fs::read_to_string(&capture.log).is_ok_and(|l| l.contains("listening on"))
    });
    let marker = format!(
        "weft-gw-marker-{}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    // The client runs in the gateway's namespace: its leg stays on loopback, so the only
    // thing on eth0 is the gateway's way into the mesh.
    let local = format!(
        "http://127.0.0.1:{}/echo/{marker}",
        edge::HTTP_LISTENER_PORT
    );
    let reply = curl_until(&tb, Client::Gateway, &[&local], 200).unwrap();
    assert_eq!(reply.json()["path"], format!("/echo/{marker}"), "{reply:?}");
    std::thread::sleep(Duration::from_millis(500));
    capture.stop(Duration::from_secs(5)).unwrap();

    let mut bytes = Vec::new();
    std::fs::File::open(&pcap)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the request crossed the gateway's link in clear text"
    );
    let read = |filter: &str| {
        let out = std::process::Command::new("tcpdump")
            .args(["-r", &pcap_arg, "-nn", filter])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let handshakes = read("tcp dst port 15008 and tcp[((tcp[12:1] & 0xf0) >> 2):1] = 0x16");
    assert!(
        !handshakes.trim().is_empty(),
        "no TLS handshake to port 15008 on the gateway's link; the capture:\n{}",
        read("tcp")
    );
    assert!(
        read(&format!("tcp port {ECHO_PORT}")).trim().is_empty(),
        "traffic to the application port left the gateway outside the tunnel"
    );
}

// === limits shared in Redis ===

/// `args` with the value after each flag of `replace` swapped.
fn with_values(args: &[String], replace: &[(&str, &str)]) -> Vec<String> {
    let mut out = args.to_vec();
    for (flag, value) in replace {
        if let Some(i) = out.iter().position(|a| a == flag) {
            out[i + 1] = (*value).to_owned();
        }
    }
    out
}

#[test]
fn two_gateways_share_a_plan_limit_in_redis() {
    let tb = edge_mesh("redis");
    publish_echo(&tb);
    protect_echo(&tb, 5);
    let redis = tb
        .spawn_gateway_side(&[
            "redis-server",
            "--bind",
            "10.77.0.2",
            "--port",
            "6379",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .unwrap();
    eventually("redis to listen", Duration::from_secs(10), || {
        std::fs::read_to_string(&redis.log).is_ok_and(|l| l.contains("Ready to accept"))
    });
    let store = "redis://10.77.0.2:6379";
    let gw = tb.gateway().unwrap().clone();
    let base: Vec<String> = tb
        .gateway_args()
        .unwrap()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // Replica A: the testbed's gateway, restarted with the shared store.
    let mut tb = tb;
    tb.stop_gateway().unwrap();
    let mut a = vec![gw.bin.display().to_string()];
    a.extend(base.clone());
    a.extend(["--limits-store".to_owned(), store.to_owned()]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let replica_a = tb.spawn_gateway_side(&a).unwrap();
    // Replica B: the same gateway on node-1's host, its own state and endpoints.
    let b_dir = tb.state_dir().join("gateway-b");
    std::fs::create_dir_all(&b_dir).unwrap();
    let b_dir_s = b_dir.display().to_string();
    let mut b = vec![gw.bin.display().to_string()];
    b.extend(with_values(
        &base,
        &[
            ("--state-dir", &b_dir_s),
            ("--admin-addr", "127.0.0.1:16000"),
            ("--metrics-addr", "0.0.0.0:16020"),
            ("--readiness-addr", "0.0.0.0:16021"),
        ],
    ));
    b.extend(["--limits-store".to_owned(), store.to_owned()]);
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    let replica_b = tb.spawn_node("node-1", &b).unwrap();

    let key = ["-H", "x-api-key: alice-key"];
    let via_a = url(&tb, "/echo/shared");
    let via_b = format!("http://10.77.0.11:{}/echo/shared", edge::HTTP_LISTENER_PORT);
    for target in [&via_a, &via_b] {
        curl_until(&tb, Client::Node("node-2"), &[key[0], key[1], target], 200).unwrap_or_else(
            |e| {
                panic!(
                    "{e}\nreplica A log:\n{}\nreplica B log:\n{}",
                    weft_tests::testbed::state::tail(&replica_a.log, 15),
                    weft_tests::testbed::state::tail(&replica_b.log, 15)
                )
            },
        );
    }
    // A new second, then 10 requests alternating between the replicas: one budget of 5
    // (a token bucket refills 5 per second, so the burst's own length adds to it).
    edge::align_to_second();
    let started = std::time::Instant::now();
    let mut codes = Vec::new();
    for i in 0..10 {
        let target = if i % 2 == 0 { &via_a } else { &via_b };
        let r = curl(&tb, Client::Node("node-2"), &[key[0], key[1], target]).unwrap();
        codes.push(r.status);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = codes.iter().filter(|c| **c == 200).count();
    assert!(
        codes.iter().all(|c| *c == 200 || *c == 429),
        "only 200 and 429: {codes:?}"
    );
    assert!(
        elapsed < 0.8,
        "the burst took {elapsed:.2} s: too slow to tell"
    );
    // Separate budgets would pass all 10.
    let allowed = 5 + (elapsed * 5.0).floor() as usize;
    assert!(
        (1..=allowed).contains(&ok),
        "the replicas share one budget of 5 per second: {codes:?} in {elapsed:.2} s"
    );
}
