//! The gateway's command line: flags, each with an environment variable, and named defaults
//! whose comments give the reasoning.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use weft_link::{
    control::ClientIdentity,
    flags::{parse_at_least_one, parse_duration},
};

pub use weft_http::admin::{
    DEFAULT_ADMIN_ADDR, DEFAULT_HTTP_HEADER_TIMEOUT, DEFAULT_HTTP_IDLE_TIMEOUT,
    DEFAULT_METRICS_ADDR, DEFAULT_READINESS_ADDR,
};
pub use weft_link::identity::DEFAULT_TRUST_DOMAIN;

/// Data-path worker threads: two, like the agent; benchmarks pin and may set 1.
pub const DEFAULT_WORKER_THREADS: usize = 2;
/// Time in-flight requests get after SIGTERM; a pod's terminationGracePeriodSeconds (30 s by
/// default) must be longer.
pub const DEFAULT_DRAIN_DEADLINE: &str = "10s";
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "weft-gateway",
    version,
    about = "Weft edge gateway: terminates HTTP/1.1, HTTP/2 and TLS for clients outside the \
             cluster, routes with Gateway API semantics (Gateway, HTTPRoute, GRPCRoute), \
             authenticates consumers, applies their plans' rate limits and quotas, and forwards \
             to plain HTTP/HTTPS backends or, over HBONE with its own mesh certificate, to mesh \
             services. Configured by the control plane (--control) or from a directory of the \
             same documents (--config-dir)."
)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["control", "config_dir"])))]
pub struct Config {
    /// Control plane address (the agent protocol, gRPC over TLS), e.g. https://10.0.0.1:15012.
    /// Listeners, routes, consumers, plans, workloads and services come from it, and the
    /// gateway's mesh certificate (spiffe://<trust-domain>/ns/weft-system/sa/weft-gateway)
    /// from its CA.
    #[arg(long, env = "WEFT_CONTROL", requires_all = ["control_ca", "gateway_cert", "gateway_key"])]
    pub control: Option<String>,

    /// PEM file with the mesh root certificate the control plane's certificate chains to.
    #[arg(long, env = "WEFT_CONTROL_CA")]
    pub control_ca: Option<PathBuf>,

    /// PEM file with the gateway credential (`weft-control gateway-credential`), presented
    /// to the control plane: it alone receives API-key hashes and may obtain the gateway's
    /// mesh certificate.
    #[arg(long, env = "WEFT_GATEWAY_CERT")]
    pub gateway_cert: Option<PathBuf>,

    /// PEM file with the private key of --gateway-cert.
    #[arg(long, env = "WEFT_GATEWAY_KEY")]
    pub gateway_key: Option<PathBuf>,

    /// Directory of YAML documents (Gateway, HTTPRoute, GRPCRoute, Secret, Backend,
    /// ApiPolicy, Consumer, Plan, ...) read, validated and compiled by the control plane's
    /// own code, and re-read when it changes; a bad change is logged and the last good
    /// configuration stays in force. Without --control, mesh services cannot be reached.
    #[arg(long, env = "WEFT_CONFIG_DIR", conflicts_with = "control")]
    pub config_dir: Option<PathBuf>,

    /// Address the Listener ports are bound on (all interfaces by default).
    #[arg(long, env = "WEFT_LISTEN_ADDR", default_value = "0.0.0.0")]
    pub listen_addr: std::net::IpAddr,

    /// SPIFFE trust domain of the mesh.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// Admin API address (`/config`, `/analytics?since=`, `/logging`).
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,

    /// Prometheus metrics address (`/metrics`).
    #[arg(long, env = "WEFT_METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,

    /// Readiness address (`/healthz/ready`: 503 until the first configuration is in force,
    /// and while draining).
    #[arg(long, env = "WEFT_READINESS_ADDR", default_value = DEFAULT_READINESS_ADDR)]
    pub readiness_addr: SocketAddr,

    /// Directory for the gateway's state (the embedded rate-limit and quota store).
    #[arg(long, env = "WEFT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Shared counter store for several gateway replicas, redis://HOST:PORT; unset: the
    /// embedded store in --state-dir.
    #[arg(long, env = "WEFT_LIMITS_STORE")]
    pub limits_store: Option<String>,

