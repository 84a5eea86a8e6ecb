//! The configuration in force, its version, and every subscriber's queue.
//!
//! One lock guards both the configuration and the subscriber registry, so that publishing
//! a version and taking a subscriber's snapshot are ordered: a subscriber either receives a
//! change through its queue or finds it already in its snapshot, never neither or both.
//! Publishing never waits on a subscriber: each has a bounded queue, and one that is full
//! is marked for a fresh snapshot instead (its task resynchronises when it catches up).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};
use weft_proto::discovery::v1::{self as pb, ResourceType};

use crate::{
    config::{Delta, Loaded, ResourceSet},
    metrics::Metrics,
};

/// Changes a subscriber may fall behind by before it is sent a snapshot instead. Small: a
/// subscriber that far behind is better served by one snapshot than by many deltas.
pub const DEFAULT_SUBSCRIBER_QUEUE: usize = 16;

/// One accepted configuration change, shared by every subscriber's queue.
#[derive(Debug)]
pub struct Change {
    pub version: u64,
    pub deltas: BTreeMap<ResourceType, Delta>,
}

/// What [`Store::apply`] did with a newly read configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// It had errors; the previous configuration stays in force.
    Rejected { errors: usize },
    /// It was valid but identical to the one in force; no version was published.
    Unchanged,
    /// It was published as this version.
    Applied { version: u64 },
    /// It was valid but empty while the one in force is not, and empty configurations are
    /// not allowed: the previous configuration stays in force (an unmounted volume must not
    /// wipe every agent's workloads and policies).
    RefusedEmpty,
}

/// What a subscriber is: its hello, its address, and what it has been sent and answered.
#[derive(Debug, Clone)]
pub struct SubscriberInfo {
    pub hello: pb::ClientHello,
    pub peer: String,
    pub connected_at_ms: u64,
    pub types: BTreeMap<ResourceType, pb::TypeStatus>,
    pub resyncs: u64,
}

struct Subscriber {
    types: BTreeSet<ResourceType>,
    queue: mpsc::Sender<Arc<Change>>,
    resync: Arc<Resync>,
    info: Arc<Mutex<SubscriberInfo>>,
}

/// Set when a subscriber's queue overflowed; its task takes a snapshot when notified.
#[derive(Debug, Default)]
pub struct Resync {
    pub needed: AtomicBool,
    pub notify: Notify,
}

/// The handle a stream task holds.
pub struct Subscription {
    pub id: u64,
    pub queue: mpsc::Receiver<Arc<Change>>,
    pub resync: Arc<Resync>,
    pub info: Arc<Mutex<SubscriberInfo>>,
    /// The configuration at subscription time, to send as the first snapshot.
    pub version: u64,
    pub resources: Arc<ResourceSet>,
}

struct Inner {
    version: u64,
    loaded_at_ms: u64,
    resources: Arc<ResourceSet>,
    problems: Vec<String>,
    last_rejected: bool,
    subscribers: BTreeMap<u64, Subscriber>,
    next_id: u64,
}

