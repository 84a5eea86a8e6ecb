//! Building blocks of the end-to-end scenarios and the demo: HTTP servers in pods, curl
//! from pods, and the agents' TCP counters.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Output;
use std::time::Duration;

use crate::prom::Metrics;
use crate::testbed::{Background, Error, Result, Testbed};

/// The port of the test HTTP servers.
pub const HTTP_PORT: u16 = 8000;
/// How long a server gets to start listening.
const SERVER_START: Duration = Duration::from_secs(15);
/// curl's `--max-time` for one request, in seconds: a capture path that hangs fails the
/// request instead of the whole test run.
pub const CURL_MAX_TIME: &str = "20";

/// Istio's TCP metrics, as the agents export them.
pub const CONNECTIONS_OPENED: &str = "istio_tcp_connections_opened_total";
pub const CONNECTIONS_CLOSED: &str = "istio_tcp_connections_closed_total";
pub const SENT_BYTES: &str = "istio_tcp_sent_bytes_total";
pub const RECEIVED_BYTES: &str = "istio_tcp_received_bytes_total";

/// Starts `python3 -m http.server` in `pod` on [`HTTP_PORT`], dual stack, serving the pod's
/// directory, and waits until it listens. It writes `whoami.txt` (the pod's name) there
/// first, so a client can check that it reached the pod it meant to.
pub fn serve_http(tb: &Testbed, pod: &str) -> Result<Background> {
    let dir = tb.pod_dir(pod)?;
    let whoami = dir.join("whoami.txt");
    std::fs::write(&whoami, pod).map_err(|source| Error::Io {
        action: "writing",
        path: whoami,
        source,
    })?;
    let port = HTTP_PORT.to_string();
    // `--bind ::` makes http.server accept IPv4 too (it clears IPV6_V6ONLY).
    let server = tb.spawn(
        pod,
        &["python3", "-m", "http.server", &port, "--bind", "::"],
    )?;
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, HTTP_PORT));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, HTTP_PORT));
    tb.wait_for_tcp(pod, v4, SERVER_START)?;
    tb.wait_for_tcp(pod, v6, SERVER_START)?;
    Ok(server)
}

/// Starts a line-echo server (each line it reads is written back at once) in `pod` on
/// `port`, on every IPv4 address, and waits until it listens: a long-lived connection that
/// shows each round trip.
pub fn serve_line_echo(tb: &Testbed, pod: &str, port: u16) -> Result<Background> {
    let script = format!(
        "import socketserver\n\
         class H(socketserver.StreamRequestHandler):\n\
         \x20   def handle(self):\n\
         \x20       for line in self.rfile:\n\
         \x20           self.wfile.write(line); self.wfile.flush()\n\
         socketserver.ThreadingTCPServer.allow_reuse_address = True\n\
         socketserver.ThreadingTCPServer(('0.0.0.0', {port}), H).serve_forever()\n"
    );
    let server = tb.spawn(pod, &["python3", "-c", &script])?;
    tb.wait_for_tcp(
        pod,
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SERVER_START,
    )?;
    Ok(server)
}

/// `http://ip:port/path`, with brackets around an IPv6 address.
pub fn url(ip: IpAddr, port: u16, path: &str) -> String {
    format!("http://{}{path}", SocketAddr::new(ip, port))
}

/// `curl -sS -g --max-time 20 <url>` from `pod`; its output whatever its exit status.
pub fn curl(tb: &Testbed, pod: &str, url: &str) -> Result<Output> {
    tb.exec(
        pod,
        &["curl", "-sS", "-g", "--max-time", CURL_MAX_TIME, url],
    )
}

