//! Identity and mutual TLS between nodes: what crosses the wire, who the destination believes
//! the source is, which clients it refuses, and PeerAuthentication for plaintext. Rotation
//! under a live connection is in `rotation.rs`.

// The helpers below are not `#[test]` functions; a failed step in them should fail the test
// like any assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::pki::{NetnsSockets, TD, id_of, svid};
use common::{agent, config_dump, eventually, mesh, require_root};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_link::hbone::{ClientOptions, ConnectRequest, HboneClient, SocketFactory};
use weft_link::identity::{SpiffeId, TrustDomain};
use weft_link::tls::{CertResolver, Certificate, ClientTls, TrustBundle};
use weft_tests::scenario::{self, CONNECTIONS_OPENED};
use weft_tests::testbed::{Config, Testbed, TestbedGuard};

fn write_input(tb: &Testbed, name: &str, yaml: &str) -> std::path::PathBuf {
    let dir = tb.state_dir().join("inputs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Applies `yaml` and waits until `node`'s agent holds `policies` policies.
fn apply_policy(tb: &Testbed, name: &str, yaml: &str, node: &str, policies: u64) {
    let path = write_input(tb, name, yaml);
    tb.apply(std::slice::from_ref(&path)).unwrap();
    eventually("the policy at the agent", Duration::from_secs(15), || {
        config_dump(tb, node)["policies"].as_u64() == Some(policies)
    });
}

// === proof on the wire ===

#[test]
fn cross_node_bytes_travel_in_mtls_hbone_and_the_destination_knows_the_source() {
    let tb = mesh("weft-e2e-wire", 2, 1);
    let _server = scenario::serve_http(&tb, "pod-2a").unwrap();
    let pcap = tb.state_dir().join("node-1-eth0.pcap");
    let pcap_arg = pcap.to_string_lossy().into_owned();
    let capture = tb
        .spawn_node(
            "node-1",
            &[
                "tcpdump",
                "-i",
                "eth0",
                "--immediate-mode",
                "-U",
                "-n",
                "-Z",
                "root",
                "-w",
                &pcap_arg,
                "tcp",
            ],
        )
        .unwrap();
    eventually("tcpdump to start", Duration::from_secs(10), || {
        std::fs::read_to_string(&capture.log).is_ok_and(|l| l.contains("listening on"))
    });

    let marker = format!(
        "weft-marker-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let ip: IpAddr = tb.pod("pod-2a").unwrap().ipv4.into();
    let out = scenario::curl(
        &tb,
        "pod-1a",
        &scenario::url(ip, scenario::HTTP_PORT, &format!("/{marker}")),
    )
    .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("File not found"),
        "the request must reach pod-2a's server (a 404 for the marker path): {body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    capture.stop(Duration::from_secs(5)).unwrap();

    let mut bytes = Vec::new();
    std::fs::File::open(&pcap)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    assert!(
        !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the marker crossed the node link in clear text"
    );
    let read = |filter: &str| {
        let out = std::process::Command::new("tcpdump")
            .args(["-r", &pcap_arg, "-nn", filter])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            if out.status.success() {
                String::new()
            } else {
                format!(
                    "(tcpdump -r failed: {})",
                    String::from_utf8_lossy(&out.stderr)
                )
            }
        )
    };
    // A TLS handshake record (content type 22) sent to port 15008.
    let handshakes = read("tcp dst port 15008 and tcp[((tcp[12:1] & 0xf0) >> 2):1] = 0x16");
    assert!(
        !handshakes.trim().is_empty(),
        "no TLS handshake to port 15008 on the node link; tcpdump said {:?}; the capture \
         ({} bytes):\n{}",
        std::fs::read_to_string(&capture.log),
        bytes.len(),
        read("tcp")
    );
    assert!(
        read("tcp port 8000").trim().is_empty(),
        "traffic to the application port crossed the node link outside the tunnel"
    );

    // The destination's agent names the source by its proved identity.
    let source = id_of(&tb, "pod-1a");
    eventually("the destination's metrics", Duration::from_secs(10), || {
        tb.metrics("node-2").unwrap().sum(
            CONNECTIONS_OPENED,
            &[
                ("reporter", "destination"),
                ("source_principal", source.as_str()),
                ("destination_workload", "pod-2a"),
                ("connection_security_policy", "mutual_tls"),
            ],
        ) >= 1.0
    });
    // Its certificate for pod-2a is valid and expires within the CA's default day.
    let metrics = tb.metrics("node-2").unwrap();
    assert!(
        metrics.sum("weft_certificates", &[("phase", "valid")]) >= 1.0,
        "node-2 holds no valid certificate"
    );
    let expiry = metrics.sum(
        "weft_certificate_expiration_timestamp_seconds",
        &[("identity", id_of(&tb, "pod-2a").as_str())],
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now && expiry <= now + 24.0 * 3600.0 + 60.0,
        "pod-2a's certificate expiry {expiry} is not within a day of {now}"
    );
    let log_path = tb.state_dir().join("node-2").join("agent.log");
    eventually(
        "the destination's access log",
        Duration::from_secs(10),
        || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            log.lines()
                .any(|l| l.contains("tunnel closed") && l.contains(source.as_str()))
        },
    );
}

// === refusals ===

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params
}

