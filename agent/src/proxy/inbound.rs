//! The inbound side of each enrolled pod, inside its network namespace:
//!
//! - `:15008`, HBONE: mutual TLS 1.3 with the pod's own certificate, the peer's SPIFFE ID
//!   verified against the trust bundle, one HTTP/2 CONNECT per connection; the authority
//!   must be an address of this pod;
//! - `:15006`, plaintext: connections from outside the mesh that `sk_lookup` steered here.
//!   PeerAuthentication STRICT refuses them; PERMISSIVE lets them through to policy.
//!
//! Both admit through [`super::admission`]: inbound authorization, then a connection to the
//! application from inside the pod over its loopback (`sk_lookup` passes loopback traffic,
//! so this is never steered again).

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use http::StatusCode;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};
use weft_ebpf_common::{HBONE_PORT, INBOUND_PLAINTEXT_PORT};
use weft_link::{
    hbone::{ConnectHandler, HboneServer, InboundConnect, PeerConnections, Refusal, TunnelSummary},
    tls::{TrustBundle, server_config_with},
};

use super::{
    ProxyContext, connect_hint, copy, listen_in_pod as bind_in_pod,
    outbound::Pod,
    record::{AccessLog, ConnectionRecord, Side},
    reset,
};
use crate::{
    drain::DrainWatcher,
    inpod::Netns,
    metrics::{DenialLabels, TcpLabels},
    proxy::{
        admission::{DeliveryError, Peer},
        outbound::ListenerError,
        registry::Registration,
    },
};

// === HBONE (:15008) ===

/// The HBONE listeners of a pod: IPv4 and, when the pod has IPv6, IPv6.
pub fn bind_hbone(pod: &Pod, home: &Netns) -> Result<Vec<TcpListener>, ListenerError> {
    let v4 = bind_in_pod(pod, home, (Ipv4Addr::UNSPECIFIED, HBONE_PORT).into(), false)?;
    let mut listeners = vec![v4];
    match bind_in_pod(pod, home, (Ipv6Addr::UNSPECIFIED, HBONE_PORT).into(), false) {
        Ok(v6) => listeners.push(v6),
        Err(err) => warn!(pod = %pod.uid, %err, "no IPv6 HBONE listener"),
    }
    Ok(listeners)
}

/// Serves HBONE on `listener` until the drain starts, then lets the open tunnels finish
/// within the drain deadline. The watcher is held until they have: the agent's drain waits
/// for inbound tunnels as it waits for outbound connections.
pub async fn run_hbone(
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
    pod: Arc<Pod>,
    bundle: Arc<TrustBundle>,
    peers: Arc<PeerConnections>,
    drain: DrainWatcher,
) {
    let resolver = Arc::new(PodCertificate {
        ctx: ctx.clone(),
        pod: pod.clone(),
    });
    let tls = match server_config_with(resolver, bundle, None) {
        Ok(tls) => tls,
        Err(err) => {
            warn!(pod = %pod.uid, %err, "cannot build the HBONE TLS config; inbound mTLS is off for this pod");
            return;
        }
    };
    let options = ctx.hbone.clone();
    let handler = Arc::new(HboneInbound {
        ctx,
        pod: pod.clone(),
    });
    let mut signal = drain.clone();
    HboneServer::new(listener, tls, handler)
        .with_options(options)
        .with_peer_limit(peers)
        .run(async move { signal.signalled().await })
        .await;
    drop(drain);
    debug!(pod = %pod.uid, "HBONE listener closed and its tunnels drained");
}

/// Presents the pod's current certificate: looked up per handshake, so a pod whose identity
/// is not issued yet fails the handshake (the client retries) and renewals apply at once.
struct PodCertificate {
    ctx: Arc<ProxyContext>,
    pod: Arc<Pod>,
}

impl std::fmt::Debug for PodCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PodCertificate({})", self.pod.uid)
    }
}

impl ResolvesServerCert for PodCertificate {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let workloads = self.ctx.workloads.load();
        let id = self.ctx.identity_of(workloads.by_uid(&self.pod.uid)?)?;
        let resolver = self.ctx.identities.resolver(&id);
        if resolver.is_none() {
            debug!(pod = %self.pod.uid, identity = %id, "no certificate yet for an inbound handshake");
        }
        resolver?.resolve(hello)
    }
}

