//! Reloads under load and the SIGTERM drain, with the real binary, curl and h2load.

// Helpers are not `#[test]` functions; a failed setup step should panic like an assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_refuses_new_connections() {
    let backend = Backend::start("one").await;
    let (dir, port) = one_route_dir(backend.addr);
    let mut gw = Gateway::spawn(&[
        "--config-dir",
        dir.path().to_str().unwrap(),
        "--drain-deadline",
        "5s",
    ]);
    gw.wait_ready();

    // A request the backend answers after 1.5 s.
    let url = format!("http://127.0.0.1:{port}/slow");
    let slow = std::thread::spawn(move || curl(&[&url]));
    std::thread::sleep(Duration::from_millis(300));
    let term = Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    std::thread::sleep(Duration::from_millis(300));
    // Draining: not ready, and no new connection is taken.
    let (ready, _) = curl(&[
        "--max-time",
        "2",
        &format!("http://{}/healthz/ready", gw.readiness),
    ]);
    assert_ne!(ready, 200, "ready while draining");
    let (status, _) = curl(&["--max-time", "2", &format!("http://127.0.0.1:{port}/x")]);
    assert_eq!(status, 0, "a new connection was served while draining");
    // The in-flight request finishes, and the gateway exits 0 once it has.
    let (status, body) = slow.join().unwrap();
    assert_eq!(status, 200, "{body}\n{}", gw.log());
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(code) = gw.child.try_wait().unwrap() {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not exit\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(code.success(), "exit {code:?}\n{}", gw.log());
    assert!(
        gw.log().contains("every connection finished"),
        "{}",
        gw.log()
    );
}

/// Runs h2load against `url` for `seconds`; returns its summary output.
fn h2load(url: &str, seconds: u64, extra: &[&str]) -> std::process::Child {
    Command::new("h2load")
        .args(["-c", "8", "-m", "4", "-D", &seconds.to_string()])
        .args(extra)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("h2load runs")
}

/// The (succeeded, failed, errored) counts of an h2load summary, and its 2xx count.
fn h2load_counts(out: &str) -> (u64, u64, u64, u64) {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("requests:"))
        .unwrap_or_default();
    let num = |key: &str| -> u64 {
        line.split(',')
            .find(|p| p.contains(key))
            .and_then(|p| {
                p.split_whitespace()
                    .next()
                    .map(|n| n.trim_start_matches("requests:"))
            })
            .and_then(|n| n.trim().parse().ok())
            .or_else(|| {
                line.split(',')
                    .find(|p| p.contains(key))
                    .and_then(|p| p.split_whitespace().find_map(|w| w.parse().ok()))
            })
            .unwrap_or(u64::MAX)
    };
    let codes = out
        .lines()
        .find(|l| l.trim_start().starts_with("status codes:"))
        .unwrap_or_default();
    // Responses other than 2xx. h2load counts status codes of every response it read,
    // including the few that finish after its measuring window closes, so they are not
    // compared with `succeeded`.
    let not_ok = codes
        .split(',')
        .filter(|p| ["3xx", "4xx", "5xx"].iter().any(|c| p.contains(c)))
        .map(|p| {
            p.split_whitespace()
                .find_map(|w| w.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        })
        .fold(0, u64::saturating_add);
    (num("succeeded"), num("failed"), num("errored"), not_ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let dir = tempfile::tempdir().unwrap();
    let (http_port, https_port) = (free_port(), free_port());
    let (cert, key) = self_signed(&["a.example.com"]);
    write(
        dir.path(),
        "gateway.yaml",
        &gateway_doc(http_port, Some((https_port, &["cert"]))),
    );
    write(dir.path(), "secret.yaml", &secret_doc("cert", &cert, &key));
    write(
        dir.path(),
        "backends.yaml",
        &format!(
            "{}---\n{}",
            backend_doc("one", &format!("http://{}", one.addr)),
            backend_doc("two", &format!("http://{}", two.addr))
        ),
    );
    write(dir.path(), "route.yaml", &route_doc("load", "/", "one"));
    let gw = Gateway::spawn(&["--config-dir", dir.path().to_str().unwrap()]);
    gw.wait_ready();

    // h2c on the HTTP port and h2 over TLS on the HTTPS port, while routes, certificates,
    // consumers and listeners change underneath.
    let plain = h2load(&format!("http://127.0.0.1:{http_port}/x"), 6, &[]);
    let tls = h2load(&format!("https://127.0.0.1:{https_port}/x"), 6, &[]);
    let mut generation = gw.config()["snapshot"]["generation"].as_u64().unwrap();
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match i % 4 {
            // The route moves to the other backend.
            0 => write(
                dir.path(),
                "route.yaml",
                &route_doc("load", "/", if i % 8 == 0 { "two" } else { "one" }),
            ),
            // A new certificate.
            1 => {
                let (c, k) = self_signed(&["a.example.com"]);
                write(dir.path(), "secret.yaml", &secret_doc("cert", &c, &k));
            }
            // Consumers come and go.
            2 => write(
                dir.path(),
                "consumer.yaml",
                &format!(
                    "apiVersion: weft.dev/v1alpha1\nkind: Consumer\nmetadata: {{name: c{i}, namespace: demo}}\nspec: {{apiKeySha256: [\"{}\"]}}\n",
                    "ab".repeat(32)
                ),
            ),
            // A listener port is added (and the next round removes it again).
            _ => {
                let extra = free_port();
                let doc = if i % 8 == 3 {
                    gateway_doc(extra, None).replace("name: edge", "name: extra")
                } else {
                    String::new()
                };
                write(dir.path(), "extra.yaml", &doc);
            }
        }
        generation += 1;
        gw.wait_generation(generation);
    }
    for (what, child) in [("h2c", plain), ("h2 over TLS", tls)] {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (succeeded, failed, errored, not_ok) = h2load_counts(&text);
        assert!(succeeded > 100, "{what}: too few requests: {text}");
        assert_eq!((failed, errored), (0, 0), "{what}: {text}\n{}", gw.log());
        assert_eq!(not_ok, 0, "{what}: every response 2xx: {text}");
    }
    assert!(one.requests.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert!(
        two.requests.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the route change took effect"
    );
}
