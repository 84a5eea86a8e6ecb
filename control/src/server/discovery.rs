//! The `weft.discovery.v1.Discovery` service: Subscribe, Status, ConfigDump.

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};
use weft_link::identity::TrustDomain;
use weft_proto::discovery::v1::{
    self as pb, ClientKind, ResourceType, discovery_server::Discovery, subscribe_request::Message,
};

use super::{
    certificates::caller_node,
    store::{self, Store, Subscription, now_ms},
};
use crate::{
    config::{ALL_TYPES, ResourceSet},
    metrics::Metrics,
    node::NotANode,
};

/// How long a new stream may take to send its hello; a client that opens a stream and says
/// nothing is holding a slot for no reason.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses buffered towards tonic per stream; the per-subscriber change queue is the real
/// buffer, this only decouples the writer task from the transport.
const OUTBOUND_BUFFER: usize = 4;

/// The `weft.discovery.v1.Discovery` service.
#[derive(Clone)]
pub struct DiscoveryService {
    store: Arc<Store>,
    shutdown: watch::Receiver<bool>,
    /// The trust domain of node credentials.
    trust_domain: TrustDomain,
}

impl DiscoveryService {
    pub fn new(
        store: Arc<Store>,
        shutdown: watch::Receiver<bool>,
        trust_domain: TrustDomain,
    ) -> Self {
        DiscoveryService {
            store,
            shutdown,
            trust_domain,
        }
    }
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type SubscribeStream = ReceiverStream<Result<pb::DiscoveryResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        // A client with a node credential may only speak for its own node. Clients without
        // one (weftctl, or an agent not yet given a credential) are trusted with what they
        // claim, as the configuration they read is not secret; the CA is what needs the node.
        let credential = match caller_node(&request, &self.trust_domain) {
            Ok(node) => Some(node),
            Err(NotANode::NoCertificate) => None,
            Err(reason) => {
                debug!(%peer, %reason, "client certificate is not a node credential");
                None
            }
        };
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no ClientHello within 10 s"))??;
        let hello = match first.and_then(|m| m.message) {
            Some(Message::Hello(hello)) => hello,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a stream must be a ClientHello",
                ));
            }
        };
        check_hello(&hello)?;
        if let Some(node) = &credential
            && hello.node != node.as_str()
        {
            warn!(%peer, credential = %node, claimed = %hello.node, "refused a subscriber claiming another node");
            return Err(Status::permission_denied(format!(
                "ClientHello.node is {:?} but the client's node credential is for node {node};                  a node may only subscribe as itself",
                hello.node
            )));
        }
        let sub = self.store.subscribe(hello.clone(), peer.clone());
        let span = info_span!(
            "subscriber",
            stream = sub.id,
            kind = hello.kind().as_str_name(),
            name = %hello.name,
            node = %hello.node,
            %peer,
        );
        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(run_stream(store, sub, inbound, tx, shutdown).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.store.status(env!("CARGO_PKG_VERSION"))))
    }

    async fn config_dump(
        &self,
        request: Request<pb::ConfigDumpRequest>,
    ) -> Result<Response<pb::ConfigDumpResponse>, Status> {
        let request = request.into_inner();
        if request.node.is_empty() {
            return Err(Status::invalid_argument("node is required"));
        }
        let mut types: Vec<ResourceType> = request
            .resource_types()
            .filter(|t| *t != ResourceType::Unspecified)
            .collect();
        if types.is_empty() {
            types = ALL_TYPES.to_vec();
        }
        let (version, resources) = self.store.current();
        // Every node gets every resource for now; node-scoped workload filtering arrives
        // with node identity, and will apply here and in Subscribe alike.
        let snapshots = types
            .into_iter()
            .map(|ty| store::snapshot(ty, version, &resources))
            .collect();
        Ok(Response::new(pb::ConfigDumpResponse { version, snapshots }))
    }
}

