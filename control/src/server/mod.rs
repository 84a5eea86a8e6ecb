//! The control plane server: loads the CA and the configuration, serves discovery and
//! certificates over TLS, and publishes configuration changes as they happen.

mod certificates;
mod discovery;
pub mod limits;
pub mod store;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming};
use tracing::{info, warn};
use weft_link::identity::TrustDomain;
use weft_proto::{
    discovery::v1::discovery_server::DiscoveryServer,
    identity::v1::certificates_server::CertificatesServer,
};

pub use certificates::{CertificateService, DEFAULT_WORKLOAD_TTL};
pub use discovery::DiscoveryService;
pub use store::{ApplyOutcome, DEFAULT_SUBSCRIBER_QUEUE, Store};

use crate::{
    ca::{CaError, CertificateAuthority},
    config::{Source, source::DEFAULT_DEBOUNCE},
    duration::format_duration,
};

/// The agent protocol's port (ARCHITECTURE §7).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:15012";
/// The longest a workload certificate may live: 24 h, as in Istio; agents renew at half-life.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The shortest `--cert-ttl`: below a minute, agents would spend their time renewing, and the
/// CA's backdating of a few minutes would be most of a certificate's life.
pub const MIN_CERT_TTL: Duration = Duration::from_secs(60);

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where configuration comes from.
    pub source: Source,
    /// The address to serve gRPC over TLS on.
    pub listen: SocketAddr,
    /// Where the generated root CA is kept between starts.
    pub state_dir: PathBuf,
    /// Extra names and IPs for the serving certificate, besides localhost and loopback.
    pub sans: Vec<String>,
    /// An operator-supplied root (certificate and key, PEM), used instead of the state
    /// directory's.
    pub ca: Option<(PathBuf, PathBuf)>,
    /// How long the configuration directory must be quiet before a reload.
    pub debounce: Duration,
    /// Changes a subscriber may fall behind by before it gets a snapshot instead.
    pub subscriber_queue: usize,
    /// Where to serve Prometheus `/metrics`; not served when `None`.
    pub metrics_addr: Option<SocketAddr>,
    /// The mesh's trust domain: workload identities the CA signs and node credentials it
    /// accepts are of this domain.
    pub trust_domain: TrustDomain,
    /// The longest lifetime of an issued workload certificate; at least [`MIN_CERT_TTL`].
    pub cert_ttl: Duration,
    /// Generate a root in `state_dir` if there is none (`--init-ca`). Off by default: a
    /// missing or empty state directory is then an error, never a silent new root.
    pub init_ca: bool,
    /// Publish a configuration source that became empty (`--allow-empty-config`). Off by
    /// default: an emptied directory (an unmounted volume) keeps the last configuration.
    pub allow_empty_config: bool,
    /// How often the server pings each connection, and how long it waits for the answer
    /// before dropping it (and its subscriptions).
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl ServerConfig {
    pub fn new(source: Source, listen: SocketAddr, state_dir: PathBuf) -> Self {
        ServerConfig {
            source,
            listen,
            state_dir,
            sans: Vec::new(),
            ca: None,
            debounce: DEFAULT_DEBOUNCE,
            subscriber_queue: DEFAULT_SUBSCRIBER_QUEUE,
            metrics_addr: None,
            trust_domain: TrustDomain::default(),
            cert_ttl: DEFAULT_CERT_TTL,
            init_ca: false,
            allow_empty_config: false,
            keepalive_interval: limits::DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: limits::DEFAULT_KEEPALIVE_TIMEOUT,
        }
    }
}

/// Checks a `--cert-ttl`: at least [`MIN_CERT_TTL`].
pub fn check_cert_ttl(ttl: Duration) -> Result<Duration, ServerError> {
    if ttl < MIN_CERT_TTL {
        return Err(ServerError::CertTtl {
            ttl: format_duration(ttl),
        });
    }
    Ok(ttl)
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(
        "the workload certificate lifetime (--cert-ttl) is {ttl}; it must be at least 1m, or \
         agents would do little but renew"
    )]
    CertTtl { ttl: String },
    #[error(
        "the configuration source ({source_name}) holds no configuration; refusing to start \
         and serve an empty mesh, which would wipe every agent's workloads and policies (is \
         the volume mounted?). Pass --allow-empty-config if the mesh is meant to be empty"
    )]
    EmptyConfig { source_name: String },
    #[error("the configuration has {count} error(s), refusing to start:\n{errors}")]
    InvalidConfig { count: usize, errors: String },
    #[error("cannot listen on {addr}: {source} (is another control plane running?)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(#[source] tonic::transport::Error),
    #[error("serving failed: {0}")]
    Serve(#[source] tonic::transport::Error),
}

/// A control plane ready to serve: CA loaded, configuration valid, port bound.
pub struct ControlPlane {
    store: Arc<Store>,
    listener: TcpListener,
    identity: Identity,
    ca: Arc<CertificateAuthority>,
    source: Source,
    debounce: Duration,
    metrics_listener: Option<TcpListener>,
    trust_domain: TrustDomain,
    cert_ttl: Duration,
    keepalive: (Duration, Duration),
}