    /// Data-path worker threads; 1 runs the data path on a single-threaded scheduler.
    #[arg(long, env = "WEFT_WORKER_THREADS", default_value_t = DEFAULT_WORKER_THREADS, value_parser = parse_at_least_one)]
    pub worker_threads: usize,

    /// Time in-flight requests get to finish after SIGTERM (e.g. 10s, 500ms).
    #[arg(long, env = "WEFT_DRAIN_DEADLINE", default_value = DEFAULT_DRAIN_DEADLINE, value_parser = parse_duration)]
    pub drain_deadline: Duration,

    /// Largest request body accepted (bytes); larger ones get 413.
    #[arg(long, env = "WEFT_MAX_BODY_BYTES", default_value_t = weft_http::server::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: u64,

    /// Largest request head accepted (bytes); larger ones get 431.
    #[arg(long, env = "WEFT_MAX_HEADER_BYTES", default_value_t = weft_http::server::DEFAULT_MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,

    /// Time a client gets to send a request's headers (slow clients are cut off).
    #[arg(long, env = "WEFT_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Time a request body may send nothing before it is abandoned.
    #[arg(long, env = "WEFT_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// A client connection idle (no byte either way) this long is closed.
    #[arg(long, env = "WEFT_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// HTTP/2 streams one client connection may have open at once.
    #[arg(long, env = "WEFT_H2_MAX_STREAMS", default_value_t = weft_http::server::DEFAULT_H2_MAX_CONCURRENT_STREAMS)]
    pub h2_max_streams: u32,

    /// Time to wait for a backend connection (TCP, TLS or HBONE tunnel).
    #[arg(long, env = "WEFT_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Time an admin, metrics or readiness client gets to send a request's headers.
    #[arg(long, env = "WEFT_HTTP_HEADER_TIMEOUT", default_value = DEFAULT_HTTP_HEADER_TIMEOUT, value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// An admin, metrics or readiness connection idle this long is closed.
    #[arg(long, env = "WEFT_HTTP_IDLE_TIMEOUT", default_value = DEFAULT_HTTP_IDLE_TIMEOUT, value_parser = parse_duration)]
    pub http_idle_timeout: Duration,

    /// Log format: `text` for people, `json` for log pipelines. The access log is one JSON
    /// line per request on stdout (target `access`) either way.
    #[arg(long, env = "WEFT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// A file of the gateway credential that could not be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read the gateway {what} {}: {source} (issue a gateway credential with \
     `weft-control gateway-credential`)",
    path.display()
)]
pub struct CredentialError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl Config {
    /// The gateway credential from --gateway-cert and --gateway-key.
    pub fn gateway_identity(&self) -> Result<Option<ClientIdentity>, CredentialError> {
        let (Some(cert), Some(key)) = (&self.gateway_cert, &self.gateway_key) else {
            return Ok(None);
        };
        let read = |what, path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|source| CredentialError {
                what,
                path: path.clone(),
                source,
            })
        };
        Ok(Some(ClientIdentity::new(
            read("certificate (--gateway-cert)", cert)?,
            read("key (--gateway-key)", key)?,
        )))
    }

    pub fn server_limits(&self) -> weft_http::server::ServerLimits {
        weft_http::server::ServerLimits {
            header_read_timeout: self.header_timeout,
            max_header_bytes: self.max_header_bytes,
            body_read_timeout: self.body_timeout,
            idle_timeout: self.idle_timeout,
            h2_max_concurrent_streams: self.h2_max_streams,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn one_source_is_required_and_control_needs_its_credential() {
        let err = Config::try_parse_from(["weft-gateway"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--control") && err.contains("--config-dir"),
            "{err}"
        );
        let err = Config::try_parse_from(["weft-gateway", "--control", "https://x:15012"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--control-ca"), "{err}");
        let c = Config::try_parse_from(["weft-gateway", "--config-dir", "/tmp/x"]).unwrap();
        assert_eq!(c.admin_addr.to_string(), DEFAULT_ADMIN_ADDR);
        assert_eq!(c.drain_deadline, Duration::from_secs(10));
        assert!(
            Config::try_parse_from([
                "weft-gateway",
                "--config-dir",
                "/tmp/x",
                "--control",
                "https://x:1"
            ])
            .is_err()
        );
    }
}
