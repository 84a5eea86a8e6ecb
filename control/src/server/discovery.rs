//! The `weft.discovery.v1.Discovery` service: Subscribe, Status, ConfigDump.
//!
//! Every call needs a credential ([`Principal`]); without one it is refused with
//! UNAUTHENTICATED before anything is read or sent. What each may do:
//!
//! - Subscribe: a node as an agent of its own node only, the gateway as a gateway, an
//!   operator as anything;
//! - Status: operators (it lists every client);
//! - ConfigDump: operators for any node, a node for itself.
//!
//! API-key hashes (`Consumer.api_key_sha256`) and listener private keys
//! (`Listener.certificates[].key_pem`) go to the gateway only; everyone else gets consumers
//! and listeners without them.

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
    limits::{self, sanitize},
    store::{self, Store, Subscription, now_ms},
};
use crate::{
    config::{ALL_TYPES, ResourceSet},
    metrics::Metrics,
    node::NodeName,
    principal::Principal,
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
        let peer = peer_of(&request);
        let principal = self.authenticate(&request, "Subscribe")?;
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
        authorize_hello(&principal, &hello).inspect_err(|status| {
            warn!(
                %peer,
                %principal,
                kind = hello.kind().as_str_name(),
                claimed = %sanitize(&hello.node, limits::MAX_HELLO_NAME),
                reason = status.message(),
                "refused a subscriber"
            );
        })?;
        let sub = self.store.subscribe(hello.clone(), peer.clone());
        let span = info_span!(
            "subscriber",
            stream = sub.id,
            kind = hello.kind().as_str_name(),
            name = %hello.name,
            node = %hello.node,
            %principal,
            %peer,
        );
        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        let redact = !principal.sees_api_key_hashes();
        tokio::spawn(run_stream(store, sub, inbound, tx, shutdown, redact).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        match self.authenticate(&request, "Status")? {
            Principal::Operator(_) => {}
            other => {
                return Err(Status::permission_denied(format!(
                    "Status is for operators; the client is {other} (weftctl presents an \
                     operator credential: weft-control operator-credential)"
                )));
            }
        }
        Ok(Response::new(self.store.status(env!("CARGO_PKG_VERSION"))))
    }

    async fn config_dump(
        &self,
        request: Request<pb::ConfigDumpRequest>,
    ) -> Result<Response<pb::ConfigDumpResponse>, Status> {
        let principal = self.authenticate(&request, "ConfigDump")?;
        let request = request.into_inner();
        if request.node.is_empty() {
            return Err(Status::invalid_argument("node is required"));
        }
        match &principal {
            Principal::Operator(_) => {}
            Principal::Node(node) if node.as_str() == request.node => {}
            other => {
                return Err(Status::permission_denied(format!(
                    "ConfigDump of node {:?} is for operators and that node; the client is \
                     {other}",
                    sanitize(&request.node, limits::MAX_HELLO_NAME)
                )));
            }
        }
        let mut types: Vec<ResourceType> = request
            .resource_types()
            .filter(|t| *t != ResourceType::Unspecified)
            .collect();
        // The request may name a type any number of times; each is dumped once.
        types.sort_unstable();
        types.dedup();
        if types.is_empty() {
            types = ALL_TYPES.to_vec();
        }
        let (version, resources) = self.store.current();
        // Every node gets every resource for now; node-scoped workload filtering arrives
        // with node identity, and will apply here and in Subscribe alike.
        let snapshots = types
            .into_iter()
            .map(|ty| {
                let mut snapshot = store::snapshot(ty, version, &resources);
                if !principal.sees_api_key_hashes() {
                    redact_gateway_secrets(&mut snapshot);
                }
                snapshot
            })
            .collect();
        Ok(Response::new(pb::ConfigDumpResponse { version, snapshots }))
    }
}

impl DiscoveryService {
    /// The caller's credential, or UNAUTHENTICATED (logged, counted) before anything else.
    fn authenticate<T>(
        &self,
        request: &Request<T>,
        call: &'static str,
    ) -> Result<Principal, Status> {
        let certs = request.peer_certs();
        let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        Principal::of_peer(leaf, &self.trust_domain).map_err(|reason| {
            // Anyone who can reach the port can send these, as fast as they like: the
            // counter shows them, the log only at debug.
            debug!(peer = %peer_of(request), call, %reason, "refused an unauthenticated call");
            self.store.metrics().unauthenticated(call);
            Status::unauthenticated(format!(
                "{call} needs a credential: {reason}. Agents present their node credential \
                 (--node-cert/--node-key, from `weft-control node-credential`); weftctl an \
                 operator credential (--cert/--key or WEFTCTL_CERT/WEFTCTL_KEY, from \
                 `weft-control operator-credential --name <you> --out-dir <dir>`)"
            ))
        })
    }
}