impl ControlPlane {
    /// Loads the CA and the configuration and binds the port. An invalid configuration at
    /// start is an error: serving an empty one instead would wipe every agent's state.
    pub async fn new(config: ServerConfig) -> Result<Self, ServerError> {
        let cert_ttl = check_cert_ttl(config.cert_ttl)?;
        let ca = match &config.ca {
            Some((cert, key)) => CertificateAuthority::from_files(cert, key)?,
            None if config.init_ca => CertificateAuthority::load_or_initialize(&config.state_dir)?,
            None => CertificateAuthority::load(&config.state_dir)?,
        };
        let (chain, key) = ca.issue_serving(&config.sans)?;
        let source = config.source.clone();
        let loaded = {
            let source = source.clone();
            tokio::task::spawn_blocking(move || source.load())
                .await
                .unwrap_or_default()
        };
        for d in &loaded.diagnostics {
            if !d.is_error() {
                warn!("{d}");
            }
        }
        if loaded.has_errors() {
            let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
            return Err(ServerError::InvalidConfig {
                count: errors.len(),
                errors: errors.join("\n"),
            });
        }
        // A directory that is empty at start is as likely an unmounted volume as one that
        // empties later; a cluster may legitimately hold nothing yet.
        if loaded.resources.is_empty()
            && !config.allow_empty_config
            && matches!(source, Source::Directory(_))
        {
            return Err(ServerError::EmptyConfig {
                source_name: source.to_string(),
            });
        }
        info!(
            files = loaded.files,
            documents = loaded.documents,
            resources = loaded.resources.len(),
            "configuration loaded"
        );
        let store = Arc::new(
            Store::new(loaded, source.to_string(), config.subscriber_queue)
                .allow_empty(config.allow_empty_config),
        );
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let metrics_listener = match config.metrics_addr {
            None => None,
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })?,
            ),
        };
        Ok(ControlPlane {
            metrics_listener,
            store,
            listener,
            identity: Identity::from_pem(chain, key),
            ca: Arc::new(ca),
            source,
            debounce: config.debounce,
            trust_domain: config.trust_domain,
            cert_ttl,
            keepalive: (config.keepalive_interval, config.keepalive_timeout),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bound metrics address, if metrics are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The root certificate clients verify the server with.
    pub fn root_pem(&self) -> &str {
        self.ca.root_pem()
    }

    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// Serves until `shutdown` completes, then ends every subscription (clients see their
    /// stream end and reconnect elsewhere) and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let (stop_tx, stop_rx) = watch::channel(false);

        let metrics = self.metrics_listener.map(|listener| {
            let mut registry = Registry::default();
            self.store.metrics().register(&mut registry);
            tokio::spawn(crate::metrics::serve(
                listener,
                Arc::new(registry),
                self.store.clone(),
            ))
        });

        let store = self.store.clone();
        let mut watch_stop = stop_rx.clone();
        let source = self.source.clone();
        let debounce = self.debounce;
        let watcher = tokio::spawn(async move {
            let result = source
                .watch(
                    debounce,
                    move |loaded| match store.apply(loaded) {
                        ApplyOutcome::Applied { version } => {
                            info!(version, "new configuration in force")
                        }
                        ApplyOutcome::Unchanged => info!("configuration re-read, nothing changed"),
                        ApplyOutcome::Rejected { errors } => {
                            warn!(
                                errors,
                                "configuration rejected, previous version stays in force"
                            )
                        }
                        ApplyOutcome::RefusedEmpty => warn!(
                            "the configuration source became empty; the previous version \
                             stays in force (--allow-empty-config publishes an empty one)"
                        ),
                    },
                    async move {
                        let _ = watch_stop.changed().await;
                    },
                )
                .await;
            if let Err(e) = result {
                warn!(error = %e, "cannot watch the configuration; changes need a restart");
            }
        });

        // Client certificates are asked for and verified against the mesh root, but not
        // required by TLS, so that a caller without one gets a gRPC UNAUTHENTICATED that
        // says what to present rather than a bare handshake failure; every call then checks
        // the credential itself (see `principal`).
        let tls = ServerTlsConfig::new()
            .identity(self.identity)
            .client_ca_root(Certificate::from_pem(self.ca.root_pem()))
            .client_auth_optional(true);
        let discovery = DiscoveryService::new(
            self.store.clone(),
            stop_rx.clone(),
            self.trust_domain.clone(),
        );
        let certificates = CertificateService::new(
            self.ca.clone(),
            self.store.clone(),
            self.trust_domain.clone(),
            self.cert_ttl,
        );
        let mut serve_stop = stop_rx;
        let (keepalive_interval, keepalive_timeout) = self.keepalive;
        let server = Server::builder()
            .tls_config(tls)
            .map_err(ServerError::Tls)?
            .max_concurrent_streams(limits::MAX_STREAMS_PER_CONNECTION)
            .concurrency_limit_per_connection(limits::MAX_REQUESTS_PER_CONNECTION)
            .http2_keepalive_interval(Some(keepalive_interval))
            .http2_keepalive_timeout(Some(keepalive_timeout))
            .add_service(
                DiscoveryServer::new(discovery)
                    .max_decoding_message_size(limits::MAX_DISCOVERY_REQUEST),
            )
            .add_service(
                CertificatesServer::new(certificates)
                    .max_decoding_message_size(limits::MAX_SIGN_REQUEST),
            )
            .serve_with_incoming_shutdown(TcpIncoming::from(self.listener), async move {
                let _ = serve_stop.changed().await;
            });

        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
            // Keep the sender alive until here: a dropped sender also reads as "stop".
            drop(stop_tx);
        });
        let result = server.await.map_err(ServerError::Serve);
        watcher.abort();
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        info!("control plane stopped");
        result
    }
}
