//! Policy is evaluated again when it changes: live connections a new DENY no longer allows
//! are closed and counted, across nodes (HBONE) and on one node, while allowed ones go on.
//! Same-node delivery holds a source with no workload entry (so no identity) to STRICT, and
//! an HBONE stream from a workload's address must prove that workload's identity.
//! The semantics of each rule are table-tested in `mesh/src/policy/table_tests.rs`.

// The helpers below are not `#[test]` functions; a failed step in them should fail the test
// like any assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::pki::{NetnsSockets, TD, id_of, svid};
use common::{config_dump, eventually, mesh};
use rcgen::{Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_link::hbone::{ClientOptions, ConnectRequest, HboneClient};
use weft_link::identity::SpiffeId;
use weft_link::tls::{CertResolver, ClientTls, TrustBundle};
use weft_tests::scenario;
use weft_tests::testbed::{Background, Testbed, control};

const ECHO_PORT: u16 = 7000;
const CLOSED_BY_POLICY: &str = "weft_connections_closed_by_policy_total";

/// One long-lived connection from `pod` to `dst`: a line every 200 ms, its log says `ok <n>`
/// per echo and `closed <why>` when the connection ends (end of stream or an error, never a
/// read timeout short of 60 s, so a stalled connection does not pass for a closed one).
fn long_lived(tb: &Testbed, pod: &str, dst: SocketAddr) -> (Background, PathBuf) {
    let log = tb.state_dir().join(format!("long-lived-{pod}.log"));
    let script = format!(
        "import socket, sys, time\n\
         s = socket.create_connection(('{ip}', {port}), timeout=60)\n\
         f = s.makefile('rw')\n\
         for i in range(3000):\n\
         \x20   try:\n\
         \x20       f.write('ping %d\\n' % i); f.flush()\n\
         \x20       got = f.readline()\n\
         \x20   except OSError as e:\n\
         \x20       print('closed', type(e).__name__, e, flush=True); sys.exit(0)\n\
         \x20   if got == '':\n\
         \x20       print('closed eof', flush=True); sys.exit(0)\n\
         \x20   print('ok', i, flush=True)\n\
         \x20   time.sleep(0.2)\n",
        ip = dst.ip(),
        port = dst.port(),
    );
    let process = tb
        .spawn(
            pod,
            &[
                "sh",
                "-c",
                &format!("python3 -c \"$0\" > {}", log.display()),
                &script,
            ],
        )
        .unwrap();
    (process, log)
}

fn read(log: &PathBuf) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

fn echoes(log: &PathBuf) -> usize {
    read(log).lines().filter(|l| l.starts_with("ok ")).count()
}

#[test]
fn a_new_deny_closes_the_live_connections_it_denies_and_counts_them() {
    let tb = mesh("weft-e2e-pol-recheck", 2, 2);
    let _server = scenario::serve_line_echo(&tb, "pod-2a", ECHO_PORT).unwrap();
    let server = tb.pod("pod-2a").unwrap();
    let (ns, dst) = (
        server.namespace.clone(),
        SocketAddr::from((server.ipv4, ECHO_PORT)),
    );
    let ip = |pod: &str| tb.pod(pod).unwrap().ipv4;

    // Across nodes (HBONE), two of them; on the server's node (same-node delivery), one.
    let (_a, denied_remote) = long_lived(&tb, "pod-1a", dst);
    let (_b, allowed) = long_lived(&tb, "pod-1b", dst);
    let (_c, denied_local) = long_lived(&tb, "pod-2b", dst);
    let all = [&denied_remote, &allowed, &denied_local];
    eventually("every connection to echo", Duration::from_secs(20), || {
        all.iter().all(|log| echoes(log) >= 2)
    });

    let deny = tb.state_dir().join("inputs").join("deny-two.yaml");
    std::fs::create_dir_all(deny.parent().unwrap()).unwrap();
    std::fs::write(
        &deny,
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  \
             name: deny-two\n  namespace: {ns}\nspec:\n  selector:\n    matchLabels:\n      \
             app: pod-2a\n  action: DENY\n  rules:\n  - from:\n    - source:\n        \
             ipBlocks: [\"{}/32\", \"{}/32\"]\n",
            ip("pod-1a"),
            ip("pod-2b"),
        ),
    )
    .unwrap();
    tb.apply(std::slice::from_ref(&deny)).unwrap();
    eventually("the DENY at node-2", Duration::from_secs(15), || {
        config_dump(&tb, "node-2")["policies"].as_u64() == Some(1)
    });

    for log in [&denied_remote, &denied_local] {
        eventually(
            "the denied connection to close",
            Duration::from_secs(15),
            || read(log).contains("closed"),
        );
        let out = read(log);
        assert!(
            out.contains("closed eof") || out.contains("Reset") || out.contains("Broken"),
            "closed, but not by the agent: {out}"
        );
    }
    // The allowed one goes on echoing after the others were closed.
    let before = echoes(&allowed);
    eventually(
        "the allowed connection to go on",
        Duration::from_secs(10),
        || echoes(&allowed) >= before + 3,
    );
    assert!(!read(&allowed).contains("closed"), "{}", read(&allowed));

    let closed = tb
        .metrics("node-2")
        .unwrap()
        .sum(CLOSED_BY_POLICY, &[("reason", "authorization_policy")]);
    assert_eq!(closed, 2.0, "{CLOSED_BY_POLICY} at node-2");
}

#[test]
fn a_same_node_source_without_a_workload_entry_is_held_to_strict() {
    let tb = mesh("weft-e2e-pol-strict", 1, 2);
    let _server = scenario::serve_http(&tb, "pod-1a").unwrap();
    let server = tb.pod("pod-1a").unwrap();
    let (ns, ip) = (server.namespace.clone(), server.ipv4.into());
    let whoami = scenario::url(ip, scenario::HTTP_PORT, "/whoami.txt");

    let strict = tb.state_dir().join("inputs").join("strict.yaml");
    std::fs::create_dir_all(strict.parent().unwrap()).unwrap();
    std::fs::write(
        &strict,
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  \
             name: strict\n  namespace: {ns}\nspec:\n  mtls:\n    mode: STRICT\n"
        ),
    )
    .unwrap();
    tb.apply(std::slice::from_ref(&strict)).unwrap();
    eventually("STRICT at node-1", Duration::from_secs(15), || {
        config_dump(&tb, "node-1")["policies"].as_u64() == Some(1)
    });
    // With its workload entry, pod-1b has an identity on the node: admitted.
    scenario::curl_whoami(&tb, "pod-1b", "pod-1a", ip).unwrap();

    // Its workload entry goes while the pod stays enrolled and captured on the node.
    let remaining: Vec<_> = tb
        .pods()
        .iter()
        .filter(|p| p.name != "pod-1b")
        .cloned()
        .collect();
    let staged = tb.state_dir().join("pods.yaml.staged");
    std::fs::write(&staged, control::workload_documents(&remaining, &[])).unwrap();
    std::fs::rename(
        &staged,
        control::config_dir(tb.state_dir()).join(control::PODS_FILE),
    )
    .unwrap();
    eventually("pod-1b's workload to go", Duration::from_secs(15), || {
        config_dump(&tb, "node-1")["workloads"]
            .as_array()
            .is_some_and(|w| w.len() == remaining.len())
    });

    let out = scenario::curl(&tb, "pod-1b", &whoami).unwrap();
    assert!(
        !out.status.success(),
        "a same-node source with no workload entry got through STRICT: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let denied = tb.metrics("node-1").unwrap().sum(
        "weft_connections_denied_total",
        &[("reason", "peer_authentication_strict")],
    );
    assert!(denied >= 1.0, "denials counted: {denied}");
}

