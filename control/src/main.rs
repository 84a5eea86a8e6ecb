//! `weft-control`: serves the mesh configuration, from a directory of YAML documents or a
//! Kubernetes cluster, to agents and gateways over gRPC with TLS.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;
use weft_control::{
    ca::{CertificateAuthority, rfc3339},
    config::{
        Source,
        kubernetes::{KubernetesOptions, KubernetesSource},
    },
    duration::parse_duration,
    node::{NodeName, write_credential, write_node_credential},
    principal::{
        GATEWAY_CERT_FILE, GATEWAY_KEY_FILE, OPERATOR_CERT_FILE, OPERATOR_KEY_FILE, OperatorName,
        gateway_spiffe_id, operator_spiffe_id,
    },
    server::{ControlPlane, DEFAULT_LISTEN, ServerConfig, check_cert_ttl},
};
use weft_link::identity::TrustDomain;

/// The Weft control plane: reads Kubernetes-shaped YAML documents (workloads, services,
/// NetworkPolicy, AuthorizationPolicy, PeerAuthentication, HTTPRoute, gateway kinds) from a
/// directory, watches it, and serves them to agents and gateways over gRPC with TLS.
/// Invalid changes are rejected and the last good configuration stays in force. With
/// `--source kubernetes` the same kinds are watched in a cluster instead (pods, services,
/// endpoint slices, network policies, the Istio and Gateway API kinds and the weft.dev
/// CRDs); there an invalid object is skipped on its own.
///
/// Every caller needs a client certificate from the mesh root: `weft-control
/// node-credential` issues an agent's, `operator-credential` weftctl's and
/// `gateway-credential` the gateway's (see their --help). The first start needs --init-ca
/// to generate the root in --state-dir.
#[derive(Debug, Parser)]
#[command(
    name = "weft-control",
    version,
    // Serving takes the top-level flags; a subcommand takes its own. Its presence lifts the
    // server's required flags (--state-dir), which is why that one is an Option below.
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Where configuration comes from.
    #[arg(long, env = "WEFT_SOURCE", value_enum, default_value_t = SourceKind::Files)]
    source: SourceKind,
    /// Directory of *.yaml / *.yml files (read recursively, watched for changes); required
    /// with --source files.
    #[arg(long, env = "WEFT_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// With --source kubernetes: a field selector for the pods watched, e.g.
    /// spec.nodeName=node-1. By default every pod is watched, which the control plane needs.
    #[arg(long, env = "WEFT_POD_FIELD_SELECTOR")]
    pod_field_selector: Option<String>,
    /// Address to serve the agent protocol on (gRPC over TLS).
    #[arg(long, env = "WEFT_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Directory for persistent state: the generated root CA (root-cert.pem, root-key.pem).
    #[arg(long, env = "WEFT_STATE_DIR", required = true)]
    state_dir: Option<PathBuf>,
    /// Generate a new root CA in --state-dir (created if missing) when it holds none: the
    /// first start. Without it a missing or empty state directory is an error, so that a lost
    /// volume never silently replaces the root every node trusts. An existing root is
    /// always loaded, never replaced.
    #[arg(long, env = "WEFT_INIT_CA")]
    init_ca: bool,
    /// Publish an empty configuration when the source becomes empty (or start with one).
    /// Without it an emptied configuration directory (an unmounted volume) is refused, logged
    /// and counted (weft_control_config_reloads{result="refused_empty"}), and the last
    /// configuration stays in force.
    #[arg(long, env = "WEFT_ALLOW_EMPTY_CONFIG")]
    allow_empty_config: bool,
    /// Extra IP address or DNS name for the server certificate (repeatable); localhost,
    /// 127.0.0.1 and ::1 are always included. Give the addresses agents connect to.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// Operator-supplied root CA certificate (PEM), instead of the state directory's.
    #[arg(long, requires = "ca_key", env = "WEFT_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Private key (PEM) of --ca-cert.
    #[arg(long, requires = "ca_cert", env = "WEFT_CA_KEY")]
    ca_key: Option<PathBuf>,
    /// Address to serve Prometheus metrics on (`/metrics`), e.g. 0.0.0.0:15020.
    #[arg(long, env = "WEFT_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Print the root CA certificate clients must trust, then exit.
    #[arg(long)]
    print_root: bool,
    /// The mesh's trust domain: the CA signs spiffe://<trust-domain>/ns/<ns>/sa/<sa> and
    /// accepts node credentials spiffe://<trust-domain>/node/<node>.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = weft_link::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: TrustDomain,
    /// The longest lifetime of a workload certificate the CA issues (e.g. 24h, 1h, 90s);
    /// shorter requests are honoured. At least 1m.
    #[arg(long, env = "WEFT_CERT_TTL", default_value = "24h", value_parser = parse_cert_ttl)]
    cert_ttl: Duration,
}

