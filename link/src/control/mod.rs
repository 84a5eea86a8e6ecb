//! The control-plane client: one long-lived `Subscribe` stream to the control plane over
//! TLS, reconnected forever with backoff.
//!
//! The caller supplies a [`Handler`] — the seam where protocol types become domain types.
//! It receives every version as an [`Update`] (a full snapshot after each connect, deltas
//! after that), converts it, and answers `Ok` (the client ACKs) or a [`Rejection`] (the
//! client NACKs, naming the resource and the reason). Convert off-lock and apply under one
//! write lock only if everything converted, so a rejected version leaves the previous state
//! whole. Proto types should not travel past the handler.
//!
//! [`TypedStore`] implements that rule once for a type `T: TryFrom<Resource>`, so a handler
//! can be as small as `move |u: Update| workloads.apply(u)`.
//!
//! After a NACK the server keeps sending deltas that assume the rejected version; a handler
//! applies them to the state it does have (upserts and removals by name are idempotent), and
//! the next reconnect brings a full snapshot.
//!
//! [`ConnectionState`] exposes whether the stream is up and which version of each type was
//! last applied, for readiness and metrics.
//!
//! An agent presents its node credential ([`ClientConfig::identity`]); the control plane then
//! accepts a hello only for that node. [`CaClient`] asks the control plane's CA for workload
//! certificates over the same TLS settings, and needs the node credential to be answered.

mod backoff;
mod sign;
mod state;
mod typed;

use std::{future::Future, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, info, warn};
use weft_proto::discovery::v1::{
    self as pb, ClientKind, ResourceType, discovery_client::DiscoveryClient,
    subscribe_request::Message,
};

pub use backoff::{Backoff, DEFAULT_INITIAL, DEFAULT_MAX};
pub use sign::{CaClient, CaClientConfig, DEFAULT_SIGN_TIMEOUT};
pub use state::{ConnectionState, ConnectionStatus};
pub use typed::{Objects, TypedStore};

/// How long one connection attempt may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings detect a control plane that vanished without closing the connection (a
/// node crash, a dropped NAT entry) long before TCP would.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// ACKs buffered towards the server; a handful is plenty as one is sent per response.
const ANSWER_BUFFER: usize = 8;

/// One version of one resource type, as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub resource_type: ResourceType,
    pub version: u64,
    /// True: `resources` is everything of this type; replace what you hold. This is always
    /// the case for the first update of each type after a (re)connect.
    /// False: add or replace `resources` by name and delete `removed`.
    pub snapshot: bool,
    pub resources: Vec<pb::Resource>,
    pub removed: Vec<String>,
}

/// Why a handler could not apply an update; sent to the control plane as a NACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The `Resource.name` of the offending resource; empty if not tied to one.
    pub resource_name: String,
    pub reason: String,
}

impl Rejection {
    pub fn new(resource_name: impl Into<String>, reason: impl Into<String>) -> Self {
        Rejection {
            resource_name: resource_name.into(),
            reason: reason.into(),
        }
    }
}

/// Converts and applies updates. Called on the client's task, one update at a time, so it
/// must not block for long.
pub trait Handler: Send + 'static {
    fn apply(&mut self, update: Update) -> Result<(), Rejection>;
}

impl<F> Handler for F
where
    F: FnMut(Update) -> Result<(), Rejection> + Send + 'static,
{
    fn apply(&mut self, update: Update) -> Result<(), Rejection> {
        self(update)
    }
}

/// The client certificate and key (PEM) a client authenticates to the control plane with: a
/// node credential (`weft-control node-credential`), which the CA needs before it signs and
/// which binds a discovery subscription to its node.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The certificate, leaf first (PEM).
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
}

impl ClientIdentity {
    pub fn new(cert_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        ClientIdentity {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        }
    }
}

impl std::fmt::Debug for ClientIdentity {
    // The key stays out of logs and debug dumps.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").finish_non_exhaustive()
    }
}

