//! The agent's configuration: command-line flags, each with an environment variable, and
//! named defaults whose comments give the reasoning.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// Admin API (config dump, log level): localhost only, it can change the agent's behaviour.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:15000";
/// Prometheus scrape endpoint, reachable from the node network.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:15020";
/// Readiness probe for the kubelet.
pub const DEFAULT_READINESS_ADDR: &str = "0.0.0.0:15021";
/// Where bpffs is mounted on nearly every distribution.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
/// Data-path worker threads. Two keeps a node agent small while letting one connection's
/// copying not stall another's accept; benchmarks pin the agent and may set 1.
pub const DEFAULT_WORKER_THREADS: usize = 2;
/// How long in-flight connections may run after SIGTERM before the agent exits anyway;
/// the DaemonSet's terminationGracePeriodSeconds must be longer.
pub const DEFAULT_DRAIN_DEADLINE: &str = "5s";
/// A destination that has not answered a SYN in this long is treated as unreachable.
pub const DEFAULT_CONNECT_TIMEOUT: &str = "10s";

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "weft-agent",
    version,
    about = "Weft node agent: captures enrolled pods' TCP connections with eBPF and proxies \
             them to their destinations, with metrics and access logs."
)]
pub struct Config {
    /// Name of the node this agent runs on.
    #[arg(long, env = "WEFT_NODE")]
    pub node: String,

    /// Control plane address (the agent protocol, gRPC over TLS), e.g. https://10.0.0.1:15012.
    #[arg(long, env = "WEFT_CONTROL")]
    pub control: String,

    /// PEM file with the mesh root certificate the control plane's certificate chains to.
    #[arg(long, env = "WEFT_CONTROL_CA")]
    pub control_ca: PathBuf,

    /// JSON file listing the pods on this node to capture, with their network namespace and
    /// cgroup: {"pods": [{"uid", "netns", "cgroup"}]}.
    #[arg(long, env = "WEFT_PODS")]
    pub pods: PathBuf,

    /// Admin API address (config dump, log level).
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,

    /// Prometheus metrics address (`/metrics`).
    #[arg(long, env = "WEFT_METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,

    /// Readiness address (`/healthz/ready`).
    #[arg(long, env = "WEFT_READINESS_ADDR", default_value = DEFAULT_READINESS_ADDR)]
    pub readiness_addr: SocketAddr,

    /// bpffs mount point.
    #[arg(long, env = "WEFT_BPFFS", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,

    /// Data-path worker threads.
    #[arg(long, env = "WEFT_WORKER_THREADS", default_value_t = DEFAULT_WORKER_THREADS)]
    pub worker_threads: usize,

    /// Time in-flight connections get to finish after SIGTERM (e.g. 5s, 500ms).
    #[arg(long, env = "WEFT_DRAIN_DEADLINE", default_value = DEFAULT_DRAIN_DEADLINE, value_parser = parse_duration)]
    pub drain_deadline: Duration,

    /// Time to wait for an upstream connection (e.g. 10s).
    #[arg(long, env = "WEFT_CONNECT_TIMEOUT", default_value = DEFAULT_CONNECT_TIMEOUT, value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(long, env = "WEFT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Parses `500ms`, `5s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} has no unit; write e.g. 500ms, 5s or 2m"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} does not start with a whole number"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unknown unit {unit:?}; use ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations_parse_with_units_only() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5h").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn defaults_parse() {
        let c = Config::try_parse_from([
            "weft-agent",
            "--node",
            "n1",
            "--control",
            "https://127.0.0.1:15012",
            "--control-ca",
            "root.pem",
            "--pods",
            "p.json",
        ])
        .unwrap();
        assert_eq!(c.admin_addr.to_string(), DEFAULT_ADMIN_ADDR);
        assert_eq!(c.drain_deadline, Duration::from_secs(5));
    }
}