#[derive(Debug, Subcommand)]
#[expect(
    clippy::enum_variant_names,
    reason = "the subcommands are named after what they issue"
)]
enum Command {
    /// Issue the client certificate a node's agent authenticates with (--node-cert/--node-key).
    ///
    /// A node credential is spiffe://<trust-domain>/node/<node>, for client authentication
    /// only; the CA signs only the identities of that node's workloads for its holder, and a
    /// discovery subscriber presenting it may only subscribe as that node. Writes node-cert.pem,
    /// node-key.pem (mode 0600) and root-cert.pem into --out-dir (never over existing files).
    /// Uses the root in --state-dir (which must exist: start the server with --init-ca
    /// first) or the operator's --ca-cert/--ca-key.
    NodeCredential(NodeCredentialArgs),
    /// Issue the client certificate weftctl presents (--cert/--key, or WEFTCTL_CERT and
    /// WEFTCTL_KEY).
    ///
    /// An operator credential is spiffe://<trust-domain>/operator/<name>, for client
    /// authentication only. It may read the control plane's Status and any node's
    /// ConfigDump, and subscribe; it cannot obtain workload certificates. Writes
    /// operator-cert.pem, operator-key.pem (mode 0600) and root-cert.pem into --out-dir.
    OperatorCredential(OperatorCredentialArgs),
    /// Issue the client certificate the edge gateway subscribes with.
    ///
    /// A gateway credential carries the gateway's workload identity,
    /// spiffe://<trust-domain>/ns/weft-system/sa/weft-gateway, for client authentication
    /// only; it alone receives consumers' API-key hashes. Writes gateway-cert.pem,
    /// gateway-key.pem (mode 0600) and root-cert.pem into --out-dir.
    GatewayCredential(GatewayCredentialArgs),
}

/// The root a credential is issued from.
#[derive(Debug, clap::Args)]
struct RootArgs {
    /// The control plane's state directory, holding the root CA.
    #[arg(long, env = "WEFT_STATE_DIR", required_unless_present = "ca_cert")]
    state_dir: Option<PathBuf>,
    /// Operator-supplied root CA certificate (PEM), instead of the state directory's.
    #[arg(long, requires = "ca_key", env = "WEFT_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Private key (PEM) of --ca-cert.
    #[arg(long, requires = "ca_cert", env = "WEFT_CA_KEY")]
    ca_key: Option<PathBuf>,
    /// The mesh's trust domain; must be the control plane's --trust-domain.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = weft_link::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: TrustDomain,
}

impl RootArgs {
    fn load(&self) -> anyhow::Result<CertificateAuthority> {
        Ok(match (&self.ca_cert, &self.ca_key, &self.state_dir) {
            (Some(cert), Some(key), _) => CertificateAuthority::from_files(cert, key)?,
            (_, _, Some(dir)) => CertificateAuthority::load(dir)?,
            _ => anyhow::bail!("give --state-dir, or --ca-cert and --ca-key"),
        })
    }
}

#[derive(Debug, clap::Args)]
struct NodeCredentialArgs {
    #[command(flatten)]
    root: RootArgs,
    /// The node's name, as workloads name it (their `node`, Kubernetes' spec.nodeName).
    #[arg(long)]
    node: NodeName,
    /// Directory to write node-cert.pem, node-key.pem and root-cert.pem into (created if
    /// missing).
    #[arg(long)]
    out_dir: PathBuf,
    /// How long the credential is valid (e.g. 365d, 30d, 12h).
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    ttl: Duration,
}