/// The configuration in force and its subscribers.
pub struct Store {
    inner: Mutex<Inner>,
    queue_capacity: usize,
    started_at_ms: u64,
    source: String,
    metrics: Metrics,
    /// Whether a configuration that became empty is published (`--allow-empty-config`).
    allow_empty: bool,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Store {
    /// Starts at version 1 with `initial`, which must be valid (see [`Loaded::has_errors`]).
    pub fn new(initial: Loaded, source: String, queue_capacity: usize) -> Self {
        let now = now_ms();
        Store {
            inner: Mutex::new(Inner {
                version: 1,
                loaded_at_ms: now,
                resources: Arc::new(initial.resources),
                problems: initial
                    .diagnostics
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                last_rejected: false,
                subscribers: BTreeMap::new(),
                next_id: 1,
            }),
            queue_capacity: queue_capacity.max(1),
            started_at_ms: now,
            source,
            metrics: Metrics::default(),
            allow_empty: false,
        }
    }

    /// Publishes configurations that became empty instead of refusing them.
    pub fn allow_empty(mut self, allow: bool) -> Self {
        self.allow_empty = allow;
        self
    }

    /// The store's metrics (register them with [`Metrics::register`]).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The version in force and its resources.
    pub fn current(&self) -> (u64, Arc<ResourceSet>) {
        let inner = self.inner.lock();
        (inner.version, inner.resources.clone())
    }

    /// Whether a workload of `namespace`/`service_account` (one SPIFFE identity) is scheduled
    /// on `node` in the configuration in force: the CA's node-scoping rule. A linear scan,
    /// off the lock: certificates are requested once per identity and renewal, not per
    /// connection.
    pub fn identity_on_node(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        let (_, resources) = self.current();
        resources.of_type(ResourceType::Workload).any(|r| {
            matches!(&r.kind, Some(pb::resource::Kind::Workload(w))
                if w.node == node && w.namespace == namespace && w.service_account == service_account)
        })
    }

    /// Publishes a newly read configuration, unless it has errors (then the one in force
    /// stays and nobody sees a change) or equals the one in force.
    pub fn apply(&self, loaded: Loaded) -> ApplyOutcome {
        let problems: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
        if loaded.has_errors() {
            let errors = loaded.errors().count();
            for d in loaded.errors() {
                warn!("configuration error: {d}");
            }
            let mut inner = self.inner.lock();
            warn!(
                errors,
                version = inner.version,
                "new configuration rejected; the previous one stays in force"
            );
            inner.problems = problems;
            inner.last_rejected = true;
            self.metrics.reload("rejected");
            return ApplyOutcome::Rejected { errors };
        }
        let mut inner = self.inner.lock();
        if loaded.resources.is_empty() && !inner.resources.is_empty() && !self.allow_empty {
            warn!(
                version = inner.version,
                resources = inner.resources.len(),
                "the configuration source became empty; refusing to publish it, the previous \
                 version stays in force (was a volume unmounted? --allow-empty-config \
                 publishes empty configurations)"
            );
            inner.problems = vec![
                "the configuration source became empty; the previous version stays in force \
                 (--allow-empty-config publishes empty configurations)"
                    .to_string(),
            ];
            inner.last_rejected = true;
            self.metrics.reload("refused_empty");
            return ApplyOutcome::RefusedEmpty;
        }
        inner.problems = problems;
        inner.last_rejected = false;
        let deltas = inner.resources.diff(&loaded.resources);
        if deltas.is_empty() {
            self.metrics.reload("unchanged");
            return ApplyOutcome::Unchanged;
        }
        self.metrics.reload("applied");
        inner.version += 1;
        inner.loaded_at_ms = now_ms();
        inner.resources = Arc::new(loaded.resources);
        let change = Arc::new(Change {
            version: inner.version,
            deltas,
        });
        info!(
            version = change.version,
            types = ?change.deltas.keys().map(|t| t.as_str_name()).collect::<Vec<_>>(),
            "configuration changed"
        );
        for (id, sub) in &inner.subscribers {
            if !change.deltas.keys().any(|t| sub.types.contains(t)) {
                continue;
            }
            if sub.resync.needed.load(Ordering::Acquire) {
                // A snapshot is due anyway, and it will include this change.
                continue;
            }
            match sub.queue.try_send(change.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(
                        stream = id,
                        "subscriber fell behind; it will get a fresh snapshot"
                    );
                    sub.resync.needed.store(true, Ordering::Release);
                    sub.resync.notify.notify_one();
                }
                // The stream is ending; its task unsubscribes.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        ApplyOutcome::Applied {
            version: change.version,
        }
    }

    /// Registers a subscriber and returns its first snapshot.
    pub fn subscribe(&self, hello: pb::ClientHello, peer: String) -> Subscription {
        let types: BTreeSet<ResourceType> = hello
            .resource_types()
            .filter(|t| *t != ResourceType::Unspecified)
            .collect();
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let resync = Arc::new(Resync::default());
        let info = Arc::new(Mutex::new(SubscriberInfo {
            types: types
                .iter()
                .map(|t| {
                    (
                        *t,
                        pb::TypeStatus {
                            resource_type: (*t).into(),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            hello,
            peer,
            connected_at_ms: now_ms(),
            resyncs: 0,
        }));
        let mut inner = self.inner.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.subscribers.insert(
            id,
            Subscriber {
                types,
                queue: tx,
                resync: resync.clone(),
                info: info.clone(),
            },
        );
        Subscription {
            id,
            queue: rx,
            resync,
            info,
            version: inner.version,
            resources: inner.resources.clone(),
        }
    }

    /// Clears a subscriber's resync flag and returns the snapshot to send. Taken under the
    /// publish lock: changes queued before it are contained in it (version <= the returned
    /// one) and are to be skipped; changes after it arrive through the queue.
    pub fn resync(&self, resync: &Resync) -> (u64, Arc<ResourceSet>) {
        let inner = self.inner.lock();
        resync.needed.store(false, Ordering::Release);
        (inner.version, inner.resources.clone())
    }

    pub fn unsubscribe(&self, id: u64) {
        self.inner.lock().subscribers.remove(&id);
    }

    /// The server and its clients, for `weftctl status`.
    pub fn status(&self, server_version: &str) -> pb::StatusResponse {
        let inner = self.inner.lock();
        let clients = inner
            .subscribers
            .iter()
            .map(|(id, sub)| {
                let info = sub.info.lock();
                pb::ClientStatus {
                    stream_id: *id,
                    kind: info.hello.kind,
                    name: info.hello.name.clone(),
                    node: info.hello.node.clone(),
                    client_version: info.hello.client_version.clone(),
                    peer_address: info.peer.clone(),
                    connected_at_unix_ms: info.connected_at_ms,
                    types: info.types.values().cloned().collect(),
                    resyncs: info.resyncs,
                }
            })
            .collect();
        pb::StatusResponse {
            server_version: server_version.to_string(),
            started_at_unix_ms: self.started_at_ms,
            config_version: inner.version,
            config_loaded_at_unix_ms: inner.loaded_at_ms,
            config_problems: inner.problems.clone(),
            last_reload_rejected: inner.last_rejected,
            clients,
            config_source: self.source.clone(),
        }
    }
}

/// The full snapshot of one type, as a response without nonce.
pub fn snapshot(ty: ResourceType, version: u64, resources: &ResourceSet) -> pb::DiscoveryResponse {
    pb::DiscoveryResponse {
        resource_type: ty.into(),
        version,
        snapshot: true,
        resources: resources.of_type(ty).map(|r| (**r).clone()).collect(),
        removed: Vec::new(),
        nonce: String::new(),
    }
}

/// One type's delta of a change, as a response without nonce.
pub fn delta(ty: ResourceType, version: u64, delta: &Delta) -> pb::DiscoveryResponse {
    pb::DiscoveryResponse {
        resource_type: ty.into(),
        version,
        snapshot: false,
        resources: delta.upserted.iter().map(|r| (**r).clone()).collect(),
        removed: delta.removed.clone(),
        nonce: String::new(),
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
