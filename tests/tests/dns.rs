//! Names: each enrolled pod's DNS queries (UDP and TCP to port 53, any server address) are
//! captured in the kernel to the agent's DNS proxy in the pod, which answers service names
//! with their VIPs (A and AAAA) or a headless service's endpoints, says NXDOMAIN for other
//! cluster names, and forwards the rest to a resolver the testbed runs itself (dnsmasq in
//! node-1's namespace). The pods' nameserver is an address routed nowhere, so every answer
//! comes through the capture. Bad queries get a clear answer at once. The proxy's decisions
//! are unit-tested in `agent/src/dns/`, the name table in `mesh/src/dns.rs`.

// The helpers below are not `#[test]` functions; a failed step in them should fail the test
// like any assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{agent, eventually, label_web, require_root};
use weft_tests::scenario;
use weft_tests::testbed::{Config, Testbed, TestbedGuard};

const VIP4: &str = "10.96.0.10";
const VIP6: &str = "fd00:96::10";
/// The pods' nameserver: an address nothing answers on; only the capture makes it work.
const NAMESERVER4: &str = "10.96.0.53";
const NAMESERVER6: &str = "fd00:96::53";
const SERVICE_PORT: u16 = 80;
/// What the testbed's resolver answers for `outside.test`.
const OUTSIDE_IP: &str = "10.1.2.3";
/// The node whose namespace runs the testbed's resolver, on the node's fabric address
/// (`10.77.0.11`, see the testbed's topology).
const RESOLVER_NODE: &str = "node-1";
const RESOLVER: &str = "10.77.0.11:53";

/// A 2x2 mesh whose agents forward to the testbed's resolver, with that resolver running,
/// services `web` (VIPs, endpoints pod-1b and pod-2a serving HTTP) and `db` (headless, the
/// same endpoints), and pod-1a's resolv.conf naming an unrouted server with Kubernetes'
/// search list.
fn dns_mesh(name: &str) -> (TestbedGuard, Vec<weft_tests::testbed::Background>) {
    require_root();
    let mut agent = agent();
    agent
        .extra_args
        .extend(["--dns-upstream".to_owned(), RESOLVER.to_owned()]);
    let config = Config::named(name).size(2, 2).agent(agent);
    let tb = TestbedGuard::up(&config).unwrap_or_else(|e| panic!("bringing {name} up: {e}"));
    assert_eq!(
        tb.resolver_addr(RESOLVER_NODE).unwrap().to_string(),
        RESOLVER
    );
    let resolver = tb
        .start_resolver(
            RESOLVER_NODE,
            &[("outside.test", OUTSIDE_IP.parse().unwrap())],
        )
        .unwrap();
    let servers = vec![
        resolver,
        scenario::serve_http(&tb, "pod-1b").unwrap(),
        scenario::serve_http(&tb, "pod-2a").unwrap(),
    ];
    label_web(&tb, &["pod-1b", "pod-2a"]);
    let ns = tb.pod("pod-1a").unwrap().namespace.clone();
    let file = tb.state_dir().join("inputs").join("web.yaml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {ns}\n\
             spec:\n  selector:\n    tier: web\n  clusterIP: {VIP4}\n  \
             clusterIPs: [\"{VIP4}\", \"{VIP6}\"]\n  ports:\n  \
             - {{name: http, port: {SERVICE_PORT}, targetPort: {}}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata:\n  name: db\n  namespace: {ns}\n\
             spec:\n  selector:\n    tier: web\n  clusterIP: None\n  ports:\n  \
             - {{port: {}}}\n",
            scenario::HTTP_PORT,
            scenario::HTTP_PORT
        ),
    )
    .unwrap();
    tb.apply(std::slice::from_ref(&file)).unwrap();
    tb.write_pod_resolv_conf(
        "pod-1a",
        &format!(
            "nameserver {NAMESERVER4}\nsearch {ns}.svc.cluster.local svc.cluster.local \
             cluster.local\noptions ndots:5 timeout:2 attempts:1\n"
        ),
    )
    .unwrap();
    (tb, servers)
}

