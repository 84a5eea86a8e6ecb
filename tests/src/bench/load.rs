//! What `weft-load` prints (one JSON document on stdout) and how the harness invokes it.
//! The type lives here so that the load generator and the harness share one definition.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Each connection sends its next request as soon as the previous answer is in:
    /// measures capacity (requests per second), and its latencies are service times.
    Closed,
    /// Requests follow a fixed schedule; latency counts from the time a request was due,
    /// not from when it could be sent, so a stall is charged to every request it delayed
    /// (no coordinated omission; Gil Tene, "How NOT to measure latency").
    Open,
}

/// Latency summary, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// One run of the load generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub mode: Mode,
    pub connections: u32,
    /// Open loop: the scheduled request rate.
    pub target_rate: Option<f64>,
    /// Whether every request had its own connection (`Connection: close`).
    pub close: bool,
    /// The measured interval (after the warm-up).
    pub duration_secs: f64,
    /// Requests answered with a complete 200 response during the measured interval.
    pub requests: u64,
    /// Requests answered during the warm-up: the proxies' CPU time covers them too.
    pub warmup_requests: u64,
    /// Requests that failed (connect error, reset, bad status, short body).
    pub errors: u64,
    /// TCP connections opened during the measured interval.
    pub connections_opened: u64,
    /// `requests / duration_secs`.
    pub rps: f64,
    pub latency_us: Latency,
    /// The latency distribution as (quantile, microseconds), from 0 to 1, denser towards
    /// the tail, for charts.
    pub percentiles: Vec<(f64, f64)>,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
}

/// A run of the load generator, as command-line arguments.
#[derive(Debug, Clone)]
pub struct LoadArgs {
    pub mode: Mode,
    pub addr: SocketAddr,
    pub path: String,
    pub connections: u32,
    pub duration: Duration,
    pub warmup: Duration,
    /// Open loop only: requests per second over all connections.
    pub rate: Option<u32>,
    pub close: bool,
    /// Extra request headers, `name: value`.
    pub headers: Vec<String>,
}

impl LoadArgs {
    /// The arguments (after the program name).
    pub fn to_args(&self) -> Vec<String> {
        let mode = match self.mode {
            Mode::Closed => "closed",
            Mode::Open => "open",
        };
        let mut args = vec![
            mode.to_owned(),
            "--addr".to_owned(),
            self.addr.to_string(),
            "--path".to_owned(),
            self.path.clone(),
            "--connections".to_owned(),
            self.connections.to_string(),
            "--duration-ms".to_owned(),
            self.duration.as_millis().to_string(),
            "--warmup-ms".to_owned(),
            self.warmup.as_millis().to_string(),
        ];
        if let Some(rate) = self.rate {
            args.extend(["--rate".to_owned(), rate.to_string()]);
        }
        if self.close {
            args.push("--close".to_owned());
        }
        for h in &self.headers {
            args.extend(["--header".to_owned(), h.clone()]);
        }
        args
    }
}

/// Quantiles at which the distribution is reported: 1 - 10^-x for x from 0 to 4.9 in steps
/// of 0.1 (a percentile spectrum, dense in the tail where proxies differ), then 1.
pub fn spectrum() -> Vec<f64> {
    let mut q: Vec<f64> = (0..50)
        .map(|i| 1.0 - 10f64.powf(-f64::from(i) / 10.0))
        .collect();
    q.push(1.0);
    q
}
