//! The agent's configuration: command-line flags, each with an environment variable, and
//! named defaults whose comments give the reasoning.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use weft_link::{
    control::ClientIdentity,
    flags::{parse_at_least_one, parse_duration},
};

pub use weft_http::admin::{
    DEFAULT_ADMIN_ADDR, DEFAULT_HTTP_HEADER_TIMEOUT, DEFAULT_HTTP_IDLE_TIMEOUT,
    DEFAULT_METRICS_ADDR, DEFAULT_READINESS_ADDR,
};

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
/// An HBONE connection without open tunnels for this long is closed. Twice the client pool's
/// idle timeout (5 minutes), so an honest client always closes first.
pub const DEFAULT_HBONE_IDLE_TIMEOUT: &str = "10m";
/// How often an HBONE connection is PINGed, to find peers that vanished without a FIN.
pub const DEFAULT_HBONE_KEEPALIVE_INTERVAL: &str = "30s";
/// An unanswered PING closes its HBONE connection after this long; an honest peer answers in
/// a round trip.
pub const DEFAULT_HBONE_KEEPALIVE_TIMEOUT: &str = "10s";
/// HBONE connections one peer identity may hold to one pod. A client pools one connection
/// per (source pod, destination) carrying 100 tunnels, so even hundreds of replicas sharing a
/// service account stay below it; it keeps one identity (a leaked certificate, a runaway
/// client) from taking every socket of the node.
pub const DEFAULT_HBONE_MAX_CONNECTIONS_PER_IDENTITY: usize = 1024;