#[derive(Debug, clap::Args)]
struct OperatorCredentialArgs {
    #[command(flatten)]
    root: RootArgs,
    /// Who the credential is for (a DNS name: alice, ci.example); shown in the control
    /// plane's log of the calls it makes.
    #[arg(long)]
    name: OperatorName,
    /// Directory to write operator-cert.pem, operator-key.pem and root-cert.pem into
    /// (created if missing).
    #[arg(long)]
    out_dir: PathBuf,
    /// How long the credential is valid (e.g. 30d, 12h). Shorter than a node's: people
    /// and their laptops change more often than nodes.
    #[arg(long, default_value = "30d", value_parser = parse_duration)]
    ttl: Duration,
}

#[derive(Debug, clap::Args)]
struct GatewayCredentialArgs {
    #[command(flatten)]
    root: RootArgs,
    /// Directory to write gateway-cert.pem, gateway-key.pem and root-cert.pem into
    /// (created if missing).
    #[arg(long)]
    out_dir: PathBuf,
    /// How long the credential is valid.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    ttl: Duration,
}

fn parse_cert_ttl(s: &str) -> Result<Duration, String> {
    check_cert_ttl(parse_duration(s)?).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SourceKind {
    /// A directory of YAML documents (--config-dir): standalone mode.
    Files,
    /// The cluster's API server, through the in-cluster configuration or KUBECONFIG.
    Kubernetes,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    // Control-plane work is light: one small multi-thread runtime is plenty.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(Command::NodeCredential(a)) => {
            let ca = a.root.load()?;
            let files =
                write_node_credential(&ca, &a.root.trust_domain, &a.node, a.ttl, &a.out_dir)?;
            return report_credential(&files);
        }
        Some(Command::OperatorCredential(a)) => {
            let ca = a.root.load()?;
            let id = operator_spiffe_id(&a.root.trust_domain, &a.name);
            let files = write_credential(
                &ca,
                &id,
                a.name.as_str(),
                a.ttl,
                &a.out_dir,
                (OPERATOR_CERT_FILE, OPERATOR_KEY_FILE),
            )?;
            report_credential(&files)?;
            println!(
                "use it with: weftctl status --ca-cert {} --cert {} --key {}",
                files.root.display(),
                files.cert.display(),
                files.key.display()
            );
            return Ok(());
        }
        Some(Command::GatewayCredential(a)) => {
            let ca = a.root.load()?;
            let id = gateway_spiffe_id(&a.root.trust_domain);
            let files = write_credential(
                &ca,
                &id,
                "weft-gateway",
                a.ttl,
                &a.out_dir,
                (GATEWAY_CERT_FILE, GATEWAY_KEY_FILE),
            )?;
            return report_credential(&files);
        }
        None => {}
    }
    let state_dir = args.state_dir.context("--state-dir is required to serve")?;
    let ca = args.ca_cert.clone().zip(args.ca_key.clone());
    if args.print_root {
        let ca = match &ca {
            Some((cert, key)) => CertificateAuthority::from_files(cert, key)?,
            None if args.init_ca => CertificateAuthority::load_or_initialize(&state_dir)?,
            None => CertificateAuthority::load(&state_dir)?,
        };
        print!("{}", ca.root_pem());
        return Ok(());
    }
    let source = match args.source {
        SourceKind::Files => Source::Directory(
            args.config_dir
                .context("--config-dir is required with --source files")?,
        ),
        SourceKind::Kubernetes => {
            let options = KubernetesOptions {
                pod_field_selector: args.pod_field_selector,
                ..KubernetesOptions::default()
            };
            Source::Kubernetes(KubernetesSource::connect(options).await?)
        }
    };
    let mut config = ServerConfig::new(source, args.listen, state_dir);
    config.sans = args.sans;
    config.ca = ca;
    config.metrics_addr = args.metrics_addr;
    config.trust_domain = args.trust_domain;
    config.cert_ttl = args.cert_ttl;
    config.init_ca = args.init_ca;
    config.allow_empty_config = args.allow_empty_config;
    let server = ControlPlane::new(config).await?;
    tracing::info!(addr = %server.local_addr()?, "serving the agent protocol");
    server
        .run(async {
            shutdown_signal().await;
            tracing::info!("shutting down");
        })
        .await?;
    Ok(())
}