struct HboneInbound {
    ctx: Arc<ProxyContext>,
    pod: Arc<Pod>,
}

impl HboneInbound {
    fn labels(&self, peer: &str, remote: SocketAddr) -> TcpLabels {
        let workloads = self.ctx.workloads.load();
        TcpLabels::inbound(
            &self.ctx.trust_domain,
            workloads.by_ip(remote.ip()).map(Arc::as_ref),
            Some(peer),
            workloads.by_uid(&self.pod.uid).map(Arc::as_ref),
            "mutual_tls",
        )
    }
}

/// The connection to the application, counted as active for as long as it exists (its
/// record): also when a tunnel is cut without a close report (its connection died).
pub struct Upstream {
    stream: TcpStream,
    _record: ConnectionRecord,
    /// Re-checked when policy changes; closed if no longer allowed.
    _registration: Registration,
}

impl tokio::io::AsyncRead for Upstream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Upstream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl weft_link::copy::Endpoint for Upstream {
    fn abort(&mut self) {
        weft_link::copy::Endpoint::abort(&mut self.stream);
    }
}

impl ConnectHandler for HboneInbound {
    type Upstream = Upstream;

    async fn connect(&self, req: InboundConnect) -> Result<Upstream, Refusal> {
        if self
            .ctx
            .refuse_agent_port("inbound_hbone", req.remote, req.authority)
        {
            // ztunnel answers a CONNECT to its own ports with 400 too.
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("{} is one of the agent's own ports", req.authority),
            ));
        }
        let (dst, src_workload) = {
            let workloads = self.ctx.workloads.load();
            (
                workloads.by_uid(&self.pod.uid).cloned(),
                workloads.by_ip(req.remote.ip()).cloned(),
            )
        };
        let Some(dst) = dst else {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("pod {} is not in the workload list yet", self.pod.uid),
            ));
        };
        let target = req.authority.ip().to_canonical();
        if !dst.ips.iter().any(|ip| ip.to_canonical() == target) {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "authority {} is not an address of pod {} ({:?})",
                    req.authority, dst.name, dst.ips
                ),
            ));
        }
        let labels = TcpLabels::inbound(
            &self.ctx.trust_domain,
            src_workload.as_deref(),
            Some(req.peer.as_str()),
            Some(&dst),
            "mutual_tls",
        );
        let peer = Peer {
            identity: Some(&req.peer),
            identity_of_workload: false,
            ip: req.remote.ip(),
            workload: src_workload.as_deref(),
            expires: req.peer_not_after,
        };
        let mut record = ConnectionRecord::new(self.ctx.metrics.clone(), labels, Instant::now());
        let admission = match self.ctx.authorize(&peer, &self.pod, &dst, req.authority) {
            Ok(admission) => admission,
            Err(denial) => {
                record.fail("UAEX");
                return Err(Refusal::new(StatusCode::UNAUTHORIZED, denial.reason));
            }
        };
        match admission.connect(None).await {
            Ok((stream, registration)) => {
                record.open();
                Ok(Upstream {
                    stream,
                    _record: record,
                    _registration: registration,
                })
            }
            Err(err) => {
                record.fail("UF");
                Err(Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "connecting to {} in the pod: {err} ({})",
                        req.authority,
                        connect_hint(err.io())
                    ),
                ))
            }
        }
    }

    fn on_connection_limit(&self) {
        self.ctx
            .metrics
            .denials
            .get_or_create(&DenialLabels::CONNECTIONS_PER_IDENTITY)
            .inc();
    }

    fn on_close(&self, summary: &TunnelSummary) {
        let labels = self.labels(summary.peer.as_str(), summary.remote);
        ConnectionRecord::new(self.ctx.metrics.clone(), labels, Instant::now())
            .close_with_bytes(summary.bytes_from_peer, summary.bytes_to_peer);
    }
}

// === plaintext (:15006) ===