/// How long a forwarded DNS query may wait for the node's resolvers before the pod gets
/// SERVFAIL: under glibc's 5 s default, so the pod hears the failure before it gives up.
pub const DEFAULT_DNS_FORWARD_TIMEOUT: &str = "3s";

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "weft-agent",
    version,
    about = "Weft node agent: captures enrolled pods' TCP connections with eBPF, carries them \
             to other nodes in mutual-TLS HBONE tunnels with SPIFFE identities, enforces L4 \
             authorization and PeerAuthentication at the destination, with metrics and access \
             logs."
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

    /// PEM file with this node's credential: the client certificate
    /// (spiffe://<trust-domain>/node/<node>) the agent presents to the control plane, which
    /// signs workload certificates only for this node's workloads. Issue one with
    /// `weft-control node-credential --node <node>`.
    #[arg(long, env = "WEFT_NODE_CERT")]
    pub node_cert: PathBuf,

    /// PEM file with the private key of --node-cert.
    #[arg(long, env = "WEFT_NODE_KEY")]
    pub node_key: PathBuf,

    /// SPIFFE trust domain of the mesh: identities are spiffe://<trust-domain>/ns/<ns>/sa/<sa>.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = crate::metrics::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,

    /// Requested lifetime of workload certificates (e.g. 1h, 24h); the CA may shorten it.
    /// Unset: the CA's default. Certificates are renewed at half-life.
    #[arg(long, env = "WEFT_CERT_TTL", value_parser = parse_duration)]
    pub cert_ttl: Option<Duration>,

    /// JSON file listing the pods on this node to capture, with their network namespace and
    /// cgroup: {"pods": [{"uid", "netns", "cgroup"}]}.
    #[arg(long, env = "WEFT_PODS")]
    pub pods: PathBuf,

    /// cgroup v2 directory holding every pod of this node, enrolled or not (on Kubernetes the
    /// kubepods cgroup, e.g. /sys/fs/cgroup/kubepods.slice). Service VIPs are translated to an
    /// endpoint in the kernel, at connect time, for the sockets of every process below it that
    /// the agent does not proxy (pods not enrolled, workloads marked `protocol: TCP`), so no
    /// kube-proxy is needed; a VIP on an undeclared port, or without a ready endpoint, fails
    /// `connect()` with EPERM at once. Unset: VIPs are resolved only for enrolled pods.
    #[arg(long, env = "WEFT_SERVICE_CGROUP")]
    pub service_cgroup: Option<PathBuf>,

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

    /// Data-path worker threads; 1 runs the data path on a single-threaded scheduler.
    #[arg(long, env = "WEFT_WORKER_THREADS", default_value_t = DEFAULT_WORKER_THREADS)]
    pub worker_threads: usize,

    /// Time in-flight connections get to finish after SIGTERM (e.g. 5s, 500ms).
    #[arg(long, env = "WEFT_DRAIN_DEADLINE", default_value = DEFAULT_DRAIN_DEADLINE, value_parser = parse_duration)]
    pub drain_deadline: Duration,

    /// Time to wait for an upstream connection (e.g. 10s).
    #[arg(long, env = "WEFT_CONNECT_TIMEOUT", default_value = DEFAULT_CONNECT_TIMEOUT, value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Time an admin, metrics or readiness client gets to send a request's headers.
    #[arg(long, env = "WEFT_HTTP_HEADER_TIMEOUT", default_value = DEFAULT_HTTP_HEADER_TIMEOUT, value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// An admin, metrics or readiness connection idle (no byte either way) this long is closed.
    #[arg(long, env = "WEFT_HTTP_IDLE_TIMEOUT", default_value = DEFAULT_HTTP_IDLE_TIMEOUT, value_parser = parse_duration)]
    pub http_idle_timeout: Duration,

    /// An HBONE connection (port 15008) without open tunnels this long is closed.
    #[arg(long, env = "WEFT_HBONE_IDLE_TIMEOUT", default_value = DEFAULT_HBONE_IDLE_TIMEOUT, value_parser = parse_duration)]
    pub hbone_idle_timeout: Duration,

    /// How often an HBONE connection is PINGed.
    #[arg(long, env = "WEFT_HBONE_KEEPALIVE_INTERVAL", default_value = DEFAULT_HBONE_KEEPALIVE_INTERVAL, value_parser = parse_duration)]
    pub hbone_keepalive_interval: Duration,

    /// How long a PING may go unanswered before its HBONE connection is closed.
    #[arg(long, env = "WEFT_HBONE_KEEPALIVE_TIMEOUT", default_value = DEFAULT_HBONE_KEEPALIVE_TIMEOUT, value_parser = parse_duration)]
    pub hbone_keepalive_timeout: Duration,

    /// HBONE connections one peer identity may hold open to one pod; more are refused
    /// (GOAWAY, ENHANCE_YOUR_CALM) while other identities still connect.
    #[arg(long, env = "WEFT_HBONE_MAX_CONNECTIONS_PER_IDENTITY", default_value_t = DEFAULT_HBONE_MAX_CONNECTIONS_PER_IDENTITY, value_parser = parse_at_least_one)]
    pub hbone_max_connections_per_identity: usize,

    /// Istio's root namespace: an AuthorizationPolicy or PeerAuthentication here applies in
    /// every namespace (with a selector, to the matching workloads of every namespace).
    /// Istio's default, so documents written for Istio mean the same here; set it to what
    /// istiod's `rootNamespace` (meshConfig) is.
    #[arg(long, env = "WEFT_ROOT_NAMESPACE", default_value = weft_mesh::policy::DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,

    /// A resolver the pod DNS proxy forwards names outside the cluster to, as ADDR:PORT
    /// (repeat for several, tried in order). Unset: the nameservers of the node's
    /// /etc/resolv.conf, read at start.
    #[arg(
        long = "dns-upstream",
        env = "WEFT_DNS_UPSTREAM",
        value_delimiter = ','
    )]
    pub dns_upstreams: Vec<SocketAddr>,

    /// Forward no name: the pod DNS proxy answers the cluster's names and refuses every
    /// other (REFUSED), whatever the node's /etc/resolv.conf says.
    #[arg(long, env = "WEFT_NO_DNS_FORWARD", conflicts_with = "dns_upstreams")]
    pub no_dns_forward: bool,

    /// How long a forwarded DNS query waits for the upstream resolvers before the pod gets
    /// SERVFAIL.
    #[arg(long, env = "WEFT_DNS_FORWARD_TIMEOUT", default_value = DEFAULT_DNS_FORWARD_TIMEOUT, value_parser = parse_duration)]
    pub dns_forward_timeout: Duration,

    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(long, env = "WEFT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// A file of the node credential that could not be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read the node {what} {}: {source} (issue a node credential with \
     `weft-control node-credential --node <node>`)",
    path.display()
)]
pub struct NodeCredentialError {
    /// "certificate (--node-cert)" or "key (--node-key)".
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl Config {
    /// The node credential the agent authenticates to the control plane with, read from
    /// --node-cert and --node-key. Its content is checked when the TLS settings are built.
    pub fn node_identity(&self) -> Result<ClientIdentity, NodeCredentialError> {
        let read = |what, path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|source| NodeCredentialError {
                what,
                path: path.clone(),
                source,
            })
        };
        Ok(ClientIdentity::new(
            read("certificate (--node-cert)", &self.node_cert)?,
            read("key (--node-key)", &self.node_key)?,
        ))
    }
}