fn report_credential(files: &weft_control::node::CredentialFiles) -> anyhow::Result<()> {
    println!(
        "issued {} (valid until {}):\n  {}\n  {}\n  {}",
        files.spiffe_id,
        rfc3339(files.issued.not_after),
        files.cert.display(),
        files.key.display(),
        files.root.display()
    );
    Ok(())
}

/// SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_flags_parse_as_before() {
        let args = Args::try_parse_from(["weft-control", "--config-dir", "c", "--state-dir", "s"])
            .unwrap();
        assert!(args.command.is_none());
        assert_eq!(args.state_dir, Some(PathBuf::from("s")));
        assert_eq!(args.cert_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(args.trust_domain.as_str(), "cluster.local");
        // --state-dir stays required when serving.
        let err = Args::try_parse_from(["weft-control", "--config-dir", "c"]).unwrap_err();
        assert!(err.to_string().contains("--state-dir"), "{err}");
    }

    #[test]
    fn cert_ttl_accepts_a_minute_and_refuses_less() {
        let parse = |ttl: &str| {
            Args::try_parse_from(["weft-control", "--state-dir", "s", "--cert-ttl", ttl])
        };
        assert_eq!(parse("1m").unwrap().cert_ttl, Duration::from_secs(60));
        assert_eq!(parse("90s").unwrap().cert_ttl, Duration::from_secs(90));
        let err = parse("59s").unwrap_err().to_string();
        assert!(err.contains("at least 1m"), "{err}");
        let err = parse("10").unwrap_err().to_string();
        assert!(err.contains("no unit"), "{err}");
    }

    #[test]
    fn first_start_and_empty_config_are_explicit_flags() {
        let args = Args::try_parse_from(["weft-control", "--config-dir", "c", "--state-dir", "s"])
            .unwrap();
        assert!(!args.init_ca && !args.allow_empty_config);
        let args = Args::try_parse_from([
            "weft-control",
            "--config-dir",
            "c",
            "--state-dir",
            "s",
            "--init-ca",
            "--allow-empty-config",
        ])
        .unwrap();
        assert!(args.init_ca && args.allow_empty_config);
    }

    #[test]
    fn operator_credential_parses_and_validates_the_name() {
        let parse = |name: &str| {
            Args::try_parse_from([
                "weft-control",
                "operator-credential",
                "--state-dir",
                "s",
                "--name",
                name,
                "--out-dir",
                "o",
            ])
        };
        let Some(Command::OperatorCredential(oc)) = parse("alice").unwrap().command else {
            panic!("no subcommand");
        };
        assert_eq!(oc.name.as_str(), "alice");
        assert_eq!(oc.ttl, Duration::from_secs(30 * 24 * 3600));
        let err = parse("Alice").unwrap_err().to_string();
        assert!(err.contains("operator name \"Alice\" is invalid"), "{err}");
    }

    #[test]
    fn node_credential_parses_and_validates_the_node() {
        let args = Args::try_parse_from([
            "weft-control",
            "node-credential",
            "--state-dir",
            "s",
            "--node",
            "node-1",
            "--out-dir",
            "o",
        ])
        .unwrap();
        let Some(Command::NodeCredential(nc)) = args.command else {
            panic!("no subcommand: {args:?}");
        };
        assert_eq!(nc.node.as_str(), "node-1");
        assert_eq!(nc.root.state_dir, Some(PathBuf::from("s")));
        assert_eq!(nc.ttl, Duration::from_secs(365 * 24 * 3600));
        let err = Args::try_parse_from([
            "weft-control",
            "node-credential",
            "--state-dir",
            "s",
            "--node",
            "Node_1",
            "--out-dir",
            "o",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("node name \"Node_1\" is invalid"), "{err}");
        // Without a root to use.
        let err = Args::try_parse_from([
            "weft-control",
            "node-credential",
            "--node",
            "n",
            "--out-dir",
            "o",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--state-dir"), "{err}");
    }
}
