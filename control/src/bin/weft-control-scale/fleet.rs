//! The simulated agents: real `weft_link::control::Client`s, each with its own TLS
//! connection, subscribed to what an agent wants (workloads, services, policies). Their
//! handler does no domain conversion; it measures what arrived and when, and reports it as
//! an [`Event`] to the benchmark's single consumer.

use std::time::{Duration, Instant};

use anyhow::Context;
use prost::Message as _;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use weft_link::control::{Client, ClientConfig, ClientIdentity, ConnectionState, Update};
use weft_proto::discovery::v1::{self as pb, ClientKind, ResourceType};

/// The types a node agent subscribes to.
pub const AGENT_TYPES: [ResourceType; 3] = [
    ResourceType::Workload,
    ResourceType::Service,
    ResourceType::Policy,
];

/// A simulated agent's first reconnect comes quickly: a stream that breaks during the
/// benchmark is a failure to report, and waiting out the default backoff would only hide it
/// behind a timeout.
const BACKOFF: Duration = Duration::from_millis(200);

/// One update as a subscriber applied it.
#[derive(Debug, Clone)]
pub struct Event {
    pub subscriber: usize,
    /// When the handler ran: the client ACKs right after it returns.
    pub at: Instant,
    pub resource_type: ResourceType,
    pub version: u64,
    pub snapshot: bool,
    pub resources: usize,
    pub removed: usize,
    /// The names of a delta's resources (left empty for snapshots, which name thousands).
    pub names: Vec<String>,
    /// The protobuf size of the response as received, without its nonce (a few bytes the
    /// server adds per message) and without gRPC's 5-byte frame header.
    pub wire_bytes: usize,
}

/// Every simulated agent and the stream of what they applied.
pub struct Fleet {
    address: String,
    root_pem: String,
    identity: ClientIdentity,
    nodes: usize,
    events_tx: mpsc::UnboundedSender<Event>,
    pub events: mpsc::UnboundedReceiver<Event>,
    shutdown: watch::Sender<bool>,
    states: Vec<ConnectionState>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    pub fn new(address: String, root_pem: String, identity: ClientIdentity, nodes: usize) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (shutdown, _) = watch::channel(false);
        Fleet {
            address,
            root_pem,
            identity,
            nodes: nodes.max(1),
            events_tx,
            events,
            shutdown,
            states: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// How many subscribers were started.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Starts the next subscriber; returns its index.
    pub fn spawn(&mut self) -> anyhow::Result<usize> {
        let index = self.tasks.len();
        let mut config = ClientConfig::new(
            self.address.clone(),
            self.root_pem.clone(),
            ClientKind::Agent,
            format!("weft-agent-{index:04}"),
            format!("node-{:03}", index % self.nodes),
            AGENT_TYPES.to_vec(),
        );
        config.client_version = env!("CARGO_PKG_VERSION").to_string();
        config.identity = Some(self.identity.clone());
        config.initial_backoff = BACKOFF;
        let events = self.events_tx.clone();
        let handler = move |update: Update| {
            let at = Instant::now();
            let (resources, removed) = (update.resources.len(), update.removed.len());
            let names = if update.snapshot {
                Vec::new()
            } else {
                update.resources.iter().map(|r| r.name.clone()).collect()
            };
            // Rebuild the response the update came from to size it as it was on the wire.
            let response = pb::DiscoveryResponse {
                resource_type: update.resource_type.into(),
                version: update.version,
                snapshot: update.snapshot,
                resources: update.resources,
                removed: update.removed,
                nonce: String::new(),
            };
            // The receiver is gone only when the benchmark is ending.
            let _ = events.send(Event {
                subscriber: index,
                at,
                resource_type: update.resource_type,
                version: update.version,
                snapshot: update.snapshot,
                resources,
                removed,
                names,
                wire_bytes: response.encoded_len(),
            });
            Ok(())
        };
        let client = Client::new(config, handler).context("building a control-plane client")?;
        self.states.push(client.state());
        let mut stop = self.shutdown.subscribe();
        self.tasks.push(tokio::spawn(client.run(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })));
        Ok(index)
    }

    /// How many times each subscriber's stream came up (1 when it never broke).
    pub fn connects(&self) -> Vec<u64> {
        self.states.iter().map(|s| s.status().connects).collect()
    }

    /// Stops every subscriber and waits for them (bounded: this is clean-up).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let all = futures_join(self.tasks);
        let _ = tokio::time::timeout(Duration::from_secs(10), all).await;
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}