impl Config {
    /// The HBONE server's settings from the `--hbone-*` flags.
    pub fn hbone_server_options(&self) -> weft_link::hbone::ServerOptions {
        weft_link::hbone::ServerOptions {
            idle_timeout: self.hbone_idle_timeout,
            keepalive_interval: self.hbone_keepalive_interval,
            keepalive_timeout: self.hbone_keepalive_timeout,
            max_connections_per_peer: self.hbone_max_connections_per_identity,
            drain_timeout: self.drain_deadline,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
            "--node-cert",
            "node-cert.pem",
            "--node-key",
            "node-key.pem",
            "--pods",
            "p.json",
        ])
        .unwrap();
        assert_eq!(c.admin_addr.to_string(), DEFAULT_ADMIN_ADDR);
        assert_eq!(c.drain_deadline, Duration::from_secs(5));
        // The HBONE defaults are the server's own, stated once more here for --help.
        let server = weft_link::hbone::ServerOptions::default();
        let hbone = c.hbone_server_options();
        assert_eq!(hbone.idle_timeout, server.idle_timeout);
        assert_eq!(hbone.keepalive_interval, server.keepalive_interval);
        assert_eq!(hbone.keepalive_timeout, server.keepalive_timeout);
        assert_eq!(
            hbone.max_connections_per_peer,
            server.max_connections_per_peer
        );
    }

    #[test]
    fn dns_upstreams_repeat_or_come_as_a_list_and_must_be_addresses() {
        let base = [
            "weft-agent",
            "--node",
            "n1",
            "--control",
            "https://127.0.0.1:15012",
            "--control-ca",
            "root.pem",
            "--node-cert",
            "c.pem",
            "--node-key",
            "k.pem",
            "--pods",
            "p.json",
        ];
        let c = Config::try_parse_from(base).unwrap();
        assert!(c.dns_upstreams.is_empty(), "unset: resolv.conf decides");
        assert_eq!(c.dns_forward_timeout, Duration::from_secs(3));
        let mut args = base.to_vec();
        args.extend([
            "--dns-upstream",
            "10.0.0.2:53",
            "--dns-upstream",
            "[fd00::53]:53,10.0.0.3:5353",
        ]);
        let c = Config::try_parse_from(args).unwrap();
        let got: Vec<String> = c.dns_upstreams.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["10.0.0.2:53", "[fd00::53]:53", "10.0.0.3:5353"]);
        let mut args = base.to_vec();
        args.extend(["--dns-upstream", "10.0.0.2"]);
        let err = Config::try_parse_from(args).unwrap_err().to_string();
        assert!(
            err.contains("--dns-upstream") && err.contains("10.0.0.2"),
            "{err}"
        );
        let mut args = base.to_vec();
        args.push("--no-dns-forward");
        assert!(Config::try_parse_from(args.clone()).unwrap().no_dns_forward);
        args.extend(["--dns-upstream", "10.0.0.2:53"]);
        let err = Config::try_parse_from(args).unwrap_err().to_string();
        assert!(err.contains("--no-dns-forward"), "{err}");
    }

    #[test]
    fn the_node_credential_is_required_and_read_with_its_path_in_errors() {
        let base = [
            "weft-agent",
            "--node",
            "n1",
            "--control",
            "https://127.0.0.1:15012",
            "--control-ca",
            "root.pem",
            "--pods",
            "p.json",
        ];
        let err = Config::try_parse_from(base).unwrap_err().to_string();
        assert!(
            err.contains("--node-cert") && err.contains("--node-key"),
            "{err}"
        );

        // No tempfile dependency in this crate: a directory of this process's own.
        let dir = std::env::temp_dir().join(format!("weft-agent-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("node-cert.pem");
        std::fs::write(&cert, "CERT").unwrap();
        let key = dir.join("missing-key.pem");
        let _ = std::fs::remove_file(&key);
        let mut args = base.map(std::ffi::OsString::from).to_vec();
        args.extend(["--node-cert".into(), cert.clone().into()]);
        args.extend(["--node-key".into(), key.clone().into()]);
        let c = Config::try_parse_from(args).unwrap();
        let err = c.node_identity().unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "cannot read the node key (--node-key) {}",
                key.display()
            )),
            "{err}"
        );
        std::fs::write(&key, "KEY").unwrap();
        let identity = c.node_identity().unwrap();
        assert_eq!(
            (identity.cert_pem.as_str(), identity.key_pem.as_str()),
            ("CERT", "KEY")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
