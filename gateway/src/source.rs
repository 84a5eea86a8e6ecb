//! Where the configuration comes from, and how a new one is put in force.
//!
//! - `--control`: a subscription over the agent protocol (kinds Listener, ApiRoute, Consumer,
//!   Plan, Workload, Service). Each update is applied to a copy of the raw resources of its
//!   type and the whole snapshot is rebuilt off-lock; only if that succeeds is the version
//!   ACKed and the snapshot swapped, else it is NACKed naming the resource and the previous
//!   configuration stays in force.
//! - `--config-dir`: the control plane's own file source reads, validates and compiles the
//!   directory (`weft_control::config::Source`), and watches it; a bad change is logged with
//!   each error's file, document index and field path, and the last good configuration stays.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tracing::{error, info, warn};
use weft_control::config::{ALL_TYPES, Loaded, Source};
use weft_link::control::{Rejection, Update};
use weft_proto::discovery::v1::ResourceType;

use crate::{
    analytics::Analytics,
    auth::JwksRegistry,
    listener::Listeners,
    snapshot::{BuildError, Resources, Snapshot},
};

/// The resource types the gateway subscribes to.
pub const GATEWAY_TYPES: [ResourceType; 6] = [
    ResourceType::Listener,
    ResourceType::ApiRoute,
    ResourceType::Consumer,
    ResourceType::Plan,
    ResourceType::Workload,
    ResourceType::Service,
];

/// The configuration in force and what readiness needs to know about it.
pub struct ConfigState {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    listeners: Arc<Listeners>,
    runtime: tokio::runtime::Handle,
    generation: AtomicU64,
    /// A configuration has been put in force.
    pub configured: AtomicBool,
    /// Why the last configuration was refused, if it was.
    pub last_error: Mutex<Option<String>>,
    /// JWT key sets, kept across versions.
    jwks: JwksRegistry,
    analytics: Arc<Analytics>,
}

impl ConfigState {
    /// `runtime` is the data path's, where listeners run.
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        listeners: Arc<Listeners>,
        runtime: tokio::runtime::Handle,
        jwks: JwksRegistry,
        analytics: Arc<Analytics>,
    ) -> Self {
        ConfigState {
            snapshot,
            listeners,
            runtime,
            generation: AtomicU64::new(0),
            configured: AtomicBool::new(false),
            last_error: Mutex::new(None),
            jwks,
            analytics,
        }
    }

    /// Builds a snapshot of `resources` and puts it in force, or says why not.
    pub fn install(&self, resources: &Resources) -> Result<(), BuildError> {
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        // JWKS fetches and listeners run on the data path's runtime.
        let _enter = self.runtime.enter();
        let snap = Arc::new(Snapshot::build(resources, generation, &self.jwks)?);
        let prepared = self.listeners.prepare(&snap).map_err(|e| BuildError {
            resource: e.listeners.first().cloned().unwrap_or_default(),
            reason: e.to_string(),
        })?;
        self.generation.store(generation, Ordering::Relaxed);
        self.analytics.set_consumers(snap.consumers.keys());
        // Requests arriving from here on see the new version; ports follow at once.
        self.snapshot.store(snap.clone());
        self.listeners.commit(&snap, prepared);
        self.configured.store(true, Ordering::Release);
        *self.last_error.lock() = None;
        info!(
            generation,
            ports = ?snap.ports.keys().collect::<Vec<_>>(),
            consumers = snap.consumers.len(),
            "configuration in force"
        );
        Ok(())
    }
}

/// Resources of a compiled configuration, by type.
pub fn resources_of(loaded: &Loaded) -> Resources {
    let mut out = Resources::new();
    for ty in ALL_TYPES {
        if !GATEWAY_TYPES.contains(&ty) {
            continue;
        }
        let map: BTreeMap<_, _> = loaded
            .resources
            .of_type(ty)
            .map(|r| (r.name.clone(), r.clone()))
            .collect();
        out.insert(ty, map);
    }
    out
}

/// Applies one read of the directory: errors keep the last good configuration.
pub fn apply_loaded(state: &ConfigState, dir: &std::path::Path, loaded: Loaded) {
    for d in loaded.diagnostics.iter().filter(|d| !d.is_error()) {
        warn!(source = %dir.display(), "{d}");
    }
    if loaded.has_errors() {
        let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
        for e in &errors {
            error!(source = %dir.display(), "{e}");
        }
        warn!(
            errors = errors.len(),
            "the configuration directory has errors; keeping the last good configuration"
        );
        *state.last_error.lock() = Some(errors.join("; "));
        return;
    }
    if let Err(e) = state.install(&resources_of(&loaded)) {
        error!(error = %e, "the configuration cannot be put in force; keeping the last good one");
        *state.last_error.lock() = Some(e.to_string());
    }
}

/// Reads `dir` now, then re-reads it after every change until `shutdown`.
pub async fn watch_dir(
    state: Arc<ConfigState>,
    dir: PathBuf,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let source = Source::Directory(dir.clone());
    let first = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || source.load()).await
    };
    match first {
        Ok(loaded) => apply_loaded(&state, &dir, loaded),
        Err(e) => error!(error = %e, "reading the configuration directory failed"),
    }
    let on_change = {
        let (state, dir) = (state.clone(), dir.clone());
        move |loaded: Loaded| apply_loaded(&state, &dir, loaded)
    };
    if let Err(e) = source
        .watch(
            weft_control::config::source::DEFAULT_DEBOUNCE,
            on_change,
            shutdown,
        )
        .await
    {
        error!(error = %e, dir = %dir.display(), "cannot watch the configuration directory; changes will not be seen");
    }
}

/// The control-plane update handler: raw resources per type, rebuilt into a snapshot.
pub struct ControlHandler {
    state: Arc<ConfigState>,
    resources: Resources,
    received: BTreeSet<ResourceType>,
}

impl ControlHandler {
    pub fn new(state: Arc<ConfigState>) -> Self {
        ControlHandler {
            state,
            resources: Resources::new(),
            received: BTreeSet::new(),
        }
    }

    pub fn apply(&mut self, update: Update) -> Result<(), Rejection> {
        let ty = update.resource_type;
        if !GATEWAY_TYPES.contains(&ty) {
            return Err(Rejection::new(
                "",
                format!("unexpected resource type {ty:?}"),
            ));
        }
        let mut next = if update.snapshot {
            BTreeMap::new()
        } else {
            self.resources.get(&ty).cloned().unwrap_or_default()
        };
        for name in &update.removed {
            next.remove(name);
        }
        for r in update.resources {
            next.insert(r.name.clone(), Arc::new(r));
        }
        let previous = self.resources.insert(ty, next);
        self.received.insert(ty);
        // Until every type has arrived once, a snapshot would serve half a configuration.
        if !GATEWAY_TYPES.iter().all(|t| self.received.contains(t)) {
            return Ok(());
        }
        match self.state.install(&self.resources) {
            Ok(()) => Ok(()),
            Err(e) => {
                match previous {
                    Some(p) => self.resources.insert(ty, p),
                    None => self.resources.remove(&ty),
                };
                *self.state.last_error.lock() = Some(e.to_string());
                Err(Rejection::new(e.resource, e.reason))
            }
        }
    }
}
