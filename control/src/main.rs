//! `weft-control`: serves the mesh configuration, from a directory of YAML documents or a
//! Kubernetes cluster, to agents and gateways over gRPC with TLS.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tracing_subscriber::EnvFilter;
use weft_control::{
    ca::CertificateAuthority,
    config::{
        Source,
        kubernetes::{KubernetesOptions, KubernetesSource},
    },
    server::{ControlPlane, DEFAULT_LISTEN, ServerConfig},
};

/// The Weft control plane: reads Kubernetes-shaped YAML documents (workloads, services,
/// NetworkPolicy, AuthorizationPolicy, PeerAuthentication, HTTPRoute, gateway kinds) from a
/// directory, watches it, and serves them to agents and gateways over gRPC with TLS.
/// Invalid changes are rejected and the last good configuration stays in force. With
/// `--source kubernetes` the same kinds are watched in a cluster instead (pods, services,
/// endpoint slices, network policies, the Istio and Gateway API kinds and the weft.dev
/// CRDs); there an invalid object is skipped on its own.
#[derive(Debug, Parser)]
#[command(name = "weft-control", version)]
struct Args {
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
    #[arg(long, env = "WEFT_STATE_DIR")]
    state_dir: PathBuf,
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
    let ca = args.ca_cert.clone().zip(args.ca_key.clone());
    if args.print_root {
        let ca = match &ca {
            Some((cert, key)) => CertificateAuthority::from_files(cert, key)?,
            None => CertificateAuthority::load_or_generate(&args.state_dir)?,
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
    let mut config = ServerConfig::new(source, args.listen, args.state_dir);
    config.sans = args.sans;
    config.ca = ca;
    config.metrics_addr = args.metrics_addr;
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
