//! A large transfer through the mesh arrives intact and is counted byte for byte.

mod common;

use common::{mesh, source_counters, wait_for_growth};
use weft_tests::scenario;

const MIB: u64 = 1024 * 1024;
const SIZE: u64 = 100 * MIB;

fn sha256(tb: &weft_tests::Testbed, pod: &str, file: &str) -> String {
    let out = tb.exec_ok(pod, &["sha256sum", file]).expect("sha256sum");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().expect("a digest").to_owned()
}

#[test]
fn hundred_mib_cross_node_arrives_intact_and_is_counted() {
    let tb = mesh("weft-e2e-bulk", 2, 1);
    let make = format!("head -c {SIZE} /dev/urandom > big.bin");
    tb.exec_ok("pod-2a", &["sh", "-c", &make]).unwrap();
    scenario::serve_http(&tb, "pod-2a").unwrap();
    let before = source_counters(&tb, "node-1", "pod-1a", "pod-2a");
    let url = scenario::url(
        tb.pod("pod-2a").unwrap().ipv4.into(),
        scenario::HTTP_PORT,
        "/big.bin",
    );
    let out = tb
        .exec(
            "pod-1a",
            &["curl", "-sS", "--max-time", "120", "-o", "big.bin", &url],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let received = tb.pod_dir("pod-1a").unwrap().join("big.bin");
    assert_eq!(std::fs::metadata(&received).unwrap().len(), SIZE);
    assert_eq!(
        sha256(&tb, "pod-1a", "big.bin"),
        sha256(&tb, "pod-2a", "big.bin")
    );

    // Which direction a counter calls "sent" is the reporter's convention; the payload must
    // be in one of them and the request in the other.
    let size = SIZE as f64;
    let grown = wait_for_growth(&tb, "node-1", "pod-1a", "pod-2a", &before, "100 MiB", |c| {
        c.opened >= 1.0 && c.sent.max(c.received) >= size && c.sent.min(c.received) > 0.0
    });
    assert!(grown.sent.max(grown.received) < size * 1.01, "{grown:?}");
}