/// Runs `argv` in pod-1a with its resolv.conf; (success, stdout, stderr, how long it took).
fn resolving(tb: &Testbed, argv: &[&str]) -> (bool, String, String, Duration) {
    let started = Instant::now();
    let out = tb.exec_resolving("pod-1a", argv).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        started.elapsed(),
    )
}

/// `dig` from pod-1a at `server` (captured whatever it is): (status, answers, time taken).
fn dig(tb: &Testbed, server: &str, args: &[&str]) -> (String, Vec<String>, Duration) {
    let at = format!("@{server}");
    let mut argv = vec![
        "dig",
        "+time=3",
        "+tries=1",
        "+noall",
        "+comments",
        "+answer",
        &at,
    ];
    argv.extend_from_slice(args);
    let (_, out, err, took) = resolving(tb, &argv);
    let status = out
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status from dig {args:?}: {out}\n{err}"))
        .to_owned();
    let answers = out
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    (status, answers, took)
}

#[test]
fn pods_resolve_service_names_and_other_names_through_the_testbeds_resolver() {
    let (tb, servers) = dns_mesh("weft-e2e-dns-names");
    let url = format!("http://web.default.svc.cluster.local:{SERVICE_PORT}/whoami.txt");
    let short = format!("http://web:{SERVICE_PORT}/whoami.txt");

    // The full name and the search list's short form both reach the service through its VIP.
    for target in [&url, &short] {
        eventually(&format!("curl {target}"), Duration::from_secs(30), || {
            let (ok, body, _, _) = resolving(&tb, &["curl", "-sS", "--max-time", "5", target]);
            ok && (body == "pod-1b" || body == "pod-2a")
        });
    }
    let (ok, out, err, _) = resolving(
        &tb,
        &["getent", "ahostsv4", "web.default.svc.cluster.local"],
    );
    assert!(ok && out.contains(VIP4), "getent ahostsv4: {out}\n{err}");

    // AAAA of the dual-stack service, by glibc and by dig at an IPv6 server address.
    let (ok, out, err, _) = resolving(
        &tb,
        &["getent", "ahostsv6", "web.default.svc.cluster.local"],
    );
    assert!(ok && out.contains(VIP6), "getent ahostsv6: {out}\n{err}");
    let (status, answers, _) = dig(&tb, NAMESERVER6, &["AAAA", "web.default.svc.cluster.local"]);
    assert_eq!(
        (status.as_str(), answers),
        ("NOERROR", vec![VIP6.to_owned()])
    );
    // Over TCP too.
    let (status, answers, _) = dig(
        &tb,
        NAMESERVER4,
        &["+tcp", "A", "web.default.svc.cluster.local"],
    );
    assert_eq!(
        (status.as_str(), answers),
        ("NOERROR", vec![VIP4.to_owned()])
    );

    // A headless service: its ready endpoints' own addresses.
    let (status, mut answers, _) = dig(&tb, NAMESERVER4, &["A", "db.default.svc.cluster.local"]);
    answers.sort();
    let mut want: Vec<String> = ["pod-1b", "pod-2a"]
        .iter()
        .map(|p| tb.pod(p).unwrap().ipv4.to_string())
        .collect();
    want.sort();
    assert_eq!((status.as_str(), answers), ("NOERROR", want));

    // A name outside the cluster: answered by the testbed's resolver through the proxy, over
    // UDP (glibc) and TCP (dig).
    let (ok, out, err, _) = resolving(&tb, &["getent", "ahostsv4", "outside.test"]);
    assert!(
        ok && out.contains(OUTSIDE_IP),
        "getent outside.test: {out}\n{err}"
    );
    let (status, answers, _) = dig(&tb, NAMESERVER4, &["+tcp", "A", "outside.test"]);
    assert_eq!(
        (status.as_str(), answers),
        ("NOERROR", vec![OUTSIDE_IP.to_owned()])
    );
    // The resolver saw the queries (it logs each), from the node: the agent forwarded them.
    let log = std::fs::read_to_string(&servers[0].log).unwrap();
    assert!(
        log.contains("query[A] outside.test"),
        "resolver log:\n{log}"
    );
    // What the resolver does not know, it refuses; the refusal comes back at once.
    let (status, _, took) = dig(&tb, NAMESERVER4, &["A", "elsewhere.example"]);
    assert_eq!(status, "REFUSED");
    assert!(took < Duration::from_secs(2), "refusal took {took:?}");

    // An unknown service name: NXDOMAIN at once, from the proxy (the resolver never sees it).
    let (status, answers, took) = dig(&tb, NAMESERVER4, &["A", "nope.default.svc.cluster.local"]);
    assert_eq!((status.as_str(), answers.len()), ("NXDOMAIN", 0));
    assert!(took < Duration::from_secs(2), "NXDOMAIN took {took:?}");
    let log = std::fs::read_to_string(&servers[0].log).unwrap();
    assert!(
        !log.contains("cluster.local"),
        "cluster names leaked to the resolver:\n{log}"
    );

    // The kernel counted the redirects and the restored reply sources.
    let metrics = tb.metrics("node-1").unwrap();
    for verdict in ["dns_redirected", "dns_reply_restored"] {
        let n = metrics.sum("weft_ebpf_verdicts_total", &[("verdict", verdict)]);
        assert!(n >= 1.0, "{verdict}: {n}");
    }
    // And the proxy how it answered.
    for answer in ["service", "nxdomain", "forwarded"] {
        let n = metrics.sum("weft_dns_queries_total", &[("answer", answer)]);
        assert!(n >= 1.0, "weft_dns_queries_total{{answer={answer}}}: {n}");
    }
}

