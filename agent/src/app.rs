//! Starts the agent: checks the host, loads the kernel programs, enrols this node's pods,
//! serves the admin endpoints, and shuts down gracefully on SIGTERM or SIGINT.
//!
//! Two runtimes, as in ztunnel: a multi-thread one for the data path and a current-thread one,
//! on its own thread, for admin, metrics and readiness.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use arc_swap::ArcSwap;
use parking_lot::RwLock;
use prometheus_client::registry::Registry;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{error, info, warn};

use weft_link::{
    certs::{CertManager, CertManagerOptions},
    control::{CaClient, CaClientConfig, Client, ClientConfig, Rejection, Update},
    identity::TrustDomain,
    runtime::{AdminThread, data_runtime, shutdown_signal},
    tls::TrustBundle,
};
use weft_mesh::{
    dns::ServiceNames,
    lb::{Balancer, SplitMix},
    service::ServiceIndex,
};
use weft_proto::discovery::v1::{ClientKind, ResourceType};

use crate::{
    admin::{self, AdminState, Endpoints, SetLogLevel},
    capture::{Capture, CaptureError, KernelLogger},
    config::Config,
    discovery::{ServiceHandler, WorkloadHandler},
    dns::{self as dns_proxy, DnsProxy},
    drain,
    identity::Identities,
    inpod::{Netns, NetnsError},
    metrics::{CertificateCollector, Metrics, VerdictCollector},
    pods::{self, PodStatus},
    policy::{PolicyHandler, PolicyIndex},
    preflight::{self, PreflightError},
    proxy::{AgentPorts, ProxyContext, registry::ConnectionRegistry},
    rlimit, services_kernel,
    state::{self, StateError, WorkloadStore},
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
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
    #[error("{path}: not a usable mesh root for mutual TLS: {source}")]
    TrustBundle {
        path: std::path::PathBuf,
        #[source]
        source: Box<weft_link::tls::TlsError>,
    },
    #[error(transparent)]
    NodeCredential(#[from] crate::config::NodeCredentialError),
    #[error(transparent)]
    Control(#[from] weft_link::control::ClientError),
    #[error(transparent)]
    Runtime(#[from] weft_link::runtime::RuntimeError),
    #[error("cannot start the kernel service map sync thread: {0}")]
    ServiceSync(#[source] std::io::Error),
}

pub fn run(
    config: Config,
    set_log_level: SetLogLevel,
    kernel_log_level: u8,
) -> Result<(), AppError> {
    let host = preflight::check(&config.bpffs)?;
    info!(node = %config.node, cgroup2 = %host.cgroup2_mount.display(), "starting");
    // Not fatal: the agent serves fewer connections, and the log and the gauge say so.
    let open_files = match rlimit::raise_fd_limit() {
        Ok(limit) => {
            info!(
                before = limit.before,
                now = limit.soft,
                hard = limit.hard,
                "open-files limit"
            );
            limit.soft
        }
        Err(err) => {
            warn!(%err, "running with the open-files limit as it is");
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_or(0, |(soft, _)| soft)
        }
    };
    let enrolments = state::load_enrolments(&config.pods)?;
    let trust_domain: TrustDomain =
        config
            .trust_domain
            .parse()
            .map_err(|source| AppError::TrustDomain {
                value: config.trust_domain.clone(),
                source,
            })?;
    let bundle = trust_bundle(&config, &trust_domain)?;
    let workloads = Arc::new(ArcSwap::from_pointee(WorkloadStore::default()));
    let policies = Arc::new(ArcSwap::from_pointee(PolicyIndex::default()));
    let services = Arc::new(ArcSwap::from_pointee(ServiceIndex::default()));
    let service_names = Arc::new(ArcSwap::from_pointee(ServiceNames::default()));
    let dns = Arc::new(DnsProxy::new(
        service_names.clone(),
        workloads.clone(),
        dns_upstreams(&config),
        config.dns_forward_timeout,
    ));
    let connections = Arc::new(ConnectionRegistry::new(workloads.clone(), policies.clone()));
    let lb = Arc::new(Balancer::new());
    // Service VIPs in the kernel (--service-cgroup): the control client pokes the sync thread
    // on every service or workload update.
    let (service_sync, service_pokes) = match &config.service_cgroup {
        Some(_) => {
            let (trigger, pokes) = services_kernel::SyncTrigger::new();
            (trigger, Some(pokes))
        }
        None => (services_kernel::SyncTrigger::default(), None),
    };
    let identities = Arc::new(Identities::new(
        CertManager::new(
            Arc::new(ca_client(&config)?),
            CertManagerOptions {
                ttl: config.cert_ttl,
                ..CertManagerOptions::default()
            },
        ),
        bundle,
    ));
    let control = control_client(
        &config,
        &trust_domain,
        workloads.clone(),
        policies.clone(),
        ServiceHandler::new(services.clone()).with_names(service_names),
        identities.clone(),
        connections.clone(),
        lb.clone(),
        service_sync,
    )?;
    let home = Netns::current()?;

    // Bind every admin port before touching the kernel, so a second agent fails fast.
    let endpoints = Endpoints::bind(
        config.admin_addr,
        config.metrics_addr,
        config.readiness_addr,
        admin::BIND_HINT,
    )?;
    // One worker runs the data path on this thread (see `data_runtime` for why).
    let runtime = data_runtime(config.worker_threads)?;

    runtime.block_on(async move {
        let (capture, logger) = Capture::load(kernel_log_level)?;
        let capture = Arc::new(capture);
        if let Some(logger) = logger {
            forward_kernel_logs(logger);
        }

        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        metrics
            .open_files_limit
            .set(i64::try_from(open_files).unwrap_or(i64::MAX));
        connections.register_metrics(&mut registry);
        dns.register_metrics(&mut registry);
        registry.register_collector(Box::new(VerdictCollector(capture.clone())));
        registry.register_collector(Box::new(CertificateCollector(identities.clone())));
        let _service_links = match (&config.service_cgroup, service_pokes) {
            (Some(cgroup), Some(pokes)) => {
                let (maps, links) = services_kernel::attach(&capture, cgroup)?;
                let errors = prometheus_client::metrics::counter::Counter::default();
                registry.register(
                    "weft_kernel_service_sync_errors",
                    "Service map updates that failed (map full, kernel error); retried on the \
                     next service or workload update",
                    errors.clone(),
                );
                services_kernel::spawn_sync(
                    maps,
                    pokes,
                    services.clone(),
                    workloads.clone(),
                    config.node.clone(),
                    errors,
                )
                .map_err(AppError::ServiceSync)?;
                info!(cgroup = %cgroup.display(), "service VIPs translated in the kernel below this cgroup");
                Some(links)
            }
            _ => None,
        };
        let admin_state = Arc::new(AdminState {
            node: config.node.clone(),
            registry,
            workloads: workloads.clone(),
            policies: policies.clone(),
            identities: identities.clone(),
            pods: RwLock::new(
                enrolments
                    .iter()
                    .map(|e| PodStatus {
                        uid: e.uid.clone(),
                        netns: e.netns.clone(),
                        cgroup: e.cgroup.clone(),
                        listeners: Vec::new(),
                        ips: Vec::new(),
                        netns_cookie: 0,
                        captured: false,
                        error: Some("enrolling".into()),
                    })
                    .collect(),
            ),
            control: control.state(),
            set_log_level,
        });
        let admin_thread = spawn_admin(&config, endpoints, admin_state.clone(), control)?;

        let ctx = Arc::new(ProxyContext {
            capture,
            node: config.node.clone(),
            trust_domain,
            workloads,
            policies,
            services,
            lb,
            random: SplitMix::new(random_seed()),
            identities,
            connections: connections.clone(),
            pods: RwLock::new(HashMap::new()),
            metrics: metrics.clone(),
            home,
            connect_timeout: config.connect_timeout,
            agent_ports: AgentPorts::new([
                config.admin_addr.port(),
                config.metrics_addr.port(),
                config.readiness_addr.port(),
            ]),
            hbone: config.hbone_server_options(),
        });
        let (trigger, watcher) = drain::new();
        tokio::spawn(connections.run(watcher.clone()));
        let mut enrolled = Vec::new();
        let mut statuses = Vec::new();
        for enrolment in &enrolments {
            match pods::enrol(enrolment, &ctx, &dns, &watcher) {
                Ok(pod) => {
                    info!(pod = %pod.status.uid, listeners = ?pod.status.listeners, "pod captured");
                    statuses.push(pod.status.clone());
                    enrolled.push(pod);
                }
                Err(err) => {
                    error!(%err, "pod not captured");
                    statuses.push(pods::failed(enrolment, &err));
                }
            }
        }
        metrics.enrolled_pods.set(statuses.len() as i64);
        metrics.captured_pods.set(enrolled.len() as i64);
        *admin_state.pods.write() = statuses;
        drop(watcher);
        info!(pods = enrolled.len(), "agent ready");

        let signal = shutdown_signal().await;
        info!(signal, "shutting down: releasing capture, draining connections");
        // From here until a new agent attaches again, the pods' new connections bypass the
        // mesh (the fail-open window the README describes); say so where operators look.
        for pod in &mut enrolled {
            pod.release_capture();
        }
        metrics.captured_pods.set(0);
        for status in admin_state.pods.write().iter_mut() {
            status.captured = false;
            status.error = Some("capture released: the agent is shutting down".into());
        }
        warn!(
            pods = enrolled.len(),
            "capture released: new connections of this node's pods bypass the mesh until an agent captures them again"
        );
        let in_time = trigger.drain(config.drain_deadline).await;
        if !in_time {
            warn!(deadline = ?config.drain_deadline, "connections still open at the drain deadline; closing them");
        }
        drop(enrolled);
        admin_thread.stop();
        info!("stopped");
        Ok::<_, AppError>(())
    })
}

/// The resolvers the pods' DNS proxy forwards to: `--dns-upstream`, else the node's
/// resolv.conf nameservers. None at all is allowed (names outside the cluster are refused)
/// and said at start.
fn dns_upstreams(config: &Config) -> Vec<std::net::SocketAddr> {
    if config.no_dns_forward {
        info!("--no-dns-forward: pods' queries for names outside the cluster are refused");
        return Vec::new();
    }
    if !config.dns_upstreams.is_empty() {
        info!(upstreams = ?config.dns_upstreams, "DNS upstreams from --dns-upstream");
        return config.dns_upstreams.clone();
    }
    let upstreams = match std::fs::read_to_string(dns_proxy::RESOLV_CONF) {
        Ok(text) => dns_proxy::resolv_conf_nameservers(&text),
        Err(err) => {
            warn!(path = dns_proxy::RESOLV_CONF, %err, "cannot read the node's resolvers");
            Vec::new()
        }
    };
    if upstreams.is_empty() {
        warn!(
            "no DNS upstream (--dns-upstream unset, no nameserver in {}): pods' queries for \
             names outside the cluster are refused",
            dns_proxy::RESOLV_CONF
        );
    } else {
        info!(?upstreams, path = dns_proxy::RESOLV_CONF, "DNS upstreams");
    }
    upstreams
}

/// Reads aya-log records from the kernel ring buffer into the agent's log.
fn forward_kernel_logs(logger: KernelLogger) {
    // SAFETY: the logger owns the ring buffer's fd and moves into the AsyncFd, which keeps it
    // open for as long as it is registered.
    let fd = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(err) => {
            warn!(err = %err, "eBPF log forwarding is off");
            return;
        }
    };
    let mut fd = fd;
    tokio::spawn(async move {
        loop {
            match fd.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(err) => {
                    warn!(%err, "eBPF log forwarding stopped");
                    return;
                }
            }
        }
    });
}

/// The mesh root from `--control-ca`: the CA that signs the control plane's certificate signs
/// every workload certificate too, so it is also the trust bundle of mutual TLS.
fn trust_bundle(config: &Config, td: &TrustDomain) -> Result<Arc<TrustBundle>, AppError> {
    let pem = std::fs::read(&config.control_ca).map_err(|source| AppError::ControlCa {
        path: config.control_ca.clone(),
        source,
    })?;
    TrustBundle::from_pem(td.clone(), &pem)
        .map(Arc::new)
        .map_err(|source| AppError::TrustBundle {
            path: config.control_ca.clone(),
            source: Box::new(source),
        })
}

/// The discovery client: workloads, policies and services from the control plane; every workload
/// change also updates which identities this node holds certificates for.
#[expect(
    clippy::too_many_arguments,
    reason = "the shared state every update touches, each passed once at start"
)]
fn control_client(
    config: &Config,
    trust_domain: &TrustDomain,
    workloads: Arc<ArcSwap<WorkloadStore>>,
    policies: Arc<ArcSwap<PolicyIndex>>,
    mut service_handler: ServiceHandler,
    identities: Arc<Identities>,
    connections: Arc<ConnectionRegistry>,
    lb: Arc<Balancer>,
    service_sync: services_kernel::SyncTrigger,
) -> Result<Client, AppError> {
    let ca = std::fs::read_to_string(&config.control_ca).map_err(|source| AppError::ControlCa {
        path: config.control_ca.clone(),
        source,
    })?;
    let mut client_config = ClientConfig::new(
        config.control.clone(),
        ca,
        ClientKind::Agent,
        format!("weft-agent-{}", config.node),
        config.node.clone(),
        vec![
            ResourceType::Workload,
            ResourceType::Policy,
            ResourceType::Service,
        ],
    );
    client_config.client_version = env!("CARGO_PKG_VERSION").to_string();
    // The node credential binds the subscription to this node (the control plane refuses a
    // hello for another node) and is what the CA client authenticates with.
    client_config.identity = Some(config.node_identity()?);
    let node = config.node.clone();
    let td = trust_domain.clone();
    let store = workloads.clone();
    let service_index = service_handler.index();
    let mut workload_handler = WorkloadHandler::new(workloads);
    let mut policy_handler = PolicyHandler::new(policies, config.root_namespace.clone());
    Ok(Client::new(
        client_config,
        move |update: Update| match update.resource_type {
            ResourceType::Workload => {
                workload_handler.apply(update)?;
                identities.sync(
                    store
                        .load()
                        .iter()
                        .filter(|w| w.node == node)
                        .filter_map(|w| w.identity(&td)),
                );
                connections.changed();
                forget_gone_endpoints(&lb, &service_index.load(), &store.load());
                service_sync.poke();
                Ok(())
            }
            ResourceType::Policy => {
                policy_handler.apply(update)?;
                connections.changed();
                Ok(())
            }
            // Read per connection by the outbound path; the kernel's service maps follow it.
            ResourceType::Service => {
                service_handler.apply(update)?;
                forget_gone_endpoints(&lb, &service_index.load(), &store.load());
                service_sync.poke();
                Ok(())
            }
            other => Err(Rejection::new(
                "",
                format!("unexpected resource type {other:?}"),
            )),
        },
    )?)
}

