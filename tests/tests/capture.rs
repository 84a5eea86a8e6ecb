//! The capture path: pod traffic goes through the agents and shows in their metrics, over
//! IPv4 and IPv6, to the same node and to another; node traffic does not.

mod common;

use std::net::IpAddr;

use common::{mesh, one_connection_with_bytes, source_counters, wait_for_growth};
use weft_tests::scenario::{self, CONNECTIONS_OPENED};

#[test]
fn pod_to_pod_on_another_node_and_the_same_node_is_captured() {
    let tb = mesh("weft-e2e-cap", 2, 2);
    scenario::serve_http(&tb, "pod-2a").unwrap();
    scenario::serve_http(&tb, "pod-1b").unwrap();
    for dst in ["pod-2a", "pod-1b"] {
        let before = source_counters(&tb, "node-1", "pod-1a", dst);
        let ip = tb.pod(dst).unwrap().ipv4.into();
        scenario::curl_whoami(&tb, "pod-1a", dst, ip).unwrap();
        let grown = wait_for_growth(
            &tb,
            "node-1",
            "pod-1a",
            dst,
            &before,
            "a connection with bytes both ways",
            one_connection_with_bytes,
        );
        // One curl, one connection: the agent counts connections, not packets or retries.
        assert_eq!(grown.opened, 1.0, "pod-1a -> {dst}: {grown:?}");
    }
}

#[test]
fn ipv6_pod_to_pod_is_captured() {
    let tb = mesh("weft-e2e-cap6", 2, 1);
    scenario::serve_http(&tb, "pod-2a").unwrap();
    let before = source_counters(&tb, "node-1", "pod-1a", "pod-2a");
    let out = tb
        .exec(
            "pod-1a",
            &[
                "curl",
                "-sS",
                "-g",
                "--max-time",
                "20",
                "http://[fd78:2::11]:8000/whoami.txt",
            ],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pod-2a");
    wait_for_growth(
        &tb,
        "node-1",
        "pod-1a",
        "pod-2a",
        &before,
        "an IPv6 connection",
        one_connection_with_bytes,
    );
}

#[test]
fn node_processes_are_not_captured() {
    let tb = mesh("weft-e2e-nodecap", 2, 2);
    scenario::serve_http(&tb, "pod-2a").unwrap();
    scenario::serve_http(&tb, "pod-1b").unwrap();
    let opened_by_node_1 = || {
        tb.metrics("node-1")
            .unwrap()
            .sum(CONNECTIONS_OPENED, &[("reporter", "source")])
    };
    let before = opened_by_node_1();
    for dst in ["pod-2a", "pod-1b"] {
        for ip in tb.pod(dst).unwrap().ips() {
            let url = scenario::url(ip, scenario::HTTP_PORT, "/whoami.txt");
            let out = tb
                .exec_node("node-1", &["curl", "-sS", "-g", "--max-time", "20", &url])
                .unwrap();
            assert!(
                out.status.success(),
                "node-1 -> {url}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout), dst);
        }
    }
    // A pod connection made now is counted, so a scrape after it has seen everything the
    // node's connections could have caused.
    let ip: IpAddr = tb.pod("pod-2a").unwrap().ipv4.into();
    let pod_before = source_counters(&tb, "node-1", "pod-1a", "pod-2a");
    scenario::curl_whoami(&tb, "pod-1a", "pod-2a", ip).unwrap();
    wait_for_growth(
        &tb,
        "node-1",
        "pod-1a",
        "pod-2a",
        &pod_before,
        "the pod's connection",
        |c| c.opened >= 1.0,
    );
    assert_eq!(
        opened_by_node_1() - before,
        1.0,
        "only the pod's connection is counted, none of the node's four"
    );
}

#[test]
fn kernel_program_logs_appear_in_the_agent_log() {
    common::require_root();
    let mut agent = common::agent();
    // The kernel-side level is fixed when the programs load: debug must be on at start.
    agent.rust_log = "info,weft=debug".to_owned();
    let config = weft_tests::testbed::Config::named("weft-e2e-klog")
        .size(2, 1)
        .agent(agent);
    let tb = weft_tests::testbed::TestbedGuard::up(&config).unwrap();
    scenario::serve_http(&tb, "pod-2a").unwrap();
    let ip = tb.pod("pod-2a").unwrap().ipv4.into();
    scenario::curl_whoami(&tb, "pod-1a", "pod-2a", ip).unwrap();
    let log = tb.agent_log("node-1").unwrap();
    let deadline = std::time::Instant::now() + common::COUNTER_WAIT;
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        // Written by the connect4 program through aya-log, with the program's module as target.
        if text
            .lines()
            .any(|l| l.contains("weft::connect") && l.contains("port 8000 redirected to the agent"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no kernel log line in {}",
            log.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
