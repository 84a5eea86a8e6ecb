//! The agent refuses to start, with one clear line, when it lacks what it needs: root,
//! cgroup v2, bpffs.

mod common;

use std::time::Duration;

use common::{agent, require_root};
use weft_tests::testbed::{Config, TestbedGuard, cgroup, cmd};

/// An agent that does not fail gets this long before the test fails.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Runs node-1's agent behind `wrapper` and checks that it fails with a short message
/// containing `keyword` (case-insensitive) and does not panic.
fn assert_fails_mentioning(tb: &TestbedGuard, wrapper: &[&str], keyword: &str) {
    let mut command = tb
        .agent_command_with("node-1", wrapper)
        .expect("agent command");
    // Only errors: the failure must be readable without the start-up chatter.
    command.env("RUST_LOG", "error");
    let out = cmd::output_with_timeout(&mut command, TIMEOUT)
        .unwrap_or_else(|e| panic!("the agent did not fail without {keyword}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !out.status.success(),
        "the agent exited 0 without {keyword}: {text}"
    );
    assert!(
        !text.contains("panicked"),
        "the agent panicked without {keyword}: {text}"
    );
    let lower = keyword.to_lowercase();
    assert!(
        lines.iter().any(|l| l.to_lowercase().contains(&lower)),
        "the agent's message does not mention {keyword:?}: {text}"
    );
    assert!(
        lines.len() <= 3,
        "the agent should say what is missing in one line, not {}: {text}",
        lines.len()
    );
}

fn testbed(name: &str) -> TestbedGuard {
    require_root();
    let mut tb = TestbedGuard::up(&Config::named(name).size(1, 1)).expect("testbed up");
    tb.set_agent(agent()).expect("agent binary");
    tb
}

#[test]
fn non_root_agent_says_it_needs_root() {
    let tb = testbed("weft-e2e-nonroot");
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let out = tb
        .exec_node(
            "node-1",
            &[nobody[0], nobody[1], nobody[2], nobody[3], "true"],
        )
        .unwrap();
    assert!(out.status.success(), "setpriv works here");
    assert_fails_mentioning(&tb, &nobody, "root");
}

#[test]
fn agent_without_cgroup2_says_so() {
    let tb = testbed("weft-e2e-nocg2");
    let mount = cgroup::cgroup2_mount().unwrap();
    // A private mount namespace in which the cgroup2 mount is gone; the host keeps it.
    let script = "while umount -l \"$0\" 2>/dev/null; do :; done; exec \"$@\"";
    let mount = mount.to_string_lossy();
    assert_fails_mentioning(
        &tb,
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            &mount,
        ],
        "cgroup v2",
    );
}

#[test]
fn agent_without_bpffs_says_so() {
    let tb = testbed("weft-e2e-nobpffs");
    let script = "while umount -l /sys/fs/bpf 2>/dev/null; do :; done; exec \"$@\"";
    assert_fails_mentioning(
        &tb,
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ],
        "bpffs",
    );
}
