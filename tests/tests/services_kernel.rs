//! Service VIPs translated in the kernel for pods the agent does not proxy: each agent attaches
//! the service programs at its node's pods cgroup (`--service-cgroup`), so an unenrolled pod's
//! `connect()` to a VIP goes straight to one endpoint, `getpeername()` still says the VIP, a
//! VIP without endpoints is refused at once (EPERM), and a change of the service's endpoints
//! is followed by the next connection. An enrolled pod's connection to the same VIP is still
//! the agent's: its pod-level capture program runs before the service program of the parent
//! cgroup. The programs themselves are tested on their own in `agent/tests/services_kernel.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{agent, apply_web_services, eventually, label_web, require_root};
use weft_tests::scenario;
use weft_tests::testbed::{Config, Testbed, TestbedGuard};

const VIP4: &str = "10.96.7.10";
const VIP6: &str = "fd00:96::7:10";
const EMPTY_VIP: &str = "10.96.7.11";
const SERVICE_PORT: u16 = 80;
/// The unenrolled client, on node-1.
const CLIENT: &str = "pod-1a";

/// Which pod answered `curl` to the VIP from `pod`, if any.
fn whoami(tb: &Testbed, pod: &str, vip: &str) -> Option<String> {
    let url = scenario::url(vip.parse().unwrap(), SERVICE_PORT, "/whoami.txt");
    let out = tb
        .exec(pod, &["curl", "-sS", "-g", "--max-time", "3", &url])
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `connect()` to `vip:port` from `pod` in Python: `ok <peer address> <peer port>` or
/// `err <errno>`, and how long it took.
fn dial(tb: &Testbed, pod: &str, vip: &str, port: u16) -> (String, Duration) {
    let family = if vip.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let script = format!(
        "import socket\ns = socket.socket(socket.{family}, socket.SOCK_STREAM)\n\
         s.settimeout(5)\ntry:\n    s.connect(('{vip}', {port}))\n    \
         p = s.getpeername()\n    print('ok', p[0], p[1])\nexcept OSError as e:\n    \
         print('err', e.errno)\n"
    );
    let started = Instant::now();
    let out = tb.exec(pod, &["python3", "-c", &script]).unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "python3 in {pod}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (String::from_utf8_lossy(&out.stdout).trim().to_owned(), took)
}

fn verdicts(tb: &Testbed, node: &str, verdict: &str) -> f64 {
    tb.metrics(node)
        .unwrap()
        .sum("weft_ebpf_verdicts_total", &[("verdict", verdict)])
}

#[test]
fn an_unenrolled_pod_reaches_a_vip_through_the_kernel() {
    require_root();
    let config = Config::named("weft-e2e-bpf-svc")
        .size(2, 2)
        .unenrolled(&[CLIENT])
        .agent(agent());
    let tb = TestbedGuard::up(&config).unwrap();
    let _same = scenario::serve_http(&tb, "pod-1b").unwrap();
    let _remote = scenario::serve_http(&tb, "pod-2a").unwrap();
    label_web(&tb, &["pod-1b", "pod-2a"]);
    let ns = tb.pod(CLIENT).unwrap().namespace.clone();

    apply_web_services(&tb, &ns, VIP4, VIP6, EMPTY_VIP, SERVICE_PORT);

    // Both endpoints answer the unenrolled client, on either family. Nothing routes the VIPs
    // in the testbed and no agent proxies this pod: only the kernel's translation gets there.
    for vip in [VIP4, VIP6] {
        let mut answered = BTreeSet::new();
        eventually(
            &format!("both endpoints to answer {CLIENT} on {vip}"),
            Duration::from_secs(30),
            || {
                if let Some(body) = whoami(&tb, CLIENT, vip) {
                    assert!(
                        body == "pod-1b" || body == "pod-2a",
                        "{vip} answered by something else: {body:?}"
                    );
                    answered.insert(body);
                }
                answered.len() == 2
            },
        );
    }
    assert!(
        verdicts(&tb, "node-1", "service_translated") >= 4.0,
        "node-1 counts its translations"
    );

    // getpeername() shows the VIP the application dialled, not the endpoint.
    for vip in [VIP4, VIP6] {
        let (out, _) = dial(&tb, CLIENT, vip, SERVICE_PORT);
        assert_eq!(
            out,
            format!("ok {vip} {SERVICE_PORT}"),
            "getpeername on {vip}"
        );
    }
    assert!(verdicts(&tb, "node-1", "service_peer_restored") >= 2.0);

    // A VIP with no endpoint, or a port its service does not declare: EPERM at once.
    for (vip, port, verdict) in [
        (EMPTY_VIP, SERVICE_PORT, "service_refused_no_backend"),
        (VIP4, 81, "service_refused_port"),
    ] {
        let before = verdicts(&tb, "node-1", verdict);
        let (out, took) = dial(&tb, CLIENT, vip, port);
        assert_eq!(out, "err 1", "{vip}:{port} not refused with EPERM");
        assert!(
            took < Duration::from_secs(2),
            "refusing {vip}:{port} took {took:?}"
        );
        assert_eq!(verdicts(&tb, "node-1", verdict), before + 1.0, "{verdict}");
    }

    // An enrolled pod's connection to the VIP stays the agent's: its own capture program, on
    // the pod's cgroup, runs before the service program on the parent, which then sees
    // loopback (127.0.0.1:15001) and passes. The agent, not the kernel, picks the endpoint,
    // and says so in its metrics.
    let passed = verdicts(&tb, "node-2", "service_pass_loopback");
    let body = whoami(&tb, "pod-2b", VIP4).expect("pod-2b reaches the VIP");
    assert!(body == "pod-1b" || body == "pod-2a", "{body}");
    let host = format!("web.{ns}.svc.cluster.local");
    let opened = tb.metrics("node-2").unwrap().sum(
        scenario::CONNECTIONS_OPENED,
        &[
            ("reporter", "source"),
            ("source_workload", "pod-2b"),
            ("destination_service", host.as_str()),
        ],
    );
    assert!(
        opened >= 1.0,
        "node-2's agent proxied pod-2b's VIP connection"
    );
    assert!(
        verdicts(&tb, "node-2", "service_pass_loopback") > passed,
        "the service program saw the captured connection after the capture program"
    );

    // The endpoints change (pod-1b leaves the service): the next connections follow.
    label_web(&tb, &["pod-2a"]);
    eventually(
        "every connection to go to pod-2a",
        Duration::from_secs(5),
        || (0..5).all(|_| whoami(&tb, CLIENT, VIP4).as_deref() == Some("pod-2a")),
    );
    // No endpoint left: refused at once, not a hang.
    label_web(&tb, &[]);
    eventually("the VIP to be refused", Duration::from_secs(5), || {
        dial(&tb, CLIENT, VIP4, SERVICE_PORT).0 == "err 1"
    });
}
