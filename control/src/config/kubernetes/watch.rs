//! Connecting to the API server, and one reflector (a watch that keeps a local copy of
//! every object) per kind. A configuration is assembled from the copies whenever they
//! change, debounced like the directory source.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    hash::Hash,
    pin::pin,
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::{
    core::v1::{Node, Pod, Secret, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client,
    core::{DynamicObject, GroupVersionKind},
    runtime::{
        WatchStreamExt,
        reflector::{Store, store::Writer},
        watcher,
    },
};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::{sync::Notify, task::JoinHandle, time::Instant};
use tokio_stream::StreamExt;
use tracing::{debug, info, warn};

use super::assemble::{Objects, assemble};
use crate::config::{Loaded, ResourceSet, document::Kind, source::MAX_COALESCE};

/// The field selector of the Secrets watched: TLS certificates only.
const TLS_SECRETS: &str = "type=kubernetes.io/tls";

/// How long to wait for the API server to answer the first request. Long enough for a
/// loaded API server; short enough that a wrong kubeconfig fails while someone watches.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the first list of every kind may take before start-up fails. Serving a partial
/// configuration (services without their pods) would make agents drop live endpoints.
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// The kinds watched without a Rust type, and the group/versions tried for each (newest
/// first). A kind whose CRD is not installed is not watched; installing it later needs a
/// restart of the control plane.
const DYNAMIC_KINDS: [(Kind, &str, &[&str]); 10] = [
    (
        Kind::AuthorizationPolicy,
        "security.istio.io",
        &["v1", "v1beta1"],
    ),
    (
        Kind::PeerAuthentication,
        "security.istio.io",
        &["v1", "v1beta1"],
    ),
    (Kind::HttpRoute, "gateway.networking.k8s.io", &["v1"]),
    (Kind::GrpcRoute, "gateway.networking.k8s.io", &["v1"]),
    (Kind::Gateway, "gateway.networking.k8s.io", &["v1"]),
    (Kind::Workload, "weft.dev", &["v1alpha1"]),
    (Kind::Backend, "weft.dev", &["v1alpha1"]),
    (Kind::ApiPolicy, "weft.dev", &["v1alpha1"]),
    (Kind::Consumer, "weft.dev", &["v1alpha1"]),
    (Kind::Plan, "weft.dev", &["v1alpha1"]),
];

/// How to watch the cluster.
#[derive(Debug, Clone)]
pub struct KubernetesOptions {
    /// A field selector for pods, e.g. `spec.nodeName=node-1`. The control plane needs
    /// every pod (a service's members live on every node), so this is for tests and for
    /// splitting a very large cluster.
    pub pod_field_selector: Option<String>,
    /// See [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`DEFAULT_SYNC_TIMEOUT`].
    pub sync_timeout: Duration,
}

impl Default for KubernetesOptions {
    fn default() -> Self {
        KubernetesOptions {
            pod_field_selector: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            sync_timeout: DEFAULT_SYNC_TIMEOUT,
        }
    }
}

/// Why the Kubernetes source could not start. Each message is one line that says what to
/// do: the underlying error chain is flattened into it, because the operator reads this
/// line in a crash-looping pod's log and nothing else.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error(
        "cannot find a Kubernetes API server: not running in a cluster and no usable \
         kubeconfig ({reason}); run with --source files --config-dir DIR for standalone mode"
    )]
    NoConfig { reason: String },
    #[error(
        "cannot reach the Kubernetes API server at {server}: {reason}; run with --source \
         files --config-dir DIR for standalone mode"
    )]
    Unreachable { server: String, reason: String },
    #[error(
        "the first list of {kinds} from {server} did not complete within {secs}s ({reason}); \
         the control plane's service account needs get, list and watch on them"
    )]
    Sync {
        kinds: String,
        server: String,
        secs: u64,
        reason: String,
    },
}

/// Configuration read from a cluster. Cloning shares the watches; they stop when the last
/// clone is dropped.
#[derive(Clone)]
pub struct KubernetesSource {
    inner: Arc<Inner>,
}

struct Inner {
    server: String,
    nodes: Store<Node>,
    pods: Store<Pod>,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    network_policies: Store<NetworkPolicy>,
    secrets: Store<Secret>,
    dynamic: Vec<(Kind, Store<DynamicObject>)>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the reflector tasks tell the rest.
#[derive(Default)]
struct Shared {
    changed: Notify,
    /// The last watch error of each kind, cleared by its next event; names the cause when
    /// the first list does not complete.
    errors: Mutex<BTreeMap<&'static str, String>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl fmt::Debug for KubernetesSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesSource")
            .field("server", &self.inner.server)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for KubernetesSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kubernetes API server {}", self.inner.server)
    }
}

