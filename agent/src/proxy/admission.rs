//! The inbound decision, one path for every way a connection reaches a pod on this node: an
//! HBONE CONNECT (`:15008`), steered plaintext (`:15006`), and the same-node hand-off of a
//! captured outbound connection. Each path asks, in this order:
//!
//! 1. [`ProxyContext::refuse_agent_port`]: never one of the agent's own ports;
//! 2. [`ProxyContext::authorize`]: inbound policy ([`PolicyIndex::admit`]), a denial counted
//!    in `weft_connections_denied_total`;
//! 3. [`Admission::connect`]: a connection from inside the destination pod, registered to be
//!    re-checked when policy changes.
//!
//! What each path does with a refusal is its own: HBONE answers with an HTTP status,
//! plaintext and same-node reset the client's socket.
//!
//! [`PolicyIndex::admit`]: crate::policy::PolicyIndex::admit

use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::SystemTime,
};

use tokio::net::TcpStream;
use tracing::info;
use weft_link::identity::SpiffeId;

use super::{
    ProxyContext,
    outbound::Pod,
    registry::{Authorized, Registration},
};
use crate::{
    metrics::DenialLabels,
    policy::{Denial, Source},
    state::Workload,
};

/// Who asks to reach a pod on this node.
pub struct Peer<'a> {
    /// The identity the peer proved (HBONE), its workload's own (same node), or none
    /// (plaintext).
    pub identity: Option<&'a SpiffeId>,
    /// The identity is the source workload's own, not proved by a certificate: each re-check
    /// derives it again from the workload at `ip`.
    pub identity_of_workload: bool,
    pub ip: IpAddr,
    pub workload: Option<&'a Workload>,
    /// When the peer's certificate stops being valid; `None` when none was shown.
    pub expires: Option<SystemTime>,
}

/// A connection inbound policy admitted, not connected yet.
pub struct Admission<'a> {
    ctx: &'a ProxyContext,
    pod: &'a Pod,
    dst: SocketAddr,
    authorized: Authorized,
}

/// Why an admitted connection could not be delivered to the application.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Connecting from inside the pod failed.
    #[error("{0}")]
    Connect(io::Error),
    /// The connection could not be registered for policy re-checks; one that could not be
    /// revoked is refused.
    #[error("{0}")]
    Register(io::Error),
}

impl DeliveryError {
    pub fn io(&self) -> &io::Error {
        match self {
            DeliveryError::Connect(err) | DeliveryError::Register(err) => err,
        }
    }
}

impl ProxyContext {
    /// Whether `dst` is one of the agent's own ports; if so the refusal is counted and logged
    /// here, and the caller refuses the connection (`path` says which listener saw it).
    pub fn refuse_agent_port(&self, path: &'static str, src: SocketAddr, dst: SocketAddr) -> bool {
        if !self.agent_ports.contains(dst.port()) {
            return false;
        }
        self.metrics
            .denials
            .get_or_create(&DenialLabels::AGENT_PORT)
            .inc();
        info!(
            path,
            src.addr = %src,
            dst.addr = %dst,
            "refused: the destination is one of the agent's own ports"
        );
        true
    }

    /// Inbound policy for `peer` reaching `dst` (an address of `dst_workload`, enrolled here
    /// as `pod`). A denial is counted here and returned for the caller to log and refuse in
    /// its own way.
    pub fn authorize<'a>(
        &'a self,
        peer: &Peer<'_>,
        pod: &'a Pod,
        dst_workload: &Workload,
        dst: SocketAddr,
    ) -> Result<Admission<'a>, Denial> {
        let source = Source {
            identity: peer.identity,
            ip: peer.ip,
            workload: peer.workload,
        };
        let verdict = self
            .policies
            .load()
            .admit(&source, dst_workload, dst.port());
        if let Err(denial) = verdict {
            self.metrics
                .denials
                .get_or_create(&DenialLabels::from(denial.kind))
                .inc();
            return Err(denial);
        }
        Ok(Admission {
            ctx: self,
            pod,
            dst,
            authorized: Authorized {
                identity: peer.identity.cloned(),
                identity_of_workload: peer.identity_of_workload,
                src_ip: peer.ip,
                dst: dst_workload.uid.clone(),
                port: dst.port(),
                expires: peer.expires,
            },
        })
    }
}

impl Admission<'_> {
    /// Connects to the destination from inside its pod (over the pod's loopback, which
    /// `sk_lookup` leaves alone) and registers the connection, held by the returned
    /// [`Registration`], to be re-checked when policy changes. `client` is the client's
    /// socket when the agent holds one (plaintext), shut down too on a revocation.
    pub async fn connect(
        self,
        client: Option<&TcpStream>,
    ) -> Result<(TcpStream, Registration), DeliveryError> {
        let upstream = self
            .ctx
            .connect_from(&self.pod.netns, self.dst)
            .await
            .map_err(DeliveryError::Connect)?;
        let registered = match client {
            Some(client) => self
                .ctx
                .connections
                .register(self.authorized, &[client, &upstream]),
            None => self.ctx.connections.register(self.authorized, &[&upstream]),
        };
        let registration = registered.map_err(DeliveryError::Register)?;
        Ok((upstream, registration))
    }
}
