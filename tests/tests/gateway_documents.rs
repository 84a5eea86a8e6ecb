//! The documents the gateway scenarios, the demo and the gateway benchmark write are valid
//! for the control plane: `weftctl validate` (the control plane's own parser and validator)
//! accepts each set. Needs no privileges.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use weft_tests::bench::gateway as bench_gateway;
use weft_tests::edge;

/// `weftctl` beside the agent binary (one `cargo build`).
fn weftctl() -> PathBuf {
    let bin = common::agent().bin.with_file_name("weftctl");
    assert!(
        bin.is_file(),
        "no weftctl at {}: `cargo build -p weft-ctl`",
        bin.display()
    );
    bin
}

fn validate(what: &str, yaml: &str) {
    let dir = std::env::temp_dir().join(format!("weft-gw-docs-{}-{what}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{what}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new(weftctl())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Not even a warning: a warning leaves a listener or a backend out.
    assert!(
        out.status.success() && !said.contains("warning:"),
        "{what} is not valid:\n{said}\n{yaml}"
    );
}

#[test]
fn scenario_demo_and_bench_documents_are_valid() {
    let echo = [
        edge::gateway_doc(),
        edge::service_doc("echo", "pod-2a", edge::ECHO_PORT, "10.96.23.10"),
        edge::http_route_doc("echo", "/echo/", "echo", edge::ECHO_PORT),
    ]
    .join("---\n");
    validate("echo", &echo);
    let protected = [
        echo.clone(),
        edge::api_key_policy_doc("echo-api", "echo", "gold"),
        edge::plan_doc("gold", 5),
        edge::consumer_doc("alice", "alice-key", "gold").unwrap(),
    ]
    .join("---\n");
    validate("protected", &protected);
    validate(
        "demo",
        &edge::demo_api_documents("demo-key", 5, "10.96.0.80").unwrap(),
    );
    validate("bench", &bench_gateway::documents().unwrap());
}

#[test]
fn a_broken_document_is_refused() {
    // The check can fail: a consumer holding its key instead of the key's hash.
    let yaml = [
        edge::plan_doc("gold", 5),
        edge::consumer_doc("alice", "alice-key", "gold")
            .unwrap()
            .replace(
                &weft_tests::testbed::gateway::api_key_sha256("alice-key").unwrap(),
                "alice-key",
            ),
    ]
    .join("---\n");
    let dir = std::env::temp_dir().join(format!("weft-gw-docs-{}-bad", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = std::process::Command::new(weftctl())
        .arg("validate")
        .arg(&file)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success(), "accepted:\n{yaml}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("apiKeySha256")
            || String::from_utf8_lossy(&out.stderr).contains("apiKeySha256"),
        "the error names the field"
    );
}