fn check_hello(hello: &pb::ClientHello) -> Result<(), Status> {
    if hello.kind() == ClientKind::Unspecified {
        return Err(Status::invalid_argument("ClientHello.kind is required"));
    }
    if hello.name.is_empty() {
        return Err(Status::invalid_argument("ClientHello.name is required"));
    }
    if hello.kind() == ClientKind::Agent && hello.node.is_empty() {
        return Err(Status::invalid_argument(
            "ClientHello.node is required for agents",
        ));
    }
    if hello.resource_types.is_empty() {
        return Err(Status::invalid_argument(
            "ClientHello.resource_types must name at least one type",
        ));
    }
    for t in &hello.resource_types {
        match ResourceType::try_from(*t) {
            Ok(ResourceType::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "ClientHello.resource_types: unknown resource type {t}"
                )));
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Sends responses, numbering them and recording what was sent.
struct Writer {
    stream: u64,
    next_nonce: u64,
    tx: mpsc::Sender<Result<pb::DiscoveryResponse, Status>>,
    info: Arc<parking_lot::Mutex<store::SubscriberInfo>>,
}

/// The client went away.
struct Gone;

impl Writer {
    async fn send(&mut self, mut response: pb::DiscoveryResponse) -> Result<(), Gone> {
        self.next_nonce += 1;
        response.nonce = format!("{}-{}", self.stream, self.next_nonce);
        if let Some(t) = self.info.lock().types.get_mut(&response.resource_type()) {
            t.last_sent_version = response.version;
        }
        debug!(
            r#type = response.resource_type().as_str_name(),
            version = response.version,
            snapshot = response.snapshot,
            resources = response.resources.len(),
            removed = response.removed.len(),
            "sending"
        );
        self.tx.send(Ok(response)).await.map_err(|_| Gone)
    }

    async fn snapshots(
        &mut self,
        types: &[ResourceType],
        version: u64,
        resources: &ResourceSet,
    ) -> Result<(), Gone> {
        for ty in types {
            self.send(store::snapshot(*ty, version, resources)).await?;
        }
        Ok(())
    }
}

async fn run_stream(
    store: Arc<Store>,
    mut sub: Subscription,
    inbound: Streaming<pb::SubscribeRequest>,
    tx: mpsc::Sender<Result<pb::DiscoveryResponse, Status>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let types: Vec<ResourceType> = sub.info.lock().types.keys().copied().collect();
    info!(types = ?types.iter().map(|t| t.as_str_name()).collect::<Vec<_>>(), "subscribed");
    let mut reader = tokio::spawn(
        read_answers(inbound, sub.info.clone(), store.metrics().clone()).in_current_span(),
    );
    let mut writer = Writer {
        stream: sub.id,
        next_nonce: 0,
        tx: tx.clone(),
        info: sub.info.clone(),
    };
    // Changes up to this version are contained in the last snapshot sent.
    let mut floor = sub.version;
    let mut result = writer.snapshots(&types, sub.version, &sub.resources).await;
    while result.is_ok() {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            _ = &mut reader => break,
            _ = tx.closed() => break,
            _ = sub.resync.notify.notified() => {
                if !sub.resync.needed.load(std::sync::atomic::Ordering::Acquire) {
                    continue;
                }
                let (version, resources) = store.resync(&sub.resync);
                floor = version;
                sub.info.lock().resyncs += 1;
                store.metrics().resyncs.inc();
                info!(version, "resynchronising a subscriber that fell behind");
                result = writer.snapshots(&types, version, &resources).await;
            }
            change = sub.queue.recv() => {
                let Some(change) = change else { break };
                if change.version <= floor {
                    continue;
                }
                for ty in &types {
                    if let Some(d) = change.deltas.get(ty) {
                        result = writer.send(store::delta(*ty, change.version, d)).await;
                        if result.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }
    reader.abort();
    store.unsubscribe(sub.id);
    info!("stream closed");
}

/// Records the client's ACKs and NACKs until the stream ends.
async fn read_answers(
    mut inbound: Streaming<pb::SubscribeRequest>,
    info: Arc<parking_lot::Mutex<store::SubscriberInfo>>,
    metrics: Metrics,
) {
    loop {
        let message = match inbound.message().await {
            Ok(Some(m)) => m.message,
            Ok(None) => return,
            Err(status) => {
                debug!(%status, "stream ended");
                return;
            }
        };
        match message {
            Some(Message::Ack(ack)) => {
                let mut info = info.lock();
                if let Some(t) = info.types.get_mut(&ack.resource_type()) {
                    t.last_acked_version = t.last_acked_version.max(ack.version);
                }
            }
            Some(Message::Nack(nack)) => {
                metrics.nacks.inc();
                warn!(
                    r#type = nack.resource_type().as_str_name(),
                    version = nack.version,
                    resource = %nack.resource_name,
                    reason = %nack.reason,
                    "client rejected a version"
                );
                let mut info = info.lock();
                if let Some(t) = info.types.get_mut(&nack.resource_type()) {
                    t.last_nack = Some(pb::NackRecord {
                        version: nack.version,
                        resource_name: nack.resource_name,
                        reason: nack.reason,
                        at_unix_ms: now_ms(),
                    });
                }
            }
            Some(Message::Hello(_)) => warn!("ignoring a second ClientHello on the stream"),
            None => {}
        }
    }
}