/// Sends one raw DNS message (hex) from pod-1a to `server`:53 over UDP (unconnected
/// `sendto`, reply by `recvfrom`) or TCP; prints the reply (hex) and, for UDP, the address it
/// came from.
const RAW_CLIENT: &str = r#"
import binascii, socket, struct, sys
proto, server, msg = sys.argv[1], sys.argv[2], binascii.unhexlify(sys.argv[3])
family = socket.AF_INET6 if ":" in server else socket.AF_INET
if proto == "udp":
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(msg, (server, 53))
    data, peer = s.recvfrom(65535)
    print(binascii.hexlify(data).decode(), peer[0], peer[1])
else:
    s = socket.create_connection((server, 53), 3)
    s.settimeout(3)
    s.sendall(struct.pack(">H", len(msg)) + msg)
    head = s.recv(2, socket.MSG_WAITALL)
    data = s.recv(struct.unpack(">H", head)[0], socket.MSG_WAITALL)
    print(binascii.hexlify(data).decode(), server, 53)
"#;

/// A query for `name` (type A), optionally padded with an additional record of a private
/// type (65280, opaque data) to `pad` bytes in all.
fn raw_query(id: u16, name: &str, pad: Option<usize>) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, u8::from(pad.is_some())]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if let Some(total) = pad {
        let data = total - q.len() - 11;
        q.extend_from_slice(&[0, 0xFF, 0, 0, 1, 0, 0, 0, 0]);
        q.extend_from_slice(&(data as u16).to_be_bytes());
        q.extend(std::iter::repeat_n(b'x', data));
    }
    q
}

/// Sends `msg` raw to the IPv4 nameserver; (reply id, rcode, reply source, time taken).
fn send_raw(tb: &Testbed, proto: &str, msg: &[u8]) -> (u16, u8, String, Duration) {
    send_raw_to(tb, proto, NAMESERVER4, msg)
}