/// GETs `whoami.txt` from `dst`'s server at `ip` from `src` and checks that `dst` answered.
pub fn curl_whoami(tb: &Testbed, src: &str, dst: &str, ip: IpAddr) -> Result<()> {
    let url = url(ip, HTTP_PORT, "/whoami.txt");
    let out = curl(tb, src, &url)?;
    let body = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && body == dst {
        Ok(())
    } else {
        Err(Error::Command {
            command: format!("curl {url} (in {src})"),
            status: crate::testbed::cmd::describe_status(out.status),
            stderr: format!(
                "expected body {dst:?}, got {body:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// The four TCP counters of one (source, destination) workload pair, summed over every
/// other label, as one agent reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TcpCounters {
    pub opened: f64,
    pub closed: f64,
    pub sent: f64,
    pub received: f64,
}

impl TcpCounters {
    /// The counters of `metrics` whose labels match `matchers`.
    pub fn select(metrics: &Metrics, matchers: &[(&str, &str)]) -> Self {
        Self {
            opened: metrics.sum(CONNECTIONS_OPENED, matchers),
            closed: metrics.sum(CONNECTIONS_CLOSED, matchers),
            sent: metrics.sum(SENT_BYTES, matchers),
            received: metrics.sum(RECEIVED_BYTES, matchers),
        }
    }

    /// The counters from `src` to `dst` that `node`'s agent reports.
    pub fn scrape(tb: &Testbed, node: &str, src: &str, dst: &str) -> Result<Self> {
        let m = tb.metrics(node)?;
        Ok(Self::select(
            &m,
            &[("source_workload", src), ("destination_workload", dst)],
        ))
    }

    /// What grew since `before`.
    pub fn since(&self, before: &Self) -> Self {
        Self {
            opened: self.opened - before.opened,
            closed: self.closed - before.closed,
            sent: self.sent - before.sent,
            received: self.received - before.received,
        }
    }
}

/// One line per (reporter, source, destination) that `node`'s agent has counted, for
/// people: "pod-1a -> pod-2a: 1 connection (1 closed), 78 B to pod-2a, 1.2 KiB back
/// (counted by node-1's agent as source)".
pub fn describe_traffic(tb: &Testbed, node: &str) -> Result<Vec<String>> {
    let metrics = tb.metrics(node)?;
    let mut keys: Vec<(String, String, String, String)> = metrics
        .select(CONNECTIONS_OPENED, &[])
        .map(|s| {
            (
                s.label("source_workload").to_owned(),
                s.label("destination_workload").to_owned(),
                s.label("reporter").to_owned(),
                s.label("connection_security_policy").to_owned(),
            )
        })
        .collect();
    keys.sort();
    keys.dedup();
    Ok(keys
        .iter()
        .map(|(src, dst, reporter, security)| {
            let c = TcpCounters::select(
                &metrics,
                &[
                    ("source_workload", src),
                    ("destination_workload", dst),
                    ("reporter", reporter),
                    ("connection_security_policy", security),
                ],
            );
            let reporter = if reporter.is_empty() { "?" } else { reporter };
            let security = if security == "mutual_tls" {
                ", mutual TLS"
            } else {
                ", plaintext"
            };
            // Istio's convention: "received" is what the client sent (the request),
            // "sent" what came back (the response).
            format!(
                "{src} -> {dst}: {} ({} closed), {} to {dst}, {} back (counted by {node}'s agent as {reporter}{security})",
                plural(c.opened, "connection"),
                c.closed,
                bytes(c.received),
                bytes(c.sent),
            )
        })
        .collect())
}

fn plural(n: f64, what: &str) -> String {
    if n == 1.0 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// 1536 -> "1.5 KiB".
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_urls_and_sizes() {
        let v6: IpAddr = "fd78:2::11".parse().unwrap();
        assert_eq!(url(v6, 8000, "/x"), "http://[fd78:2::11]:8000/x");
        assert_eq!(bytes(78.0), "78 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(100.0 * 1024.0 * 1024.0), "100.0 MiB");
    }

    #[test]
    fn selects_counters() {
        let m = Metrics::parse(
            "istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"a\",destination_workload=\"b\"} 2\n\
             istio_tcp_sent_bytes_total{reporter=\"source\",source_workload=\"a\",destination_workload=\"b\"} 10\n\
             istio_tcp_received_bytes_total{reporter=\"source\",source_workload=\"a\",destination_workload=\"c\"} 5\n",
        )
        .unwrap();
        let c = TcpCounters::select(
            &m,
            &[("source_workload", "a"), ("destination_workload", "b")],
        );
        assert_eq!(
            c,
            TcpCounters {
                opened: 2.0,
                closed: 0.0,
                sent: 10.0,
                received: 0.0
            }
        );
        let zero = TcpCounters::default();
        assert_eq!(c.since(&zero), c);
    }
}
