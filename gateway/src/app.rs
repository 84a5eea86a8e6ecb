//! Starts the gateway and shuts it down gracefully on SIGTERM or SIGINT.
//!
//! Two runtimes, as the agent: a multi-thread one (`--worker-threads`; one thread runs a
//! current-thread scheduler) for the data path, and a current-thread one on its own thread
//! for admin, metrics, readiness and the configuration source (control client or directory
//! watch), so neither competes with client traffic.

use std::{sync::Arc, thread, time::Duration};

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tracing::{info, warn};
use weft_http::{
    client::UpstreamClient,
    server::{HttpServer, ServerLimits},
};
use weft_link::{
    certs::{CertManager, CertManagerOptions, IdentityCerts},
    control::{CaClient, CaClientConfig, Client, ClientConfig},
    hbone::{ClientOptions, HboneClient, PlainSocketFactory},
    identity::{SpiffeId, TrustDomain},
    tls::ClientTls,
};
use weft_proto::discovery::v1::ClientKind;

use crate::{
    admin::{self, AdminState, Endpoint, SetLogLevel},
    analytics::Analytics,
    auth::{AuthMetrics, JwksRegistry},
    config::Config,
    drain::Draining,
    limits::{Limiter, LimiterConfig, LimitsStore},
    listener::Listeners,
    proxy::Proxy,
    snapshot::Snapshot,
    source::{self, ConfigState, ControlHandler, GATEWAY_TYPES},
};