/// Sends `msg` raw to `server` (an IPv6 address makes an IPv6 socket).
fn send_raw_to(tb: &Testbed, proto: &str, server: &str, msg: &[u8]) -> (u16, u8, String, Duration) {
    let hex: String = msg.iter().map(|b| format!("{b:02x}")).collect();
    let (ok, out, err, took) = resolving(tb, &["python3", "-c", RAW_CLIENT, proto, server, &hex]);
    assert!(ok, "raw {proto} query got no answer: {out}\n{err}");
    let mut words = out.split_whitespace();
    let reply = words.next().unwrap();
    let from = format!("{}:{}", words.next().unwrap(), words.next().unwrap());
    let byte = |i: usize| u8::from_str_radix(&reply[2 * i..2 * i + 2], 16).unwrap();
    (
        u16::from_be_bytes([byte(0), byte(1)]),
        byte(3) & 0x0F,
        from,
        took,
    )
}

#[test]
fn malformed_and_oversized_queries_get_an_immediate_answer() {
    let (tb, _servers) = dns_mesh("weft-e2e-dns-bad");
    // Wait until the proxy answers at all (the agent is ready before this, but be sure).
    eventually("the DNS proxy to answer", Duration::from_secs(15), || {
        dig(&tb, NAMESERVER4, &["A", "web.default.svc.cluster.local"]).0 == "NOERROR"
    });
    let fast = Duration::from_secs(2);

    // The reply to an unconnected UDP send comes "from" the server the pod asked.
    let good = raw_query(0x1111, "web.default.svc.cluster.local", None);
    let (id, rcode, from, _) = send_raw(&tb, "udp", &good);
    assert_eq!((id, rcode, from.as_str()), (0x1111, 0, "10.96.0.53:53"));
    // Also from an IPv6 socket, to an IPv6 server and to an IPv4-mapped one.
    for (server, want) in [
        (NAMESERVER6, "fd00:96::53:53"),
        ("::ffff:10.96.0.53", "::ffff:10.96.0.53:53"),
    ] {
        let (id, rcode, from, _) = send_raw_to(&tb, "udp", server, &good);
        assert_eq!((id, rcode, from.as_str()), (0x1111, 0, want), "{server}");
    }

    // Malformed: the question stops in the middle of a label. FORMERR, with the query's id.
    let mut broken = raw_query(0xABCD, "web.default.svc.cluster.local", None);
    broken.truncate(18);
    for proto in ["udp", "tcp"] {
        let (id, rcode, _, took) = send_raw(&tb, proto, &broken);
        assert_eq!((id, rcode), (0xABCD, 1), "{proto}");
        assert!(took < fast, "{proto} FORMERR took {took:?}");
    }

    // Oversized: 600 bytes without EDNS over UDP, 5000 bytes over TCP. REFUSED.
    let big = raw_query(0x2222, "example.com", Some(600));
    let (id, rcode, _, took) = send_raw(&tb, "udp", &big);
    assert_eq!((id, rcode), (0x2222, 5));
    assert!(took < fast, "oversized UDP took {took:?}");
    let huge = raw_query(0x3333, "example.com", Some(5000));
    let (id, rcode, _, took) = send_raw(&tb, "tcp", &huge);
    assert_eq!((id, rcode), (0x3333, 5));
    assert!(took < fast, "oversized TCP took {took:?}");

    let metrics = tb.metrics("node-1").unwrap();
    for (answer, transport, want) in [
        ("formerr", "udp", 1.0),
        ("formerr", "tcp", 1.0),
        ("refused", "udp", 1.0),
        ("refused", "tcp", 1.0),
    ] {
        let labels = [("answer", answer), ("transport", transport)];
        let n = metrics.sum("weft_dns_queries_total", &labels);
        assert_eq!(n, want, "weft_dns_queries_total{labels:?}");
    }

    // The proxy still serves after all that.
    let (status, answers, _) = dig(&tb, NAMESERVER4, &["A", "web.default.svc.cluster.local"]);
    assert_eq!(
        (status.as_str(), answers),
        ("NOERROR", vec![VIP4.to_owned()])
    );
}
