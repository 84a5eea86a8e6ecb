//! Starts the gateway and shuts it down gracefully on SIGTERM or SIGINT.
//!
//! Two runtimes, as the agent: a multi-thread one (`--worker-threads`; one thread runs a
//! current-thread scheduler) for the data path, and a current-thread one on its own thread
//! for admin, metrics, readiness and the configuration source (control client or directory
//! watch), so neither competes with client traffic.

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tracing::{info, warn};
use weft_http::{client::UpstreamClient, server::HttpServer};
use weft_link::{
    certs::{CertManager, CertManagerOptions, IdentityCerts},
    control::{CaClient, CaClientConfig, Client, ClientConfig},
    hbone::{ClientOptions, HboneClient, PlainSocketFactory},
    identity::{SpiffeId, TrustDomain},
    runtime::{AdminThread, data_runtime, shutdown_signal},
    tls::ClientTls,
};
use weft_proto::discovery::v1::ClientKind;

use crate::{
    admin::{self, AdminState, Endpoints, SetLogLevel},
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
    #[error(transparent)]
    Runtime(#[from] weft_link::runtime::RuntimeError),
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
        weft_link::identity::GATEWAY_NAMESPACE,
        weft_link::identity::GATEWAY_SERVICE_ACCOUNT,
    )
    .map_err(|source| AppError::TrustDomain {
        value: config.trust_domain.clone(),
        source,
    })?;
    let endpoints = Endpoints::bind(
        config.admin_addr,
        config.metrics_addr,
        config.readiness_addr,
        admin::BIND_HINT,
    )?;
    let runtime = data_runtime(config.worker_threads)?;

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
    });
    let admin_thread = spawn_admin(&config, endpoints, admin_state, state, source)?;
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

/// Admin endpoints and the configuration source share one small current-thread runtime.
fn spawn_admin(
    config: &Config,
    endpoints: Endpoints,
    admin: Arc<AdminState>,
    state: Arc<ConfigState>,
    source: ConfigSource,
) -> Result<AdminThread, AppError> {
    let (header_timeout, idle_timeout) = (config.http_header_timeout, config.http_idle_timeout);
    AdminThread::spawn(move |stopped| async move {
        endpoints.spawn(header_timeout, idle_timeout, move |endpoint, req| {
            admin::route(endpoint, &admin, req)
        });
        match source {
            ConfigSource::Control(client) => client.run(stopped).await,
            ConfigSource::Directory(dir) => source::watch_dir(state, dir, stopped).await,
        }
    })
    .map_err(AppError::from)
}