fn peer_of<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// What a credential may subscribe as: a node as its own node's agent, the gateway as a
/// gateway, an operator as anything.
fn authorize_hello(principal: &Principal, hello: &pb::ClientHello) -> Result<(), Status> {
    match principal {
        Principal::Operator(_) => Ok(()),
        Principal::Gateway if hello.kind() == ClientKind::Gateway => Ok(()),
        Principal::Gateway => Err(Status::permission_denied(format!(
            "a gateway credential subscribes as a gateway only, not {}",
            hello.kind().as_str_name()
        ))),
        Principal::Node(node) if hello.kind() != ClientKind::Agent => {
            Err(Status::permission_denied(format!(
                "node {node}'s credential subscribes as an agent only, not {}",
                hello.kind().as_str_name()
            )))
        }
        Principal::Node(node) if hello.node != node.as_str() => {
            Err(Status::permission_denied(format!(
                "ClientHello.node is {:?} but the client's node credential is for node {node}; \
                 a node may only subscribe as itself",
                sanitize(&hello.node, limits::MAX_HELLO_NAME)
            )))
        }
        Principal::Node(_) => Ok(()),
    }
}

/// Clears what only the gateway may hold: every consumer's API-key hashes (a hash is as
/// good as the key to whoever can try keys offline) and every listener certificate's
/// private key. Only the gateway, which checks keys and terminates TLS, receives them.
fn redact_gateway_secrets(response: &mut pb::DiscoveryResponse) {
    // Only consumers and listeners carry secrets: every other response goes out untouched.
    let ty = response.resource_type();
    if ty != ResourceType::Consumer && ty != ResourceType::Listener {
        return;
    }
    for resource in &mut response.resources {
        match &mut resource.kind {
            Some(pb::resource::Kind::Consumer(consumer)) => consumer.api_key_sha256.clear(),
            Some(pb::resource::Kind::Listener(listener)) => {
                for cert in &mut listener.certificates {
                    cert.key_pem.clear();
                }
            }
            _ => {}
        }
    }
}

fn check_hello(hello: &pb::ClientHello) -> Result<(), Status> {
    if hello.kind() == ClientKind::Unspecified {
        return Err(Status::invalid_argument("ClientHello.kind is required"));
    }
    if hello.name.is_empty() {
        return Err(Status::invalid_argument("ClientHello.name is required"));
    }
    for (field, value, max) in [
        ("name", &hello.name, limits::MAX_HELLO_NAME),
        (
            "client_version",
            &hello.client_version,
            limits::MAX_CLIENT_VERSION,
        ),
    ] {
        if value.len() > max || limits::has_control(value) {
            return Err(Status::invalid_argument(format!(
                "ClientHello.{field} must be at most {max} bytes without control characters; \
                 got {} bytes starting {:?}",
                value.len(),
                sanitize(value, 64)
            )));
        }
    }
    if hello.kind() == ClientKind::Agent && hello.node.is_empty() {
        return Err(Status::invalid_argument(
            "ClientHello.node is required for agents",
        ));
    }
    if !hello.node.is_empty()
        && let Err(e) = hello.node.parse::<NodeName>()
    {
        return Err(Status::invalid_argument(format!(
            "ClientHello.node: {}",
            sanitize(&e.to_string(), 2 * limits::MAX_HELLO_NAME)
        )));
    }
    if hello.resource_types.is_empty() {
        return Err(Status::invalid_argument(
            "ClientHello.resource_types must name at least one type",
        ));
    }
    if hello.resource_types.len() > limits::MAX_HELLO_TYPES {
        return Err(Status::invalid_argument(format!(
            "ClientHello.resource_types lists {} types; there are fewer than {}",
            hello.resource_types.len(),
            limits::MAX_HELLO_TYPES
        )));
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
    /// Clear API-key hashes (every client but the gateway).
    redact: bool,
}

/// The client went away.
struct Gone;

impl Writer {
    async fn send(&mut self, mut response: pb::DiscoveryResponse) -> Result<(), Gone> {
        self.next_nonce += 1;
        response.nonce = format!("{}-{}", self.stream, self.next_nonce);
        if self.redact {
            redact_gateway_secrets(&mut response);
        }
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
    redact: bool,
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
        redact,
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
                // Free text from the client: bounded and escaped before it is logged or kept
                // for `weftctl status`.
                let resource_name = sanitize(&nack.resource_name, limits::MAX_NACK_RESOURCE);
                let reason = sanitize(&nack.reason, limits::MAX_NACK_REASON);
                warn!(
                    r#type = nack.resource_type().as_str_name(),
                    version = nack.version,
                    resource = %resource_name,
                    reason = %reason,
                    "client rejected a version"
                );
                let mut info = info.lock();
                if let Some(t) = info.types.get_mut(&nack.resource_type()) {
                    t.last_nack = Some(pb::NackRecord {
                        version: nack.version,
                        resource_name,
                        reason,
                        at_unix_ms: now_ms(),
                    });
                }
            }
            Some(Message::Hello(_)) => warn!("ignoring a second ClientHello on the stream"),
            None => {}
        }
    }
}
