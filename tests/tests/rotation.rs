//! Certificate rotation under a live connection: with a one-minute lifetime, a connection
//! opened before rotation keeps working across the rotation on both nodes until the
//! certificate it was opened with expires, when the destination closes it (a tunnel lives no
//! longer than the certificate that admitted it); a new handshake presents the newest
//! certificate.

// The helpers below are not `#[test]` functions; a failed step in them should fail the test
// like any assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::{NetnsSockets, TD, id_of, svid};
use common::{agent, config_dump, eventually, require_root};
use rcgen::{Issuer, KeyPair};
use weft_link::hbone::SocketFactory;
use weft_link::identity::SpiffeId;
use weft_link::tls::{CertResolver, ClientTls, TrustBundle};
use weft_tests::scenario;
use weft_tests::testbed::{Config, Testbed, TestbedGuard};

/// `not_before` (unix seconds) of `node`'s certificate for `id`.
fn cert_not_before(tb: &Testbed, node: &str, id: &SpiffeId) -> Option<u64> {
    config_dump(tb, node)["certificates"]
        .as_array()?
        .iter()
        .find(|c| c["identity"] == id.as_str())?["not_before_unix"]
        .as_u64()
}

#[test]
fn a_connection_crosses_a_rotation_and_ends_when_its_certificate_expires_and_new_connections_use_new_certificates()
 {
    require_root();
    let config = Config::named("weft-e2e-rotate")
        .size(2, 1)
        .agent(agent())
        .control_args(&["--cert-ttl", "1m"]);
    let tb = TestbedGuard::up(&config).unwrap();
    let _server = scenario::serve_http(&tb, "pod-2a").unwrap();
    let echo = scenario::serve_line_echo(&tb, "pod-2a", 7000).unwrap();
    let pod_ip = tb.pod("pod-2a").unwrap().ipv4;
    let src = id_of(&tb, "pod-1a");
    let dst = id_of(&tb, "pod-2a");
    let first = |node: &str, id: &SpiffeId| {
        let mut seen = None;
        eventually("a first certificate", Duration::from_secs(20), || {
            seen = cert_not_before(&tb, node, id);
            seen.is_some()
        });
        seen.unwrap()
    };
    let (src_0, dst_0) = (first("node-1", &src), first("node-2", &dst));

    // One connection, one line every second, for as long as two rotations take.
    let log = tb.state_dir().join("long-lived.log");
    let script = format!(
        "import socket, sys, time\n\
         s = socket.create_connection(('{pod_ip}', 7000), timeout=10)\n\
         f = s.makefile('rw')\n\
         for i in range(100):\n\
         \x20   f.write('ping %d\\n' % i); f.flush()\n\
         \x20   got = f.readline()\n\
         \x20   if got != 'ping %d\\n' % i:\n\
         \x20       print('broken at', i, repr(got), flush=True); sys.exit(1)\n\
         \x20   print('ok', i, flush=True)\n\
         \x20   time.sleep(1)\n\
         print('done', flush=True)\n"
    );
    let long_lived = tb
        .spawn(
            "pod-1a",
            &[
                "sh",
                "-c",
                &format!("python3 -c \"$0\" > {}", log.display()),
                &script,
            ],
        )
        .unwrap();

    // Two rotations on both sides (renewal at half of a one-minute lifetime), no faster: a
    // certificate is used for half its life, not replaced as soon as it arrives.
    let mut rotations: (Vec<Instant>, Vec<Instant>) = (Vec::new(), Vec::new());
    let (mut last_src, mut last_dst) = (src_0, dst_0);
    let echoed = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("ok "))
            .count()
    };
    // How far the connection had got when both sides had rotated once.
    let mut at_first_rotation = None;
    eventually(
        "two rotations on both nodes",
        Duration::from_secs(100),
        || {
            if let Some(now) = cert_not_before(&tb, "node-1", &src)
                && now != last_src
            {
                rotations.0.push(Instant::now());
                last_src = now;
            }
            if let Some(now) = cert_not_before(&tb, "node-2", &dst)
                && now != last_dst
            {
                rotations.1.push(Instant::now());
                last_dst = now;
            }
            if at_first_rotation.is_none() && !rotations.0.is_empty() && !rotations.1.is_empty() {
                at_first_rotation = Some(echoed());
            }
            rotations.0.len() >= 2 && rotations.1.len() >= 2
        },
    );
    for times in [&rotations.0, &rotations.1] {
        let gap = times[1].duration_since(times[0]);
        assert!(gap >= Duration::from_secs(20), "rotations {gap:?} apart");
    }

    // A new connection works, and the destination presents its newest certificate.
    scenario::curl_whoami(&tb, "pod-1a", "pod-2a", pod_ip.into()).unwrap();
    let presented = presented_not_before(&tb, "node-1", pod_ip.into(), &dst);
    assert_eq!(
        Some(presented),
        cert_not_before(&tb, "node-2", &dst),
        "a new handshake must present the current certificate"
    );

    let start = Instant::now();
    let finished = |out: &str| out.contains("done") || out.contains("broken");
    while !finished(&std::fs::read_to_string(&log).unwrap_or_default()) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the long-lived connection did not finish: {:?}; its stderr: {:?}\nnode-1:\n{}\nnode-2:\n{}",
            std::fs::read_to_string(&log),
            std::fs::read_to_string(&long_lived.log),
            agent_log_tail(&tb, "node-1"),
            agent_log_tail(&tb, "node-2"),
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // It went on across the first rotation of both sides, then ended when the certificate
    // it was opened with expired: closed by the destination, and counted there.
    let out = std::fs::read_to_string(&log).unwrap();
    let at_first_rotation = at_first_rotation.unwrap();
    assert!(
        echoed() >= at_first_rotation + 3,
        "the connection stopped at the rotation ({at_first_rotation} echoes then): {out}"
    );
    assert!(
        out.contains("broken"),
        "the connection outlived its certificate: {out}"
    );
    let expired = tb.metrics("node-2").unwrap().sum(
        "weft_connections_closed_by_policy_total",
        &[("reason", "certificate_expired")],
    );
    assert!(
        expired >= 1.0,
        "closed, but not for the expired certificate: {out}"
    );
    drop(long_lived);
    drop(echo);
}