/// The gateway's namespace and service account: its mesh identity.
pub const GATEWAY_NAMESPACE: &str = "weft-system";
pub const GATEWAY_SERVICE_ACCOUNT: &str = "weft-gateway";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Bind(#[from] admin::BindError),
    #[error("cannot read the control plane's root certificate {path}: {source}")]
    ControlCa {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--trust-domain {value:?}: {source}")]
    TrustDomain {
        value: String,
        #[source]
        source: weft_link::identity::IdentityError,
    },
    #[error(transparent)]
    Credential(#[from] crate::config::CredentialError),
    #[error(transparent)]
    Control(#[from] weft_link::control::ClientError),
    #[error("--limits-store / --state-dir: {0}")]
    Limits(#[from] crate::limits::LimitsError),
    #[error("cannot start the {what} runtime: {source}")]
    Runtime {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Where the configuration comes from.
enum ConfigSource {
    Control(Box<Client>),
    Directory(std::path::PathBuf),
}

pub fn run(config: Config, set_log_level: SetLogLevel) -> Result<(), AppError> {
    let trust_domain: TrustDomain =
        config
            .trust_domain
            .parse()
            .map_err(|source| AppError::TrustDomain {
                value: config.trust_domain.clone(),
                source,
            })?;
    let gateway_id = SpiffeId::new(
        trust_domain.clone(),
        GATEWAY_NAMESPACE,
        GATEWAY_SERVICE_ACCOUNT,
    )
    .map_err(|source| AppError::TrustDomain {
        value: config.trust_domain.clone(),
        source,
    })?;
    let admin_listeners = [
        (
            admin::bind(config.admin_addr, Endpoint::Admin)?,
            Endpoint::Admin,
        ),
        (
            admin::bind(config.metrics_addr, Endpoint::Metrics)?,
            Endpoint::Metrics,
        ),
        (
            admin::bind(config.readiness_addr, Endpoint::Readiness)?,
            Endpoint::Readiness,
        ),
    ];
    let mut builder = if config.worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.worker_threads);
        b
    };
    let runtime = builder
        .thread_name("weft-data")
        .enable_all()
        .build()
        .map_err(|source| AppError::Runtime {
            what: "data-path",
            source,
        })?;

    // The mesh certificate, in control mode only: the CA signs it for the gateway credential.
    let control_ca = match &config.control_ca {
        Some(path) if config.control.is_some() => Some(std::fs::read_to_string(path).map_err(
            |source| AppError::ControlCa {
                path: path.clone(),
                source,
            },
        )?),
        _ => None,
    };
    let identity = config.gateway_identity()?;
    let certs: Option<IdentityCerts> = match (&config.control, &control_ca, &identity) {
        (Some(address), Some(ca), Some(identity)) => {
            let ca_client = CaClient::new(CaClientConfig::new(
                address.clone(),
                ca.clone(),
                identity.clone(),
            ))?;
            let manager = CertManager::new(Arc::new(ca_client), CertManagerOptions::default());
            let _enter = runtime.enter();
            Some(manager.watch(gateway_id.clone()))
        }
        _ => None,
    };
    let mesh_tls: weft_http::client::MeshTls = {
        let certs = certs.clone();
        Arc::new(move || {
            let certs = certs.as_ref()?;
            Some(ClientTls::new(certs.resolver()?, certs.trust_bundle()?))
        })
    };

    let mut registry = Registry::default();
    let analytics = Arc::new(Analytics::new(&mut registry));
    let auth_metrics = AuthMetrics::default();
    auth_metrics.register(&mut registry);
    let jwks = JwksRegistry::new(auth_metrics);
    let limiter = {
        let store: LimitsStore = config.limits_store.as_deref().unwrap_or("").parse()?;
        let _enter = runtime.enter();
        Arc::new(Limiter::new(
            LimiterConfig {
                store,
                state_dir: config.state_dir.clone(),
                ..Default::default()
            },
            &mut registry,
        )?)
    };
    let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
    let client = {
        let _enter = runtime.enter();
        UpstreamClient::new(
            HboneClient::new(Arc::new(PlainSocketFactory), ClientOptions::default()),
            mesh_tls,
            config.connect_timeout,
        )
    };
    let proxy = Arc::new(Proxy::new(
        snapshot.clone(),
        client,
        trust_domain.clone(),
        config.max_body_bytes,
        config.body_timeout,
        analytics.clone(),
        Some(limiter.clone()),
    ));
    let server = Arc::new(HttpServer::new(config.server_limits()));
    let listeners = Arc::new(Listeners::new(config.listen_addr, server, proxy));
    let state = Arc::new(ConfigState::new(
        snapshot,
        listeners.clone(),
        runtime.handle().clone(),
        jwks,
        analytics.clone(),
    ));

    let source = match (&config.control, control_ca, &config.config_dir) {
        (Some(address), Some(ca), _) => {
            let mut cc = ClientConfig::new(
                address.clone(),
                ca,
                ClientKind::Gateway,
                format!("weft-gateway-{}", hostname()),
                String::new(),
                GATEWAY_TYPES.to_vec(),
            );
            cc.client_version = env!("CARGO_PKG_VERSION").to_string();
            cc.identity = identity;
            let mut handler = ControlHandler::new(state.clone());
            ConfigSource::Control(Box::new(Client::new(cc, move |u| handler.apply(u))?))
        }
        (_, _, Some(dir)) => ConfigSource::Directory(dir.clone()),
        // clap requires one of them.
        _ => ConfigSource::Directory(std::path::PathBuf::from(".")),
    };
    let draining = Draining::default();
    let admin_state = Arc::new(AdminState {
        config: state.clone(),
        draining: draining.clone(),
        registry,
        analytics,
        control: match &source {
            ConfigSource::Control(c) => Some(c.state()),
            ConfigSource::Directory(_) => None,
        },
        certs: certs.clone(),
        set_log_level,
        server: HttpServer::new(ServerLimits {
            header_read_timeout: config.http_header_timeout,
            idle_timeout: config.http_idle_timeout,
            ..Default::default()
        }),
    });
    let admin_thread = spawn_admin(admin_listeners, admin_state, state, source)?;
    info!(
        source = if config.control.is_some() { "control" } else { "config-dir" },
        identity = %gateway_id,
        "gateway started"
    );

    runtime.block_on(async {
        let signal = shutdown_signal().await;
        info!(
            signal,
            "shutting down: refusing new connections, draining requests"
        );
        draining.start();
        listeners.stop_all();
        let open = listeners.connections.open();
        if !listeners.connections.wait_idle(config.drain_deadline).await {
            warn!(
                deadline = ?config.drain_deadline,
                open = listeners.connections.open(),
                "connections still open at the drain deadline; closing them"
            );
        } else {
            info!(drained = open, "every connection finished");
        }
    });
    admin_thread.stop();
    if let Err(e) = limiter.persist() {
        warn!(error = %e, "rate-limit counters not saved");
    }
    drop(certs);
    runtime.shutdown_timeout(Duration::from_millis(100));
    info!("stopped");
    Ok(())
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "local".into())
}

/// Resolves on SIGTERM (the kubelet) or SIGINT (a terminal), naming which.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            std::future::pending::<()>().await;
            "none"
        }
    }
}

struct AdminThread {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: thread::JoinHandle<()>,
}

impl AdminThread {
    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.handle.join();
    }
}

/// Admin endpoints and the configuration source share one small current-thread runtime.
fn spawn_admin(
    listeners: [(std::net::TcpListener, Endpoint); 3],
    admin: Arc<AdminState>,
    state: Arc<ConfigState>,
    source: ConfigSource,
) -> Result<AdminThread, AppError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AppError::Runtime {
            what: "admin",
            source,
        })?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = thread::Builder::new()
        .name("weft-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                for (listener, endpoint) in listeners {
                    tokio::spawn(admin::serve(listener, endpoint, admin.clone()));
                }
                let stopped = async {
                    let _ = stopped.await;
                };
                match source {
                    ConfigSource::Control(client) => client.run(stopped).await,
                    ConfigSource::Directory(dir) => source::watch_dir(state, dir, stopped).await,
                }
            });
            runtime.shutdown_timeout(Duration::from_millis(100));
        })
        .map_err(|source| AppError::Runtime {
            what: "admin",
            source,
        })?;
    Ok(AdminThread { stop, handle })
}