/// Drops the load balancer's state of endpoints that are in no service any more, so it holds
/// no more than the configuration names.
fn forget_gone_endpoints(lb: &Balancer, services: &ServiceIndex, workloads: &WorkloadStore) {
    let live: HashSet<IpAddr> = services
        .iter()
        .flat_map(|(_, s)| s.endpoints.iter())
        .filter_map(|uid| workloads.by_uid(uid))
        .flat_map(|w| w.ips.iter().map(|ip| ip.to_canonical()))
        .collect();
    lb.retain(|addr| live.contains(&addr.ip().to_canonical()));
}

/// A seed for the load balancer's random numbers: different per agent and per start, so
/// agents do not pick in step.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// The CA client the certificate manager renews workload certificates through: the control
/// plane's address and root, and this node's credential, without which the CA signs nothing.
/// It connects on the first request.
pub fn ca_client(config: &Config) -> Result<CaClient, AppError> {
    let ca = std::fs::read_to_string(&config.control_ca).map_err(|source| AppError::ControlCa {
        path: config.control_ca.clone(),
        source,
    })?;
    Ok(CaClient::new(CaClientConfig::new(
        config.control.clone(),
        ca,
        config.node_identity()?,
    ))?)
}

/// Admin endpoints and the control client share one small current-thread runtime, so neither
/// competes with the data path for its workers.
fn spawn_admin(
    config: &Config,
    endpoints: Endpoints,
    state: Arc<AdminState>,
    control: Client,
) -> Result<AdminThread, AppError> {
    let (header_timeout, idle_timeout) = (config.http_header_timeout, config.http_idle_timeout);
    AdminThread::spawn(move |stopped| async move {
        endpoints.spawn(header_timeout, idle_timeout, move |endpoint, req| {
            admin::route(endpoint, &state, req)
        });
        control.run(stopped).await;
    })
    .map_err(AppError::from)
}