/// The plaintext listener: one dual-stack socket, so `sk_lookup` can hand it IPv4 and IPv6
/// connections alike.
pub fn bind_plaintext(pod: &Pod, home: &Netns) -> Result<TcpListener, ListenerError> {
    bind_in_pod(
        pod,
        home,
        (Ipv6Addr::UNSPECIFIED, INBOUND_PLAINTEXT_PORT).into(),
        true,
    )
    .or_else(|err| {
        warn!(pod = %pod.uid, %err, "no dual-stack plaintext listener; trying IPv4 only");
        bind_in_pod(
            pod,
            home,
            (Ipv4Addr::UNSPECIFIED, INBOUND_PLAINTEXT_PORT).into(),
            false,
        )
    })
}

/// Accepts steered plaintext until the drain starts.
pub async fn run_plaintext(
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
    pod: Arc<Pod>,
    mut drain: DrainWatcher,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.signalled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let serve = serve_plaintext(ctx.clone(), pod.clone(), stream, peer, drain.clone());
                tokio::spawn(serve);
            }
            Err(err) => {
                warn!(pod = %pod.uid, %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
    debug!(pod = %pod.uid, "plaintext listener closed");
}

/// One steered plaintext connection. Its log events name the destination pod, the source
/// address and the original destination as fields (no span per connection: see outbound).
async fn serve_plaintext(
    ctx: Arc<ProxyContext>,
    pod: Arc<Pod>,
    mut client: TcpStream,
    peer: SocketAddr,
    _drain: DrainWatcher,
) {
    let started = Instant::now();
    // sk_lookup keeps the packet's destination: the accepted socket's local address is the
    // address and port the client dialled.
    let dst = match client.local_addr() {
        Ok(addr) => SocketAddr::new(addr.ip().to_canonical(), addr.port()),
        Err(err) => {
            debug!(dst.pod = %pod.uid, src.addr = %peer, %err, "the connection closed before it was served");
            return;
        }
    };
    // Reached directly (sk_lookup passes the mesh ports): passing it on would dial this
    // listener again.
    if ctx.refuse_agent_port("inbound_plaintext", peer, dst) {
        return reset(client);
    }
    let (dst_workload, src_workload) = {
        let workloads = ctx.workloads.load();
        (
            workloads.by_uid(&pod.uid).cloned(),
            workloads.by_ip(peer.ip()).cloned(),
        )
    };
    let Some(dst_workload) = dst_workload else {
        warn!(
            dst.pod = %pod.uid,
            src.addr = %peer,
            dst.addr = %dst,
            "plaintext for a pod not in the workload list yet; refusing it"
        );
        reset(client);
        return;
    };
    let labels = TcpLabels::inbound(
        &ctx.trust_domain,
        src_workload.as_deref(),
        None,
        Some(&dst_workload),
        "none",
    );
    let mut record = ConnectionRecord::new(ctx.metrics.clone(), labels, started);
    let source = Peer {
        identity: None,
        identity_of_workload: false,
        ip: peer.ip(),
        workload: src_workload.as_deref(),
        expires: None,
    };
    let admission = match ctx.authorize(&source, &pod, &dst_workload, dst) {
        Ok(admission) => admission,
        Err(denial) => {
            info!(
                dst.pod = %pod.uid,
                src.addr = %peer,
                dst.addr = %dst,
                reason = %denial,
                "plaintext denied by policy"
            );
            record.fail("UAEX");
            return reset(client);
        }
    };
    record.open();
    // The registration is held until the copy ends: re-checked (and shut down) when policy
    // changes.
    let (mut upstream, _registration) = match admission.connect(Some(&client)).await {
        Ok(connected) => connected,
        Err(DeliveryError::Connect(err)) => {
            record.fail("UF");
            warn!(
                dst.pod = %pod.uid,
                src.addr = %peer,
                dst.addr = %dst,
                error = %err,
                hint = connect_hint(&err),
                "connecting to the application failed"
            );
            reset(client);
            return;
        }
        Err(DeliveryError::Register(err)) => {
            warn!(dst.pod = %pod.uid, src.addr = %peer, %err, "cannot track the connection for policy changes; refusing it");
            record.fail("UF");
            return reset(client);
        }
    };
    let (received, sent) = record.byte_counters();
    let (moved, result) = copy::bidirectional(&mut client, &mut upstream, &received, &sent).await;
    record.close(AccessLog {
        side: Side::InboundPlaintext { pod: &pod.uid },
        src: peer,
        dst,
        moved,
        result,
    });
}
