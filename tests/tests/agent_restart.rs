//! An agent that stops and comes back: traffic keeps working or fails at once while it is
//! gone, and the same pods, not restarted, are captured again afterwards.

mod common;

use std::time::{Duration, Instant};

use common::{
    COUNTER_WAIT, eventually, mesh, one_connection_with_bytes, source_counters, wait_for_growth,
};
use weft_tests::scenario::{self, TcpCounters};

/// curl exit codes of a clean failure: connection refused (7), empty reply (52), reset
/// while receiving (56). A timeout (28) is not clean: the pod would hang.
const CLEAN_FAILURES: [i32; 3] = [7, 52, 56];

#[test]
fn pods_are_captured_again_after_an_agent_restart() {
    let mut tb = mesh("weft-e2e-restart", 2, 1);
    let server = scenario::serve_http(&tb, "pod-2a").unwrap();
    let ip = tb.pod("pod-2a").unwrap().ipv4.into();
    let url = scenario::url(ip, scenario::HTTP_PORT, "/whoami.txt");

    let before = source_counters(&tb, "node-1", "pod-1a", "pod-2a");
    scenario::curl_whoami(&tb, "pod-1a", "pod-2a", ip).unwrap();
    wait_for_growth(
        &tb,
        "node-1",
        "pod-1a",
        "pod-2a",
        &before,
        "capture",
        one_connection_with_bytes,
    );

    tb.stop_agent("node-1").unwrap();
    assert!(!tb.agent_alive("node-1").unwrap());
    let started = Instant::now();
    let out = scenario::curl(&tb, "pod-1a", &url).unwrap();
    let took = started.elapsed();
    let code = out.status.code().unwrap_or(-1);
    eprintln!("with node-1's agent stopped, curl exited {code} after {took:?}");
    if out.status.success() {
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "pod-2a",
            "direct path, wrong pod"
        );
        // The bypass is visible where the README says: the destination's agent counts a
        // plaintext connection from a mesh workload.
        eventually(
            "node-2 to count pod-1a's bypassing connection as plaintext",
            COUNTER_WAIT,
            || {
                let m = tb.metrics("node-2").expect("scraping node-2");
                TcpCounters::select(
                    &m,
                    &[
                        ("reporter", "destination"),
                        ("source_workload", "pod-1a"),
                        ("destination_workload", "pod-2a"),
                        ("connection_security_policy", "none"),
                    ],
                )
                .opened
                    >= 1.0
            },
        );
    } else {
        assert!(
            CLEAN_FAILURES.contains(&code) && took < Duration::from_secs(15),
            "with node-1's agent stopped, curl must work or fail at once; it exited {code} \
             after {took:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    tb.start_agent("node-1").unwrap();
    let before = source_counters(&tb, "node-1", "pod-1a", "pod-2a");
    scenario::curl_whoami(&tb, "pod-1a", "pod-2a", ip).unwrap();
    wait_for_growth(
        &tb,
        "node-1",
        "pod-1a",
        "pod-2a",
        &before,
        "capture after the restart",
        one_connection_with_bytes,
    );
    assert!(
        server.is_alive(),
        "the server pod's process was not restarted"
    );

    // restart_agent does both steps at once.
    tb.restart_agent("node-2").unwrap();
    scenario::curl_whoami(&tb, "pod-1a", "pod-2a", ip).unwrap();
}