/// The agent's log lines worth reading after a failure.
fn agent_log_tail(tb: &Testbed, node: &str) -> String {
    let log =
        std::fs::read_to_string(tb.state_dir().join(node).join("agent.log")).unwrap_or_default();
    log.lines()
        .filter(|l| {
            l.contains("WARN")
                || l.contains("ERROR")
                || l.contains("tunnel")
                || l.contains("connection")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `not_before` of the certificate `pod_ip:15008` presents to a new handshake.
fn presented_not_before(tb: &Testbed, from_node: &str, pod_ip: IpAddr, expected: &SpiffeId) -> u64 {
    let control = tb.state_dir().join("control");
    let root_pem = std::fs::read_to_string(control.join("root-cert.pem")).unwrap();
    let netns = Path::new("/run/netns").join(&tb.node(from_node).unwrap().netns);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // Any client certificate of the mesh will do; the server's is what we look at.
        let root_key =
            KeyPair::from_pem(&std::fs::read_to_string(control.join("root-key.pem")).unwrap())
                .unwrap();
        let issuer = Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let me = svid(
            &issuer,
            expected,
            now - time::Duration::hours(1),
            time::Duration::hours(2),
        );
        let bundle =
            Arc::new(TrustBundle::from_pem(TD.parse().unwrap(), root_pem.as_bytes()).unwrap());
        let tls = ClientTls::new(Arc::new(CertResolver::new(me)), bundle);
        let config = tls.config_for(std::slice::from_ref(expected)).unwrap();
        let socket = NetnsSockets(netns)
            .new_tcp(SocketAddr::new(pod_ip, 15008))
            .unwrap();
        let tcp = socket
            .connect(SocketAddr::new(pod_ip, 15008))
            .await
            .unwrap();
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = rustls::pki_types::ServerName::try_from("weft.invalid").unwrap();
        let stream = connector.connect(name, tcp).await.unwrap();
        let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        parsed.validity().not_before.timestamp() as u64
    })
}
