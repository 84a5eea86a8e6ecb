//! `weft-load`: the HTTP/1.1 load generator behind `cargo xtask bench`.
//!
//! ```text
//! weft-load closed --addr IP:PORT [--connections N] [--duration-ms D] [--warmup-ms W] [--close]
//! weft-load open   --addr IP:PORT --rate R [--connections N] [--duration-ms D] [--warmup-ms W]
//! ```
//!
//! `closed` runs N connections on one thread (a current-thread tokio runtime), each sending
//! its next request as soon as the previous answer is complete: capacity. `open` sends R
//! requests per second on a fixed schedule over N connections, one thread each, and measures
//! every latency from the time the request was due (see [`weft_tests::bench::load::Mode`]).
//! Both print one [`LoadReport`] as JSON on stdout.

mod closed;
mod http;
mod open;

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use weft_tests::bench::load::{Latency, LoadReport, Mode, spectrum};

#[derive(Debug, Parser)]
#[command(
    name = "weft-load",
    about = "HTTP/1.1 load generator for Weft's benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    mode: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Back-to-back requests on each connection: requests per second.
    Closed(Common),
    /// Requests on a fixed schedule: latency free of coordinated omission.
    Open {
        #[command(flatten)]
        common: Common,
        /// Requests per second, over all connections.
        #[arg(long)]
        rate: u32,
    },
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Where the server (or the proxy in front of it) listens.
    #[arg(long)]
    addr: SocketAddr,
    /// The path to GET.
    #[arg(long, default_value = "/1k")]
    path: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1)]
    connections: u32,
    /// How long to measure, after the warm-up.
    #[arg(long, default_value_t = 10_000)]
    duration_ms: u64,
    /// How long to send before measuring (connections open, caches and CPU frequency settle).
    #[arg(long, default_value_t = 1_000)]
    warmup_ms: u64,
    /// One request per connection (`Connection: close`): new connections per second.
    #[arg(long)]
    close: bool,
    /// An extra request header, `name: value` (repeatable), e.g. `x-api-key: k`.
    #[arg(long = "header", value_name = "HEADER")]
    headers: Vec<String>,
}

impl Common {
    fn warmup(&self) -> Duration {
        Duration::from_millis(self.warmup_ms)
    }

    fn duration(&self) -> Duration {
        Duration::from_millis(self.duration_ms)
    }
}

/// Latencies are recorded in microseconds, from 1 µs to 100 s, with 3 significant digits.
const HIST_MAX_US: u64 = 100_000_000;

pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).context("creating a latency histogram")
}

/// What one connection (or the whole run) counted.
#[derive(Debug)]
pub struct Tally {
    pub hist: Histogram<u64>,
    pub requests: u64,
    /// Requests answered during the warm-up, which the latency figures leave out.
    pub warmup_requests: u64,
    pub errors: u64,
    pub connections_opened: u64,
    pub first_error: Option<String>,
}

impl Tally {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            hist: new_histogram()?,
            requests: 0,
            warmup_requests: 0,
            errors: 0,
            connections_opened: 0,
            first_error: None,
        })
    }

    /// Books one request's outcome: a latency measured from `since` when it succeeded, an
    /// error otherwise. Warm-up requests (`measured` false) are only counted apart, and their
    /// errors not at all. Returns whether it failed, so the caller drops its connection.
    pub fn record(
        &mut self,
        outcome: anyhow::Result<()>,
        since: std::time::Instant,
        measured: bool,
    ) -> bool {
        match outcome {
            Ok(()) => {
                if measured {
                    self.requests += 1;
                    let us = since.elapsed().as_micros();
                    self.hist
                        .saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
                } else {
                    self.warmup_requests += 1;
                }
                false
            }
            Err(e) => {
                if measured {
                    self.error(format!("{e:#}"));
                }
                true
            }
        }
    }

    pub fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    pub fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.hist.add(&other.hist).context("merging histograms")?;
        self.requests += other.requests;
        self.warmup_requests += other.warmup_requests;
        self.errors += other.errors;
        self.connections_opened += other.connections_opened;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (common, mode, rate) = match cli.mode {
        Command::Closed(common) => (common, Mode::Closed, None),
        Command::Open { common, rate } => (common, Mode::Open, Some(rate)),
    };
    if common.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let tally = match rate {
        None => closed::run(&common)?,
        Some(0) => bail!("--rate must be at least 1"),
        Some(rate) => open::run(&common, rate)?,
    };
    let secs = common.duration().as_secs_f64();
    let h = &tally.hist;
    let us = |v: u64| v as f64;
    let latency = if h.is_empty() {
        Latency::default()
    } else {
        Latency {
            min: us(h.min()),
            mean: h.mean(),
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    };
    let percentiles = if h.is_empty() {
        Vec::new()
    } else {
        spectrum()
            .into_iter()
            .map(|q| (q, us(h.value_at_quantile(q))))
            .collect()
    };
    let report = LoadReport {
        mode,
        connections: common.connections,
        target_rate: rate.map(f64::from),
        close: common.close,
        duration_secs: secs,
        requests: tally.requests,
        warmup_requests: tally.warmup_requests,
        errors: tally.errors,
        connections_opened: tally.connections_opened,
        rps: tally.requests as f64 / secs,
        latency_us: latency,
        percentiles,
        first_error: tally.first_error,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&report)?).context("writing the report")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use weft_tests::bench::load::LoadArgs;

    use super::*;

    /// The harness builds the command line from `LoadArgs`; it must parse here.
    #[test]
    fn parses_what_the_harness_sends() {
        let args = LoadArgs {
            mode: Mode::Open,
            addr: "10.78.2.11:8080".parse().unwrap(),
            path: "/1k".to_owned(),
            connections: 4,
            duration: Duration::from_secs(3),
            warmup: Duration::from_millis(500),
            rate: Some(1000),
            close: true,
            headers: vec!["x-api-key: k".to_owned()],
        };
        let argv = std::iter::once("weft-load".to_owned()).chain(args.to_args());
        match Cli::try_parse_from(argv).unwrap().mode {
            Command::Open { common, rate } => {
                assert_eq!(rate, 1000);
                assert_eq!(common.connections, 4);
                assert_eq!(common.duration(), Duration::from_secs(3));
                assert_eq!(common.warmup(), Duration::from_millis(500));
                assert!(common.close);
                assert_eq!(common.headers, ["x-api-key: k"]);
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