impl KubernetesSource {
    /// Connects with the in-cluster configuration, or `KUBECONFIG` / `~/.kube/config`
    /// outside a cluster, and waits until every kind has been listed once.
    pub async fn connect(options: KubernetesOptions) -> Result<Self, KubernetesError> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| KubernetesError::NoConfig {
                reason: weft_link::error_chain(&e),
            })?;
        Self::connect_with(config, options).await
    }

    /// As [`KubernetesSource::connect`], with an explicit client configuration.
    pub async fn connect_with(
        config: kube::Config,
        options: KubernetesOptions,
    ) -> Result<Self, KubernetesError> {
        let server = config.cluster_url.to_string();
        let unreachable = |reason: String| KubernetesError::Unreachable {
            server: server.clone(),
            reason,
        };
        let client =
            Client::try_from(config).map_err(|e| unreachable(weft_link::error_chain(&e)))?;
        let version = tokio::time::timeout(options.connect_timeout, client.apiserver_version())
            .await
            .map_err(|_| {
                unreachable(format!(
                    "no answer within {}s",
                    options.connect_timeout.as_secs()
                ))
            })?
            .map_err(|e| unreachable(weft_link::error_chain(&e)))?;
        info!(
            server,
            version = version.git_version,
            "connected to the Kubernetes API server"
        );

        let shared = Arc::new(Shared::default());
        let mut tasks = Vec::new();
        let mut pod_config = watcher::Config::default();
        if let Some(selector) = &options.pod_field_selector {
            pod_config = pod_config.fields(selector);
        }
        let all = watcher::Config::default();
        // Cluster-scoped: their topology labels are the locality of the pods on them.
        let nodes = reflect(
            "Node",
            Api::all(client.clone()),
            all.clone(),
            (),
            &shared,
            &mut tasks,
        );
        let pods = reflect(
            "Pod",
            Api::all(client.clone()),
            pod_config,
            (),
            &shared,
            &mut tasks,
        );
        let services = reflect(
            "Service",
            Api::all(client.clone()),
            all.clone(),
            (),
            &shared,
            &mut tasks,
        );
        let endpoint_slices = reflect(
            "EndpointSlice",
            Api::all(client.clone()),
            all.clone(),
            (),
            &shared,
            &mut tasks,
        );
        let network_policies = reflect(
            "NetworkPolicy",
            Api::all(client.clone()),
            all.clone(),
            (),
            &shared,
            &mut tasks,
        );
        // Only TLS Secrets, the certificate sources of Gateway listeners: the others (tokens,
        // passwords) are never read, so never held in memory.
        let secrets = reflect(
            "Secret",
            Api::all(client.clone()),
            all.clone().fields(TLS_SECRETS),
            (),
            &shared,
            &mut tasks,
        );
        let mut dynamic = Vec::new();
        for (kind, group, versions) in DYNAMIC_KINDS {
            let Some(resource) = discover(&client, kind, group, versions).await else {
                continue;
            };
            let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
            let store = reflect(kind.name(), api, all.clone(), resource, &shared, &mut tasks);
            dynamic.push((kind, store));
        }
        let source = KubernetesSource {
            inner: Arc::new(Inner {
                server: server.clone(),
                nodes,
                pods,
                services,
                endpoint_slices,
                network_policies,
                secrets,
                dynamic,
                shared,
                tasks,
            }),
        };
        source.wait_for_lists(&server, options.sync_timeout).await?;
        Ok(source)
    }

    /// Waits until every reflector has its first complete list.
    async fn wait_for_lists(&self, server: &str, limit: Duration) -> Result<(), KubernetesError> {
        let deadline = Instant::now() + limit;
        let inner = &self.inner;
        // Past the deadline each further check fails at once, so every late kind is named.
        let mut pending = Vec::new();
        if !listed("Node", &inner.nodes, deadline).await {
            pending.push("Node");
        }
        if !listed("Pod", &inner.pods, deadline).await {
            pending.push("Pod");
        }
        if !listed("Service", &inner.services, deadline).await {
            pending.push("Service");
        }
        if !listed("EndpointSlice", &inner.endpoint_slices, deadline).await {
            pending.push("EndpointSlice");
        }
        if !listed("NetworkPolicy", &inner.network_policies, deadline).await {
            pending.push("NetworkPolicy");
        }
        if !listed("Secret", &inner.secrets, deadline).await {
            pending.push("Secret");
        }
        for (kind, store) in &inner.dynamic {
            if !listed(kind.name(), store, deadline).await {
                pending.push(kind.name());
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        let errors = inner.shared.errors.lock();
        let reason = pending
            .iter()
            .filter_map(|kind| errors.get(kind).map(|e| format!("{kind}: {e}")))
            .collect::<Vec<_>>()
            .join("; ");
        Err(KubernetesError::Sync {
            kinds: pending.join(", "),
            server: server.to_string(),
            secs: limit.as_secs(),
            reason: if reason.is_empty() {
                "no error reported".to_string()
            } else {
                reason
            },
        })
    }

    /// The objects as the reflectors hold them now.
    pub fn objects(&self) -> Objects {
        let inner = &self.inner;
        Objects {
            nodes: inner.nodes.state(),
            pods: inner.pods.state(),
            services: inner.services.state(),
            endpoint_slices: inner.endpoint_slices.state(),
            network_policies: inner.network_policies.state(),
            secrets: inner.secrets.state(),
            dynamic: inner
                .dynamic
                .iter()
                .map(|(kind, store)| (*kind, store.state()))
                .collect(),
        }
    }

    /// The configuration the objects make now.
    pub fn load(&self) -> Loaded {
        assemble(&self.objects())
    }

    /// Calls `on_change` with a fresh configuration after each burst of changes, until
    /// `shutdown` completes. Watch failures are retried with backoff inside the
    /// reflectors; meanwhile the last objects seen stay in force.
    pub async fn watch<F>(
        self,
        debounce: Duration,
        mut on_change: F,
        shutdown: impl Future<Output = ()>,
    ) where
        F: FnMut(Loaded),
    {
        let mut shutdown = pin!(shutdown);
        let changed = &self.inner.shared.changed;
        // Skipped objects are reported when they first appear, not at every rebuild; the
        // ones start-up found were reported then.
        let mut reported = match self.rebuild().await {
            Some(loaded) => problems(&loaded),
            None => BTreeSet::new(),
        };
        // A rebuild that changes nothing (most pod status updates: readiness, restarts) is
        // not handed on. Nothing is known to be handed on before the first rebuild, which
        // may hold changes made while the server started.
        let mut last: Option<ResourceSet> = None;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = changed.notified() => {}
            }
            let cap = Instant::now() + MAX_COALESCE;
            loop {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(debounce) => break,
                    _ = tokio::time::sleep_until(cap) => break,
                    _ = changed.notified() => {}
                }
            }
            let Some(loaded) = self.rebuild().await else {
                continue;
            };
            let now = problems(&loaded);
            for d in now.difference(&reported) {
                warn!("{d}");
            }
            let same = now == reported && last.as_ref() == Some(&loaded.resources);
            reported = now;
            if same {
                continue;
            }
            debug!(documents = loaded.documents, "cluster objects changed");
            last = Some(loaded.resources.clone());
            on_change(loaded);
        }
    }

    /// [`KubernetesSource::load`] off the async threads: it walks every object.
    async fn rebuild(&self) -> Option<Loaded> {
        let source = self.clone();
        match tokio::task::spawn_blocking(move || source.load()).await {
            Ok(loaded) => Some(loaded),
            Err(e) => {
                warn!(error = %e, "assembling the configuration failed");
                None
            }
        }
    }
}

