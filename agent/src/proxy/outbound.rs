//! The outbound listener (`127.0.0.1:15001` and `[::1]:15001` inside each enrolled pod's
//! network namespace). connect4/connect6 send the pod's outbound TCP connections here; the
//! original destination comes from the tuple map that sockops filled. A service VIP and port
//! is first resolved to one endpoint of the service and its target port (refused at once when
//! the service has no such port or no endpoint). Then, by destination:
//!
//! - a mesh workload on another node: an HBONE tunnel (mutual TLS, HTTP/2 CONNECT) to its
//!   port 15008, dialled from inside the source pod so it leaves with the pod's address;
//! - a mesh workload enrolled on this node: inbound policy is checked with the source's
//!   identity, which the agent knows, and the agent connects from inside the destination
//!   pod's namespace, as its inbound side would after a tunnel;
//! - anything else (outside the mesh, or a workload no agent captures): plain TCP from
//!   inside the source pod.

use std::{
    io::{self, Read as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpSocket, TcpStream},
};
use tracing::{debug, field, info, warn};
use weft_ebpf_common::{HBONE_PORT, OUTBOUND_PORT, TupleKey};
use weft_link::hbone::{ConnectRequest, HboneClient, SocketFactory, TraceParent};
use weft_mesh::{
    service::{Client, Endpoint, Service, Unresolved},
    workload::Locality,
};

use super::{
    ProxyContext, address_like, copy, listen_in_pod,
    record::{AccessLog, ConnectionRecord, Side},
    reset,
};
use crate::{
    drain::DrainWatcher,
    inpod::{Netns, NetnsError, agent_socket, netns_cookie},
    metrics::{DenialLabels, TcpLabels},
    proxy::{
        admission::Peer,
        attempts::{Attempts, Failure},
        registry::Registration,
        replay::Replayable,
    },
    state::{TunnelProtocol, Workload, WorkloadUid},
};

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(
        "cannot listen on {addr} inside {netns}: {source} (is the pod's loopback interface up?)"
    )]
    Bind {
        addr: SocketAddr,
        netns: String,
        #[source]
        source: io::Error,
    },
}

/// A pod as the data path sees it. Its metadata (name, labels, service account) is looked up
/// by uid per connection, so a pod is captured even before the workload list names it, and
/// label changes apply to the next connection.
pub struct Pod {
    pub uid: WorkloadUid,
    pub netns: Netns,
    /// Tunnels from this pod, dialled from inside its namespace; pooled per (source
    /// identity, destination identity, destination address).
    pub hbone: HboneClient,
}

/// Creates HBONE sockets inside a pod's network namespace.
pub struct PodSockets {
    pub netns: Netns,
    pub home: Netns,
}

impl std::fmt::Debug for PodSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PodSockets({})", self.netns.path().display())
    }
}

impl SocketFactory for PodSockets {
    fn new_tcp(&self, dst: SocketAddr) -> io::Result<TcpSocket> {
        let socket = self
            .netns
            .run(&self.home, || agent_socket(&dst))
            .map_err(io::Error::other)??;
        Ok(TcpSocket::from_std_stream(socket.into()))
    }
}

/// One bound outbound listener inside a pod.
pub struct OutboundListener {
    pod: Arc<Pod>,
    listener: TcpListener,
    netns_cookie: u64,
}

impl OutboundListener {
    /// Binds the IPv4 listener and, when the pod has IPv6 loopback, the IPv6 one.
    pub fn bind_all(pod: &Arc<Pod>, home: &Netns) -> Result<Vec<Self>, ListenerError> {
        let v4 = OutboundListener::bind(pod, home, (Ipv4Addr::LOCALHOST, OUTBOUND_PORT).into())?;
        let mut listeners = vec![v4];
        match OutboundListener::bind(pod, home, (Ipv6Addr::LOCALHOST, OUTBOUND_PORT).into()) {
            Ok(v6) => listeners.push(v6),
            Err(err) => warn!(pod = %pod.uid, %err, "no IPv6 capture listener"),
        }
        Ok(listeners)
    }

