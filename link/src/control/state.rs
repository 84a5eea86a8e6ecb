//! What the client knows about its connection, for readiness probes and metrics.

use std::{collections::BTreeMap, time::Instant};

use tokio::sync::watch;
use weft_proto::discovery::v1::ResourceType;

use super::Rejection;

/// A point-in-time view of the connection.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionStatus {
    /// The stream is up.
    pub connected: bool,
    /// Since the last connect, every subscribed type has had a snapshot applied.
    pub synced: bool,
    /// The last version applied (ACKed) per type; survives reconnects.
    pub versions: BTreeMap<ResourceType, u64>,
    /// Types whose snapshot was applied on the current connection.
    pub synced_types: Vec<ResourceType>,
    /// The last NACK sent per type: (version, resource, reason).
    pub last_rejections: BTreeMap<ResourceType, (u64, Rejection)>,
    /// How many times the stream came up.
    pub connects: u64,
    /// Why the stream last went down.
    pub last_error: Option<String>,
    /// When the stream last changed state.
    pub since: Instant,
}

/// A shared, watchable [`ConnectionStatus`].
#[derive(Debug, Clone)]
pub struct ConnectionState {
    types: Vec<ResourceType>,
    tx: watch::Sender<ConnectionStatus>,
}

impl ConnectionState {
    pub(super) fn new(types: &[ResourceType]) -> Self {
        let (tx, _) = watch::channel(ConnectionStatus {
            connected: false,
            synced: false,
            versions: BTreeMap::new(),
            synced_types: Vec::new(),
            last_rejections: BTreeMap::new(),
            connects: 0,
            last_error: None,
            since: Instant::now(),
        });
        ConnectionState {
            types: types.to_vec(),
            tx,
        }
    }

    /// The current status.
    pub fn status(&self) -> ConnectionStatus {
        self.tx.borrow().clone()
    }

    pub fn is_connected(&self) -> bool {
        self.tx.borrow().connected
    }

    /// Connected and every type synchronised: the readiness condition.
    pub fn is_synced(&self) -> bool {
        self.tx.borrow().synced
    }

    /// The last version of `ty` applied, if any.
    pub fn version(&self, ty: ResourceType) -> Option<u64> {
        self.tx.borrow().versions.get(&ty).copied()
    }

    /// A receiver that wakes on every change, e.g. to wait for readiness.
    pub fn watch(&self) -> watch::Receiver<ConnectionStatus> {
        self.tx.subscribe()
    }

    pub(super) fn connected(&self) {
        self.tx.send_modify(|s| {
            s.connected = true;
            s.synced = false;
            s.synced_types.clear();
            s.connects += 1;
            s.since = Instant::now();
        });
    }

    pub(super) fn disconnected(&self, reason: &str) {
        self.tx.send_modify(|s| {
            if s.connected {
                s.since = Instant::now();
            }
            s.connected = false;
            s.synced = false;
            s.synced_types.clear();
            s.last_error = Some(reason.to_string());
        });
    }

    pub(super) fn applied(&self, ty: ResourceType, version: u64) {
        let types = &self.types;
        self.tx.send_modify(|s| {
            s.versions.insert(ty, version);
            if !s.synced_types.contains(&ty) {
                s.synced_types.push(ty);
            }
            s.synced = s.connected && types.iter().all(|t| s.synced_types.contains(t));
        });
    }

    pub(super) fn rejected(&self, ty: ResourceType, version: u64, rejection: &Rejection) {
        self.tx.send_modify(|s| {
            s.last_rejections.insert(ty, (version, rejection.clone()));
        });
    }
}