fn problems(loaded: &Loaded) -> BTreeSet<String> {
    loaded.diagnostics.iter().map(ToString::to_string).collect()
}

/// Whether `store` has its first complete list before `deadline`.
async fn listed<K>(kind: &str, store: &Store<K>, deadline: Instant) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let done = matches!(
        tokio::time::timeout_at(deadline, store.wait_until_ready()).await,
        Ok(Ok(()))
    );
    if done {
        debug!(kind, objects = store.len(), "listed");
    }
    done
}

/// Starts a reflector for one kind and returns its store.
fn reflect<K>(
    kind: &'static str,
    api: Api<K>,
    config: watcher::Config,
    dyntype: K::DynamicType,
    shared: &Arc<Shared>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<K>
where
    K: kube::Resource + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let writer = Writer::new(dyntype);
    let store = writer.as_reader();
    let shared = shared.clone();
    tasks.push(tokio::spawn(async move {
        let mut events = pin!(watcher(api, config).default_backoff().reflect(writer));
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => {
                    shared.errors.lock().remove(kind);
                    shared.changed.notify_one();
                }
                Err(e) => {
                    let reason = weft_link::error_chain(&e);
                    warn!(kind, error = reason, "watch failed; retrying with backoff");
                    shared.errors.lock().insert(kind, reason);
                }
            }
        }
    }));
    store
}

/// The API resource of the first served version of `kind`, or `None` when its CRD is not
/// installed.
async fn discover(
    client: &Client,
    kind: Kind,
    group: &str,
    versions: &[&str],
) -> Option<kube::core::ApiResource> {
    for version in versions {
        let gvk = GroupVersionKind::gvk(group, version, kind.name());
        match kube::discovery::pinned_kind(client, &gvk).await {
            Ok((resource, _)) => {
                info!(
                    kind = kind.name(),
                    api_version = resource.api_version,
                    "watching"
                );
                return Some(resource);
            }
            Err(e) => debug!(
                kind = kind.name(),
                group,
                version,
                error = weft_link::error_chain(&e),
                "not served"
            ),
        }
    }
    info!(
        kind = kind.name(),
        group, "not served by this cluster (CRD not installed?); not watched"
    );
    None
}