/// An HBONE stream from pod-1a's address proving another identity of the mesh is refused,
/// so it is never matched as pod-1a (its pod selectors, its IP blocks).
#[test]
fn a_stream_from_a_workload_address_with_another_identity_is_refused() {
    let tb = mesh("weft-e2e-pol-source", 2, 1);
    let _server = scenario::serve_http(&tb, "pod-2a").unwrap();
    let control = tb.state_dir().join("control");
    let root_pem = std::fs::read_to_string(control.join("root-cert.pem")).unwrap();
    let root_key =
        KeyPair::from_pem(&std::fs::read_to_string(control.join("root-key.pem")).unwrap()).unwrap();
    let mesh_ca = Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
    let td = TD.parse().unwrap();
    let bundle = Arc::new(TrustBundle::from_pem(td, root_pem.as_bytes()).unwrap());
    let source = tb.pod("pod-1a").unwrap();
    let ns = source.namespace.clone();
    let netns = source.netns_path.clone();
    let server_id = id_of(&tb, "pod-2a");
    let pod_ip: IpAddr = tb.pod("pod-2a").unwrap().ipv4.into();
    let app = SocketAddr::new(pod_ip, scenario::HTTP_PORT);
    let now = time::OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // From pod-1a's own address (its network namespace), as its agent would connect.
        let connect = |id: SpiffeId| {
            let tls = ClientTls::new(
                Arc::new(CertResolver::new(svid(&mesh_ca, &id, now - hour, 2 * hour))),
                bundle.clone(),
            );
            let req = ConnectRequest::new(SocketAddr::new(pod_ip, 15008), server_id.clone(), app);
            let hbone = HboneClient::new(
                Arc::new(NetnsSockets(netns.clone())),
                ClientOptions::default(),
            );
            async move {
                hbone.connect(&tls, req).await.map_err(|e| {
                    format!(
                        "{} [status {:?}]",
                        weft_link::error_chain(&e),
                        e.status().map(|s| s.as_u16())
                    )
                })
            }
        };
        // The control case: pod-1a's own identity gets through.
        let mut own = connect(id_of(&tb, "pod-1a")).await.unwrap();
        own.write_all(b"GET /whoami.txt HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        own.read_to_end(&mut out).await.unwrap();
        assert!(String::from_utf8_lossy(&out).ends_with("pod-2a"));

        let other = SpiffeId::new(TD.parse().unwrap(), &ns, "someone-else").unwrap();
        let err = connect(other)
            .await
            .expect_err("a stream claiming pod-1a's address with another identity got through");
        assert!(err.contains("[status Some(401)]"), "{err}");
    });
    assert!(
        tb.metrics("node-2").unwrap().sum(
            "weft_connections_denied_total",
            &[("reason", "authorization_policy")]
        ) >= 1.0
    );
}