struct Client {
    netns: std::path::PathBuf,
    bundle: Arc<TrustBundle>,
}

impl Client {
    /// Opens a tunnel to `authority` through `pod_ip:15008` presenting `cert`, expecting the
    /// server to be `expected`; returns the HTTP status (200 when opened) or the error text.
    async fn connect(
        &self,
        cert: Certificate,
        expected: &SpiffeId,
        pod_ip: IpAddr,
        authority: SocketAddr,
    ) -> Result<weft_link::hbone::HboneStream, String> {
        let tls = ClientTls::new(Arc::new(CertResolver::new(cert)), self.bundle.clone());
        let req = ConnectRequest::new(SocketAddr::new(pod_ip, 15008), expected.clone(), authority);
        // A client per attempt: a pooled connection would skip the handshake under test.
        let hbone = HboneClient::new(
            Arc::new(NetnsSockets(self.netns.clone())),
            ClientOptions::default(),
        );
        hbone.connect(&tls, req).await.map_err(|e| {
            format!(
                "{} [status {:?}]",
                weft_link::error_chain(&e),
                e.status().map(|s| s.as_u16())
            )
        })
    }
}

async fn get_whoami(mut stream: weft_link::hbone::HboneStream) -> String {
    stream
        .write_all(b"GET /whoami.txt HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_destination_refuses_foreign_expired_unexpected_and_malformed_clients() {
    let tb = mesh("weft-e2e-refuse", 2, 1);
    let _server = scenario::serve_http(&tb, "pod-2a").unwrap();
    let ns = tb.pod("pod-2a").unwrap().namespace.clone();
    let allowed = id_of(&tb, "pod-1a");
    let allowed_short = allowed.as_str().trim_start_matches("spiffe://").to_owned();
    // pod-2a accepts only pod-1a's identity.
    apply_policy(
        &tb,
        "only-pod-1a.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  \
             name: only-pod-1a\n  namespace: {ns}\nspec:\n  selector:\n    matchLabels:\n      \
             app: pod-2a\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        \
             principals: [\"{allowed_short}\"]\n"
        ),
        "node-2",
        1,
    );

    let control = tb.state_dir().join("control");
    let root_pem = std::fs::read_to_string(control.join("root-cert.pem")).unwrap();
    let root_key =
        KeyPair::from_pem(&std::fs::read_to_string(control.join("root-key.pem")).unwrap()).unwrap();
    let mesh_ca = Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
    let foreign_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let foreign_ca = Issuer::new(ca_params("someone else's root"), foreign_key);

    let td: TrustDomain = TD.parse().unwrap();
    let bundle = Arc::new(TrustBundle::from_pem(td.clone(), root_pem.as_bytes()).unwrap());
    let node1 = tb.node("node-1").unwrap();
    let client = Client {
        netns: Path::new("/run/netns").join(&node1.netns),
        bundle,
    };
    let server_id = id_of(&tb, "pod-2a");
    let pod_ip: IpAddr = tb.pod("pod-2a").unwrap().ipv4.into();
    let app = SocketAddr::new(pod_ip, scenario::HTTP_PORT);
    let now = time::OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let intruder = SpiffeId::new(td.clone(), &ns, "intruder").unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The control case: the allowed identity with a mesh certificate gets through.
        let ok = client
            .connect(
                svid(&mesh_ca, &allowed, now - hour, 2 * hour),
                &server_id,
                pod_ip,
                app,
            )
            .await
            .unwrap();
        assert!(get_whoami(ok).await.ends_with("pod-2a"));

        let foreign = client
            .connect(
                svid(&foreign_ca, &allowed, now - hour, 2 * hour),
                &server_id,
                pod_ip,
                app,
            )
            .await;
        assert!(
            foreign.is_err(),
            "a certificate from another CA was accepted"
        );

        let expired = client
            .connect(
                svid(&mesh_ca, &allowed, now - 3 * hour, hour),
                &server_id,
                pod_ip,
                app,
            )
            .await;
        assert!(expired.is_err(), "an expired certificate was accepted");

        let unexpected = client
            .connect(
                svid(&mesh_ca, &intruder, now - hour, 2 * hour),
                &server_id,
                pod_ip,
                app,
            )
            .await;
        let err = unexpected.expect_err("an identity policy does not allow got through");
        assert!(err.contains("[status Some(401)]"), "{err}");

        // A closed port in the pod: the tunnel is refused with 503.
        let closed = client
            .connect(
                svid(&mesh_ca, &allowed, now - hour, 2 * hour),
                &server_id,
                pod_ip,
                SocketAddr::new(pod_ip, 9),
            )
            .await;
        let err = closed.expect_err("a tunnel to a closed port opened");
        assert!(err.contains("[status Some(503)]"), "{err}");

        // An authority that is not this pod's address: 400.
        let elsewhere = client
            .connect(
                svid(&mesh_ca, &allowed, now - hour, 2 * hour),
                &server_id,
                pod_ip,
                SocketAddr::new("10.78.9.9".parse().unwrap(), 80),
            )
            .await;
        let err = elsewhere.expect_err("a tunnel to another address opened");
        assert!(err.contains("[status Some(400)]"), "{err}");

        // Garbage and a truncated TLS hello: the connection is closed, nothing else happens.
        for junk in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01][..],
        ] {
            let socket = NetnsSockets(Path::new("/run/netns").join(&node1.netns))
                .new_tcp(SocketAddr::new(pod_ip, 15008))
                .unwrap();
            let mut stream = socket
                .connect(SocketAddr::new(pod_ip, 15008))
                .await
                .unwrap();
            stream.write_all(junk).await.unwrap();
            stream.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut rest))
                .await
                .expect("the agent kept a junk connection open");
            // Closed, possibly after a TLS alert; never an HTTP answer.
            assert!(read.is_err() || !String::from_utf8_lossy(&rest).contains("HTTP/"));
        }

        // After all that, the allowed client still gets through.
        let again = client
            .connect(
                svid(&mesh_ca, &allowed, now - hour, 2 * hour),
                &server_id,
                pod_ip,
                app,
            )
            .await
            .unwrap();
        assert!(get_whoami(again).await.ends_with("pod-2a"));
    });

    // Through the agents: the source agent opens its tunnels without waiting for the answer,
    // so a refusal reaches it after the relay has started. It is still reported as the
    // failure to open the tunnel, and the pod's connection is closed without a reply.
    let out = scenario::curl(&tb, "pod-1a", &scenario::url(pod_ip, 9, "/")).unwrap();
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "a connection to a closed port in pod-2a got an answer: {out:?}"
    );
    let src_log = tb.state_dir().join("node-1").join("agent.log");
    eventually(
        "the source agent's refusal",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&src_log).is_ok_and(|log| {
                log.lines().any(|l| {
                    l.contains("opening an HBONE tunnel failed")
                        && l.contains(&format!("{pod_ip}:9"))
                        && l.contains("HTTP 503")
                })
            })
        },
    );
    let refused = tb.metrics("node-1").unwrap().sum(
        scenario::CONNECTIONS_CLOSED,
        &[
            ("reporter", "source"),
            ("destination_workload", "pod-2a"),
            ("response_flags", "UF"),
        ],
    );
    assert_eq!(refused, 1.0, "the refused connection is closed with UF");

    // Closing the client's connections (their driver tasks live in the runtime) ends them.
    drop(rt);
    // No tunnel or task outlives its connection.
    let active = || {
        tb.metrics("node-2")
            .unwrap()
            .sum("weft_active_connections", &[])
    };
    let start = Instant::now();
    while active() != 0.0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the destination agent still holds {} connections:\n{}",
            active(),
            std::fs::read_to_string(tb.state_dir().join("node-2").join("agent.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(tb.node("node-2").unwrap().agent.is_some());
}

// === PeerAuthentication ===

#[test]
fn strict_peer_authentication_refuses_plaintext_and_permissive_admits_it() {
    require_root();
    let config = Config::named("weft-e2e-peerauth")
        .size(2, 2)
        .agent(agent())
        .unenrolled(&["pod-1b"]);
    let tb = TestbedGuard::up(&config).unwrap();
    let _server = scenario::serve_http(&tb, "pod-2a").unwrap();
    let ip: IpAddr = tb.pod("pod-2a").unwrap().ipv4.into();
    let ns = tb.pod("pod-2a").unwrap().namespace.clone();
    let whoami = scenario::url(ip, scenario::HTTP_PORT, "/whoami.txt");

    // PERMISSIVE (the default): plaintext from outside the mesh gets through the agent.
    let out = scenario::curl(&tb, "pod-1b", &whoami).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pod-2a");
    eventually(
        "the plaintext connection in the metrics",
        Duration::from_secs(10),
        || {
            tb.metrics("node-2").unwrap().sum(
                CONNECTIONS_OPENED,
                &[
                    ("reporter", "destination"),
                    ("destination_workload", "pod-2a"),
                    ("connection_security_policy", "none"),
                ],
            ) >= 1.0
        },
    );

    apply_policy(
        &tb,
        "strict.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  \
             name: strict\n  namespace: {ns}\nspec:\n  mtls:\n    mode: STRICT\n"
        ),
        "node-2",
        1,
    );
    let out = scenario::curl(&tb, "pod-1b", &whoami).unwrap();
    assert!(!out.status.success(), "plaintext got through STRICT");
    // The mesh path still works.
    scenario::curl_whoami(&tb, "pod-1a", "pod-2a", ip).unwrap();
    assert!(
        tb.metrics("node-2").unwrap().sum(
            "weft_connections_denied_total",
            &[("reason", "peer_authentication_strict")]
        ) >= 1.0
    );

    let path = tb.state_dir().join("inputs").join("strict.yaml");
    tb.delete(std::slice::from_ref(&path)).unwrap();
    eventually("the policy to go", Duration::from_secs(15), || {
        config_dump(&tb, "node-2")["policies"].as_u64() == Some(0)
    });
    let out = scenario::curl(&tb, "pod-1b", &whoami).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pod-2a");
}