/// Who the client is and where it connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The control plane's address, `https://host:port`.
    pub address: String,
    /// The root certificate(s) (PEM) the control plane's certificate must chain to.
    pub ca_cert_pem: String,
    /// The name to verify in the server certificate; the address's host when `None`.
    pub server_name: Option<String>,
    /// The client certificate to present (a node credential); none when `None`.
    pub identity: Option<ClientIdentity>,
    pub kind: ClientKind,
    /// This client's name (e.g. the agent's pod name).
    pub name: String,
    /// The node it runs on; required for agents.
    pub node: String,
    /// Its software version, shown by `weftctl status`.
    pub client_version: String,
    /// The resource types to subscribe to.
    pub resource_types: Vec<ResourceType>,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub connect_timeout: Duration,
}

impl ClientConfig {
    pub fn new(
        address: impl Into<String>,
        ca_cert_pem: impl Into<String>,
        kind: ClientKind,
        name: impl Into<String>,
        node: impl Into<String>,
        resource_types: Vec<ResourceType>,
    ) -> Self {
        ClientConfig {
            address: address.into(),
            ca_cert_pem: ca_cert_pem.into(),
            server_name: None,
            identity: None,
            kind,
            name: name.into(),
            node: node.into(),
            client_version: String::new(),
            resource_types,
            initial_backoff: DEFAULT_INITIAL,
            max_backoff: DEFAULT_MAX,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid control plane address {address:?}: {source} (expected https://host:port)")]
    Address {
        address: String,
        #[source]
        source: tonic::codegen::http::uri::InvalidUri,
    },
    #[error(
        "invalid TLS settings for {address}: {source} (are the CA file and the node credential PEM?)"
    )]
    Tls {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("no resource types to subscribe to")]
    NoTypes,
}

/// Builds a TLS channel endpoint to the control plane; also used by tools that make
/// one-off calls (`Status`, `ConfigDump`).
pub fn endpoint(
    address: &str,
    ca_cert_pem: &str,
    server_name: Option<&str>,
    connect_timeout: Duration,
) -> Result<Endpoint, ClientError> {
    endpoint_with_identity(address, ca_cert_pem, server_name, None, connect_timeout)
}

/// [`endpoint`] that also presents a client certificate, if one is given.
pub fn endpoint_with_identity(
    address: &str,
    ca_cert_pem: &str,
    server_name: Option<&str>,
    identity: Option<&ClientIdentity>,
    connect_timeout: Duration,
) -> Result<Endpoint, ClientError> {
    let endpoint = Channel::from_shared(address.to_string()).map_err(|e| ClientError::Address {
        address: address.to_string(),
        source: e,
    })?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_cert_pem));
    if let Some(name) = server_name {
        tls = tls.domain_name(name);
    }
    if let Some(identity) = identity {
        tls = tls.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
    }
    Ok(endpoint
        .tls_config(tls)
        .map_err(|source| ClientError::Tls {
            address: address.to_string(),
            source,
        })?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// The control-plane client. Build with [`Client::new`], keep a [`Client::state`] handle,
/// then [`Client::run`] it on its own task.
pub struct Client {
    config: ClientConfig,
    endpoint: Endpoint,
    handler: Box<dyn Handler>,
    state: ConnectionState,
}

impl Client {
    pub fn new(config: ClientConfig, handler: impl Handler) -> Result<Self, ClientError> {
        if config.resource_types.is_empty() {
            return Err(ClientError::NoTypes);
        }
        let endpoint = endpoint_with_identity(
            &config.address,
            &config.ca_cert_pem,
            config.server_name.as_deref(),
            config.identity.as_ref(),
            config.connect_timeout,
        )?;
        Ok(Client {
            state: ConnectionState::new(&config.resource_types),
            config,
            endpoint,
            handler: Box::new(handler),
        })
    }

    /// A handle on the connection state; clone it freely.
    pub fn state(&self) -> ConnectionState {
        self.state.clone()
    }

    /// Subscribes and keeps subscribing until `shutdown` completes: whenever the stream
    /// breaks it reconnects with exponential backoff and jitter, and the server starts the
    /// new stream with full snapshots.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Backoff::new(self.config.initial_backoff, self.config.max_backoff);
        loop {
            let mut received = false;
            let result = tokio::select! {
                _ = &mut shutdown => break,
                r = self.session(&mut received) => r,
            };
            let reason = match result {
                Ok(()) => "the control plane closed the stream".to_string(),
                Err(status) => status_message(&status, &self.config.address),
            };
            self.state.disconnected(&reason);
            if received {
                // The connection worked; a break now is news, not a pattern.
                backoff.reset();
            }
            let delay = backoff.next_delay();
            warn!(%reason, retry_in = ?delay, "control plane stream lost");
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.state.disconnected("shut down");
        info!("control plane client stopped");
    }

    /// One connection: hello, then responses until the stream ends.
    async fn session(&mut self, received: &mut bool) -> Result<(), tonic::Status> {
        let channel = self.endpoint.connect().await.map_err(|e| {
            tonic::Status::unavailable(format!("connect: {}", crate::error_chain(&e)))
        })?;
        let mut client = DiscoveryClient::new(channel);
        let (tx, rx) = mpsc::channel(ANSWER_BUFFER);
        let hello = pb::ClientHello {
            kind: self.config.kind.into(),
            name: self.config.name.clone(),
            node: self.config.node.clone(),
            client_version: self.config.client_version.clone(),
            resource_types: self
                .config
                .resource_types
                .iter()
                .map(|t| (*t).into())
                .collect(),
        };
        let send = |message| pb::SubscribeRequest {
            message: Some(message),
        };
        // Cannot fail: the receiver is still here.
        let _ = tx.send(send(Message::Hello(hello))).await;
        let mut inbound = client
            .subscribe(ReceiverStream::new(rx))
            .await?
            .into_inner();
        self.state.connected();
        info!(address = %self.config.address, "subscribed to the control plane");
        while let Some(response) = inbound.message().await? {
            *received = true;
            let resource_type = response.resource_type();
            let version = response.version;
            let nonce = response.nonce.clone();
            debug!(
                r#type = resource_type.as_str_name(),
                version,
                snapshot = response.snapshot,
                "received"
            );
            let update = Update {
                resource_type,
                version,
                snapshot: response.snapshot,
                resources: response.resources,
                removed: response.removed,
            };
            let answer = match self.handler.apply(update) {
                Ok(()) => {
                    self.state.applied(resource_type, version);
                    Message::Ack(pb::Ack {
                        resource_type: resource_type.into(),
                        version,
                        nonce,
                    })
                }
                Err(rejection) => {
                    warn!(
                        r#type = resource_type.as_str_name(),
                        version,
                        resource = %rejection.resource_name,
                        reason = %rejection.reason,
                        "rejected an update; keeping the previous state"
                    );
                    self.state.rejected(resource_type, version, &rejection);
                    Message::Nack(pb::Nack {
                        resource_type: resource_type.into(),
                        version,
                        nonce,
                        resource_name: rejection.resource_name,
                        reason: rejection.reason,
                    })
                }
            };
            if tx.send(send(answer)).await.is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// A status as one line that says what probably went wrong.
fn status_message(status: &tonic::Status, address: &str) -> String {
    let hint = match status.code() {
        tonic::Code::Unavailable => {
            " (is the control plane running and reachable, and does its certificate match the CA file and address?)"
        }
        tonic::Code::InvalidArgument => " (the control plane refused this client's hello)",
        tonic::Code::PermissionDenied => {
            " (the node credential (--node-cert) is for another node than this client's --node)"
        }
        tonic::Code::Unauthenticated => {
            " (the control plane answers only clients with a credential from its root: a node \
             credential, --node-cert/--node-key)"
        }
        _ => "",
    };
    format!("{address}: {}: {}{hint}", status.code(), status.message())
}