    fn bind(pod: &Arc<Pod>, home: &Netns, addr: SocketAddr) -> Result<Self, ListenerError> {
        let listener = listen_in_pod(pod, home, addr, false)?;
        let netns_cookie = netns_cookie(&listener).map_err(|source| ListenerError::Bind {
            addr,
            netns: pod.netns.path().display().to_string(),
            source,
        })?;
        Ok(OutboundListener {
            pod: pod.clone(),
            listener,
            netns_cookie,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub fn netns_cookie(&self) -> u64 {
        self.netns_cookie
    }

    /// Accepts until the drain starts or the task is dropped (the pod left).
    pub async fn run(self, ctx: Arc<ProxyContext>, mut drain: DrainWatcher) {
        let pod = self.pod.clone();
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = drain.signalled() => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let conn = Connection {
                        ctx: ctx.clone(),
                        pod: pod.clone(),
                        peer,
                        key: TupleKey::for_peer(self.netns_cookie, peer),
                        _drain: drain.clone(),
                    };
                    tokio::spawn(conn.serve(stream));
                }
                Err(err) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    warn!(pod = %pod.uid, %err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
        debug!(pod = %pod.uid, "outbound listener closed");
    }
}

/// One captured connection. Its log events name the source pod and address, and once known
/// the original destination and its workload (explicit fields rather than a span: a span
/// per connection costs more than the events it would annotate).
struct Connection {
    ctx: Arc<ProxyContext>,
    pod: Arc<Pod>,
    peer: SocketAddr,
    key: TupleKey,
    _drain: DrainWatcher,
}

/// Where a captured connection goes, before an endpoint is chosen.
enum Destination {
    /// Not a VIP: the address dialled, with its workload when the mesh knows it.
    Address(Option<Arc<Workload>>),
    /// A service VIP: one of these endpoints.
    Service(Arc<Service>, Vec<Endpoint>),
}

/// How a connection reaches its destination.
enum Route {
    /// Plain TCP from the source pod: not a mesh workload, or one no agent captures.
    Direct,
    /// The destination pod is enrolled on this node.
    SameNode(Arc<Pod>, Arc<Workload>),
    /// An HBONE tunnel to the destination's agent.
    Hbone(Arc<Workload>),
}

impl Connection {
    async fn serve(self, mut client: TcpStream) {
        let started = Instant::now();
        let metrics = &self.ctx.metrics;
        let Some(orig) = self.ctx.capture.take_orig_dst(&self.key) else {
            metrics.no_orig_dst.inc();
            warn!(
                src.pod = %self.pod.uid,
                src.addr = %self.peer,
                "no original destination recorded for this connection; refusing it (the \
                 kernel's tuple map may have overflowed, or something in the pod dialled the \
                 capture port directly)"
            );
            return reset(client);
        };
        let original = orig.socket_addr();
        // A service VIP stands for one of its endpoints: from here on the connection is as if
        // the pod had dialled that endpoint's address and target port.
        let (src_workload, destination) = {
            let workloads = self.ctx.workloads.load();
            let src_workload = workloads.by_uid(&self.pod.uid).cloned();
            let no_locality = Locality::default();
            let from = Client {
                node: &self.ctx.node,
                locality: src_workload.as_ref().map_or(&no_locality, |w| &w.locality),
            };
            match self
                .ctx
                .services
                .load()
                .endpoints(original, &workloads, &from)
            {
                None => (
                    src_workload.clone(),
                    Destination::Address(workloads.by_ip(original.ip()).cloned()),
                ),
                Some(Ok((service, endpoints))) => (
                    src_workload.clone(),
                    Destination::Service(service, endpoints),
                ),
                Some(Err(unresolved)) => {
                    return self.refuse_unresolved(
                        client,
                        src_workload.as_deref(),
                        original,
                        &unresolved,
                        started,
                    );
                }
            }
        };
        let dst_service = match &destination {
            Destination::Service(service, _) => Some(service.hostname()),
            Destination::Address(_) => None,
        };
        let mut attempts = Attempts::new();
        // Client bytes taken from the socket by an attempt that failed before the client
        // heard anything: the next attempt sends them first.
        let mut replay = Bytes::new();
        let mut replay_read = false;
        loop {
            let (dst_workload, dst, active) = match &destination {
                Destination::Address(w) => (w.clone(), original, None),
                Destination::Service(_, endpoints) => {
                    let Some((e, active)) = self.ctx.lb.pick(
                        endpoints,
                        attempts.tried(),
                        Instant::now(),
                        &self.ctx.random,
                    ) else {
                        // Only after a failure, which `can_retry` checked: cannot happen.
                        return reset(client);
                    };
                    (Some(e.workload.clone()), e.addr, Some(active))
                }
            };
            let can_retry = |attempts: &Attempts| match &destination {
                Destination::Service(_, endpoints) => attempts.can_retry(endpoints, dst),
                Destination::Address(_) => false,
            };
            let service = dst_service.as_deref().unwrap_or_default();
            let dst_name = dst_workload.as_deref().map(|w| w.name.as_str());
            let route = self.route(dst_workload.clone());
            // A mesh workload's agent ports are the agent itself (a pod dialling its own
            // 15006 would have the agent dial it again); outside the mesh they are anyone's.
            if !matches!(route, Route::Direct)
                && self.ctx.refuse_agent_port("outbound", self.peer, dst)
            {
                return reset(client);
            }
            let mut labels = TcpLabels::outbound(
                &self.ctx.trust_domain,
                src_workload.as_deref(),
                dst_workload.as_deref(),
            );
            if matches!(route, Route::Hbone(_)) {
                labels.connection_security_policy = "mutual_tls";
            }
            if let Some(host) = &dst_service {
                labels.destination_service.clone_from(host);
            }
            let mut record = ConnectionRecord::new(self.ctx.metrics.clone(), labels, started);
            record.open();
            let (received, sent) = record.byte_counters();

            // A same-node delivery's admission, re-checked while the connection lives.
            let mut registration: Option<Registration> = None;
            let upstream = match &route {
                Route::Direct => self
                    .ctx
                    .connect_from(&self.pod.netns, dst)
                    .await
                    .map(Upstream::Tcp)
                    .map_err(|err| Failure::connect(&err)),
                Route::SameNode(pod, w) => self
                    .same_node(pod, w, src_workload.as_deref(), dst)
                    .await
                    .map(|(stream, held)| {
                        registration = Some(held);
                        Upstream::Tcp(stream)
                    }),
                Route::Hbone(w) => {
                    if !replay_read {
                        replay = early_data(&client);
                        replay_read = true;
                    }
                    self.tunnel(src_workload.as_deref(), w, dst, replay.clone())
                        .await
                        .map(Upstream::Tunnel)
                }
            };
            // No upstream: counted as closed with the failure's flags, and logged.
            let fail = |record: ConnectionRecord, failure: Failure| {
                record.fail(failure.flags);
                if let Some((error, what)) = failure.log {
                    warn!(
                        src.pod = %self.pod.uid,
                        src.addr = %self.peer,
                        dst.addr = %dst,
                        dst.workload = dst_name,
                        dst.service = dst_service.as_deref(),
                        attempt = attempts.number(),
                        %error,
                        "{what}"
                    );
                }
            };
            let mut upstream = match upstream {
                Ok(upstream) => upstream,
                Err(failure) => {
                    if failure.endpoint && active.is_some() {
                        self.ctx.endpoint_failed(service, dst);
                        if can_retry(&attempts) {
                            fail(record, failure);
                            self.ctx.retried(service);
                            attempts.failed(dst);
                            continue;
                        }
                    }
                    // A connection that fails before relaying is reset: a clean close would
                    // look like an empty answer.
                    reset(client);
                    return fail(record, failure);
                }
            };
            let (moved, result, retry_with) = match &mut upstream {
                Upstream::Tcp(stream) => {
                    if active.is_some() {
                        self.ctx.lb.success(dst);
                    }
                    // What an earlier attempt took from the client goes first.
                    let replayed = if replay.is_empty() {
                        Ok(())
                    } else {
                        stream.write_all(&replay).await
                    };
                    match replayed {
                        Ok(()) => {
                            received.inc_by(replay.len() as u64);
                            let (mut moved, result) =
                                copy::bidirectional(&mut client, stream, &received, &sent).await;
                            moved.received += replay.len() as u64;
                            (moved, result, None)
                        }
                        Err(err) => (Default::default(), Err(err), None),
                    }
                }
                Upstream::Tunnel((tunnel, early)) => {
                    received.inc_by(*early);
                    let (mut moved, result, retry_with) = if active.is_some() {
                        // The tunnel's first answer is the endpoint's success; until then the
                        // connection may still move to another endpoint.
                        let lb = &self.ctx.lb;
                        let mut side = Replayable::new(&mut client, &replay, || lb.success(dst));
                        let (moved, result) =
                            copy::bidirectional(&mut side, tunnel, &received, &sent).await;
                        (moved, result, side.into_replay())
                    } else {
                        let (moved, result) =
                            copy::bidirectional(&mut client, tunnel, &received, &sent).await;
                        (moved, result, None)
                    };
                    moved.received += *early;
                    (moved, result, retry_with)
                }
            };
            // A tunnel is returned before the destination has answered; its refusal (or no
            // answer at all) ends the copy, and is the same failure as a refusal up front.
            if let Err(err) = &result
                && let Some(open) = weft_link::hbone::HboneError::of_io(err)
            {
                let failure = Failure::tunnel(weft_link::error_chain(open), open.status());
                if failure.endpoint && active.is_some() {
                    self.ctx.endpoint_failed(service, dst);
                    if let Some(sent_so_far) = retry_with
                        && can_retry(&attempts)
                    {
                        // The copy set the client to be reset when closed; it is not closed.
                        if let Err(err) = socket2::SockRef::from(&client).set_linger(None) {
                            debug!(%err, "clearing SO_LINGER failed");
                        }
                        fail(record, failure);
                        self.ctx.retried(service);
                        replay = sent_so_far;
                        attempts.failed(dst);
                        continue;
                    }
                }
                return fail(record, failure);
            }
            drop(registration);
            return record.close(AccessLog {
                side: Side::Outbound {
                    pod: &self.pod.uid,
                    dst_workload: dst_name,
                    dst_service: dst_service.as_deref(),
                },
                src: self.peer,
                dst,
                moved,
                result,
            });
        }
    }

    /// How a connection reaches the workload it is for.
    fn route(&self, dst_workload: Option<Arc<Workload>>) -> Route {
        match dst_workload {
            Some(w) if w.protocol == TunnelProtocol::Hbone && w.node == self.ctx.node => {
                match self.ctx.pods.read().get(&w.uid).cloned() {
                    Some(pod) => Route::SameNode(pod, w),
                    // Listed on this node but not enrolled here: nothing captures it.
                    None => Route::Direct,
                }
            }
            Some(w) if w.protocol == TunnelProtocol::Hbone => Route::Hbone(w),
            _ => Route::Direct,
        }
    }

    /// Refuses a connection to a service VIP that leads nowhere (a port the service does not
    /// declare, or no endpoint): reset at once, as a connection refused, rather than left to
    /// time out; counted as a denial and as a connection closed with no route (`NR`).
    fn refuse_unresolved(
        &self,
        client: TcpStream,
        src_workload: Option<&Workload>,
        original: SocketAddr,
        unresolved: &Unresolved,
        started: Instant,
    ) {
        let denial = match unresolved {
            Unresolved::UnknownPort { .. } => DenialLabels::SERVICE_PORT_UNKNOWN,
            Unresolved::NoEndpoints { .. } => DenialLabels::SERVICE_NO_ENDPOINTS,
        };
        self.ctx.metrics.denials.get_or_create(&denial).inc();
        let mut labels = TcpLabels::outbound(&self.ctx.trust_domain, src_workload, None);
        labels.destination_service = unresolved.service().hostname();
        ConnectionRecord::new(self.ctx.metrics.clone(), labels, started).fail("NR");
        info!(
            src.pod = %self.pod.uid,
            src.addr = %self.peer,
            dst.addr = %original,
            reason = %unresolved,
            "refused: the service VIP leads to no endpoint"
        );
        reset(client);
    }

    /// Delivers to a pod on this node: inbound policy with the source's identity, then a
    /// connection from inside the destination pod (over its loopback, which `sk_lookup`
    /// leaves alone).
    async fn same_node(
        &self,
        dst_pod: &Pod,
        dst_workload: &Workload,
        src_workload: Option<&Workload>,
        dst: SocketAddr,
    ) -> Result<(TcpStream, Registration), Failure> {
        // A source with no workload entry has no identity: it is held to STRICT as plaintext.
        let identity = src_workload.and_then(|w| self.ctx.identity_of(w));
        let src_ip = src_workload
            .and_then(|w| address_like(w, dst.ip()))
            .unwrap_or(self.peer.ip());
        let source = Peer {
            identity: identity.as_ref(),
            identity_of_workload: true,
            ip: src_ip,
            workload: src_workload,
            expires: None,
        };
        let admission = match self.ctx.authorize(&source, dst_pod, dst_workload, dst) {
            Ok(admission) => admission,
            Err(denial) => {
                info!(
                    src.pod = %self.pod.uid,
                    src.addr = %self.peer,
                    src.identity = identity.as_ref().map(field::display),
                    dst.addr = %dst,
                    dst.workload = %dst_workload.name,
                    reason = %denial,
                    "connection denied by policy"
                );
                return Err(Failure {
                    flags: "UAEX",
                    log: None,
                    endpoint: false,
                });
            }
        };
        admission
            .connect(None)
            .await
            .map_err(|err| Failure::connect(err.io()))
    }

    /// Opens an HBONE tunnel to `dst` through the destination pod's port 15008, carrying the
    /// client's `early` bytes with the CONNECT. Returns the tunnel and how many bytes went.
    async fn tunnel(
        &self,
        src_workload: Option<&Workload>,
        dst_workload: &Workload,
        dst: SocketAddr,
        early: Bytes,
    ) -> Result<(weft_link::hbone::HboneStream, u64), Failure> {
        // The source's problems are the same whichever endpoint is tried.
        let source = |error: String| Failure {
            endpoint: false,
            ..Failure::tunnel(error, None)
        };
        let src_workload = src_workload.ok_or_else(|| {
            source(
                "the source pod is not in the workload list yet, so it has no identity to \
                 present"
                    .to_string(),
            )
        })?;
        let src_id = self.ctx.identity_of(src_workload).ok_or_else(|| {
            source(format!(
                "workload {} has no valid identity",
                src_workload.name
            ))
        })?;
        let dst_id = self.ctx.identity_of(dst_workload).ok_or_else(|| {
            Failure::tunnel(
                format!("workload {} has no valid identity", dst_workload.name),
                None,
            )
        })?;
        let tls = self
            .ctx
            .identities
            .client_tls(&src_id, self.ctx.connect_timeout)
            .await
            .map_err(|e| source(e.to_string()))?;
        let mut request = ConnectRequest::new(SocketAddr::new(dst.ip(), HBONE_PORT), dst_id, dst);
        request.traceparent = Some(TraceParent::generate());
        request.baggage = baggage(src_workload);
        let early_len = early.len() as u64;
        request.early_data = early;
        // The 200 comes with the destination's first bytes; a refusal ends the relay.
        request.optimistic = true;
        self.pod
            .hbone
            .connect(&tls, request)
            .await
            .map(|tunnel| (tunnel, early_len))
            .map_err(|e| Failure::tunnel(weft_link::error_chain(&e), e.status()))
    }
}

/// The most a client's first bytes sent along with the CONNECT may be.
const EARLY_DATA_MAX: usize = 16 * 1024;

/// What the client has already sent, read without waiting. A client that speaks first (HTTP,
/// TLS) usually has its request in the socket by the time the connection is accepted; sending
/// it with the CONNECT saves the destination agent a round trip and a wake-up. A client that
/// waits for the server to speak gives nothing here, and nothing is lost: the relay reads it
/// later. Read straight from the socket, because the runtime has not polled a new socket's
/// readiness yet and would report nothing to read.
fn early_data(client: &TcpStream) -> Bytes {
    let mut buf = BytesMut::zeroed(EARLY_DATA_MAX);
    let socket = socket2::SockRef::from(client);
    match (&*socket).read(&mut buf) {
        Ok(n) => {
            buf.truncate(n);
            buf.freeze()
        }
        // Nothing yet (WouldBlock), or an error the relay will meet and report itself.
        Err(_) => Bytes::new(),
    }
}

/// The connection to the destination.
enum Upstream {
    Tcp(TcpStream),
    /// The tunnel, and the client bytes that went with its CONNECT.
    Tunnel((weft_link::hbone::HboneStream, u64)),
}

/// W3C baggage naming the source, as ztunnel sends it.
fn baggage(w: &Workload) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "k8s.namespace.name={},k8s.pod.name={},service.name={}",
        w.namespace,
        w.name,
        w.app()
    ))
    .ok()
}
