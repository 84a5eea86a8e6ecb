//! Accepting HBONE tunnels.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, debug_span, field, info, warn};

use super::{
    CONNECTION_WINDOW, DEFER_RESPONSE_HEADER, DEFER_RESPONSE_YES, HboneStream, MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE, MAX_SEND_BUFFER, STREAM_WINDOW, transport,
};
use crate::identity::SpiffeId;
use crate::tls::peer_svid;

/// A client gets this long for the TLS handshake and the HTTP/2 preface together. Honest
/// peers need milliseconds; the limit is for port scanners and stalled peers, which would
/// otherwise hold a task and a socket for as long as TCP keeps the connection.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// On shutdown, open tunnels get this long to finish after GOAWAY before they are cut
/// (ztunnel's default termination deadline).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Tunnels one client connection may have open at once; beyond it, the client opens another
/// connection. 100 is what RFC 9113 §6.5.2 recommends as a minimum.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;

/// A connection with no open tunnel for this long is closed (GOAWAY). Twice the client
/// pool's idle timeout, so an honest client closes its idle connection first and never races
/// a CONNECT against the server's GOAWAY; the limit is for peers that open connections and
/// leave them, each holding a socket and a task here.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// How often the server PINGs a connection. A peer that vanished without a FIN or RST (a
/// node that lost power, a NAT that dropped the flow) holds its connection, and its tunnels'
/// upstream sockets, until a write fails; TCP would take minutes to hours to notice.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// A PING unanswered for this long closes the connection: an honest peer answers in a round
/// trip, and even a busy one within seconds.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections one peer identity may hold open to one destination pod. An honest client
/// pools one connection per (its pod, destination) with 100 tunnels each, so even a
/// deployment of hundreds of replicas sharing a service account stays well below it; the
/// limit keeps one identity (a leaked certificate, a runaway client) from taking every
/// socket of the node.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 1024;

/// Connections one listener lets do their TLS handshake at once. Until it completes a peer
/// is anonymous, so it is bounded by count here as it is by time with the handshake
/// timeout: honest peers finish in milliseconds and pool their connections, so a few
/// hundred at once only happen under a flood, which then costs at most this many
/// handshake states (tens of KiB each) per pod, not every socket the node has.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 256;

/// After `accept` fails (e.g. EMFILE), wait before the next try instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A connection told to go away (idle, refused) gets this long to close before it is cut:
/// h2's graceful shutdown waits for the peer, which need not cooperate.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// When a connection ends, its tunnels get this long to notice and report before they are
/// aborted: a handler stuck connecting upstream must not outlive the connection for long.
const STREAM_WIND_DOWN: Duration = Duration::from_secs(1);

/// Server settings; the defaults are the named constants of this module.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Limit on the TLS handshake plus the HTTP/2 preface of a new connection.
    pub handshake_timeout: Duration,
    /// How long tunnels may run on after shutdown starts.
    pub drain_timeout: Duration,
    /// SETTINGS_MAX_CONCURRENT_STREAMS announced to clients.
    pub max_concurrent_streams: u32,
    /// A connection without open tunnels for this long is closed.
    pub idle_timeout: Duration,
    /// How often a connection is PINGed.
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Connections one peer identity may hold at once; further ones get GOAWAY
    /// (ENHANCE_YOUR_CALM). Counted per server unless [`HboneServer::with_peer_limit`]
    /// shares a count between servers.
    pub max_connections_per_peer: usize,
    /// Connections in their handshake at once; more are closed as soon as they are
    /// accepted.
    pub max_pending_handshakes: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
        }
    }
}

/// A CONNECT request that passed the protocol checks.
#[derive(Debug, Clone)]
pub struct InboundConnect {
    /// The client's identity, proved by its certificate.
    pub peer: SpiffeId,
    /// When the certificate `peer` was proved with expires; a tunnel outliving it is closed.
    pub peer_not_after: Option<std::time::SystemTime>,
    /// Where the client wants to go (the original destination).
    pub authority: SocketAddr,
    /// The client's TCP address (its agent, or the source pod).
    pub remote: SocketAddr,
    /// Request headers: `traceparent`, `baggage` and whatever else the client sent.
    pub headers: HeaderMap,
}

/// The answer for a tunnel that will not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Sent to the client; ztunnel uses 401 for policy denials and 503 when the upstream
    /// cannot be reached.
    pub status: StatusCode,
    /// Logged here; not sent, so that policy details do not leak to the client.
    pub reason: String,
}

impl Refusal {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }
}

/// How a tunnel went, reported when it is over.
#[derive(Debug)]
pub struct TunnelSummary {
    pub peer: SpiffeId,
    /// The client's TCP address.
    pub remote: SocketAddr,
    pub authority: SocketAddr,
    pub bytes_from_peer: u64,
    pub bytes_to_peer: u64,
    pub duration: Duration,
    /// Why the relay ended early, if it did.
    pub error: Option<io::Error>,
}

/// Decides about each CONNECT and provides the upstream.
pub trait ConnectHandler: Send + Sync + 'static {
    /// The upstream byte stream, e.g. a `TcpStream` to the application.
    type Upstream: crate::copy::Endpoint + Send + 'static;

    /// Authorizes the tunnel and connects upstream, or refuses. The client gets `200` only
    /// after this returns the upstream, so a refused upstream is a refused tunnel (a client
    /// that sent [`super::DEFER_RESPONSE_HEADER`] gets it with the upstream's first bytes).
    fn connect(
        &self,
        req: InboundConnect,
    ) -> impl Future<Output = Result<Self::Upstream, Refusal>> + Send;

    /// Called once per opened tunnel when it closes, e.g. for metrics.
    fn on_close(&self, _summary: &TunnelSummary) {}

    /// Called when a peer's connection is refused because its identity holds
    /// [`ServerOptions::max_connections_per_peer`] already, e.g. for metrics.
    fn on_connection_limit(&self) {}
}

/// Serves HBONE on a listener: mTLS, HTTP/2, one [`ConnectHandler`] call per CONNECT.
pub struct HboneServer<H> {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: Arc<H>,
    options: ServerOptions,
    peers: Option<Arc<PeerConnections>>,
}

// === impl PeerConnections ===

/// Open connections per peer identity, shared by the listeners of one destination (its IPv4
/// and IPv6 sockets). An entry exists only while its identity holds a connection, so the
/// map is bounded by the open connections, each of which proved a mesh certificate.
#[derive(Debug)]
pub struct PeerConnections {
    max: usize,
    open: parking_lot::Mutex<HashMap<SpiffeId, usize>>,
}

impl PeerConnections {
    /// At most `max` connections per identity.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// Counts a connection of `peer`, or returns how many it already holds at the limit.
    fn admit(self: &Arc<Self>, peer: &SpiffeId) -> Result<PeerSlot, usize> {
        let mut open = self.open.lock();
        let count = open.entry(peer.clone()).or_insert(0);
        if *count >= self.max {
            return Err(*count);
        }
        *count += 1;
        Ok(PeerSlot {
            peers: self.clone(),
            peer: peer.clone(),
        })
    }
}

/// One counted connection; uncounted when dropped, on every exit path of the connection.
struct PeerSlot {
    peers: Arc<PeerConnections>,
    peer: SpiffeId,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.open.lock();
        if let Some(count) = open.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

// === impl HboneServer ===

impl<H: ConnectHandler> HboneServer<H> {
    /// `listener` is bound by the caller, normally to port 15008 inside a pod's network
    /// namespace; `tls` comes from [`crate::tls::server_config`].
    pub fn new(listener: TcpListener, tls: Arc<rustls::ServerConfig>, handler: Arc<H>) -> Self {
        Self {
            listener,
            acceptor: TlsAcceptor::from(tls),
            handler,
            options: ServerOptions::default(),
            peers: None,
        }
    }

    pub fn with_options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    /// Counts connections per peer identity in `peers`, shared with other servers, instead
    /// of per server with [`ServerOptions::max_connections_per_peer`].
    pub fn with_peer_limit(mut self, peers: Arc<PeerConnections>) -> Self {
        self.peers = Some(peers);
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until `shutdown` completes, then drains: connections get GOAWAY, and tunnels
    /// have `drain_timeout` to finish before they are cut.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (drain_tx, drain_rx) = watch::channel(false);
        let peers = self
            .peers
            .clone()
            .unwrap_or_else(|| PeerConnections::new(self.options.max_connections_per_peer));
        let handshakes = Arc::new(Semaphore::new(self.options.max_pending_handshakes));
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, remote)) => {
                        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
                            // Dropped at once: the peer sees its connection closed and the
                            // socket is back before the next accept.
                            debug!(
                                %remote,
                                max = self.options.max_pending_handshakes,
                                "HBONE connection closed: too many handshakes in progress"
                            );
                            continue;
                        };
                        let span = debug_span!("hbone_conn", %remote, peer = field::Empty);
                        let conn = serve_connection(
                            (tcp, remote),
                            self.acceptor.clone(),
                            self.handler.clone(),
                            self.options.clone(),
                            peers.clone(),
                            drain_rx.clone(),
                            handshake,
                        );
                        conns.spawn(conn.instrument(span));
                    }
                    Err(err) => {
                        warn!(error = %err, "accepting an HBONE connection failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                },
                // Reap finished connections so the set does not grow with every accept.
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(self.listener);
        let _ = drain_tx.send(true);
        let drained = tokio::time::timeout(self.options.drain_timeout, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            info!(
                remaining = conns.len(),
                "drain deadline passed; closing the remaining HBONE connections"
            );
            conns.shutdown().await;
        }
    }
}

async fn serve_connection<H: ConnectHandler>(
    (tcp, remote): (TcpStream, SocketAddr),
    acceptor: TlsAcceptor,
    handler: Arc<H>,
    options: ServerOptions,
    peers: Arc<PeerConnections>,
    mut drain: watch::Receiver<bool>,
    handshake_slot: OwnedSemaphorePermit,
) {
    if let Err(err) = tcp.set_nodelay(true) {
        debug!(error = %err, "setting TCP_NODELAY failed");
    }
    let handshake = async {
        let tls = acceptor
            .accept(tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let peer = peer_svid(tls.get_ref().1).map_err(|e| format!("peer identity: {e}"))?;
        let (transport, flusher) = transport::buffered(tls);
        let conn = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_concurrent_streams(options.max_concurrent_streams)
            .handshake::<_, Bytes>(transport)
            .await
            .map_err(|e| format!("HTTP/2: {e}"))?;
        Ok::<_, String>((peer, conn, flusher))
    };
    // Garbage, truncated hellos and refused certificates all end here. They are logged at
    // debug: anything can connect to the port, and the client side logs its own failure.
    // A shutdown does not wait for handshakes: a peer that has not finished one has no
    // tunnel to drain, and a stalled one would hold the drain for the handshake timeout.
    let handshake = tokio::select! {
        done = tokio::time::timeout(options.handshake_timeout, handshake) => done,
        _ = drain.wait_for(|draining| *draining) => {
            debug!("HBONE handshake abandoned: the server is shutting down");
            return;
        }
    };
    drop(handshake_slot);
    let (peer, mut conn, flusher) = match handshake {
        Ok(Ok(done)) => done,
        Ok(Err(err)) => {
            debug!(error = %err, "HBONE handshake failed");
            return;
        }
        Err(_) => {
            debug!(timeout = ?options.handshake_timeout, "HBONE handshake timed out");
            return;
        }
    };
    let (peer, not_after) = peer;
    let peer_not_after = Some(not_after);
    tracing::Span::current().record("peer", field::display(&peer));
    let _slot = match peers.admit(&peer) {
        Ok(slot) => slot,
        Err(open) => {
            info!(
                %peer,
                %remote,
                open,
                "HBONE connection refused: this identity holds the most connections allowed \
                 per peer (--hbone-max-connections-per-identity)"
            );
            handler.on_connection_limit();
            conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
            let closed = poll_fn(|cx| {
                let closed = conn.poll_closed(cx);
                if let Poll::Ready(Err(err)) = flusher.poll_flush(cx) {
                    return Poll::Ready(Err(err));
                }
                closed.map_err(io::Error::other)
            });
            let _ = tokio::time::timeout(GOAWAY_GRACE, closed).await;
            return;
        }
    };
    debug!("HBONE connection established");

    let mut streams = JoinSet::new();
    let mut draining = false;
    // Idle while no tunnel is open; re-armed whenever the last one ends.
    let idle = tokio::time::sleep(options.idle_timeout);
    tokio::pin!(idle);
    let keepalive = keepalive(
        conn.ping_pong(),
        options.keepalive_interval,
        options.keepalive_timeout,
    );
    tokio::pin!(keepalive);
    // Set once the connection is told to go away: it is cut if still open then.
    let close_by = tokio::time::sleep(Duration::MAX);
    tokio::pin!(close_by);
    let mut closing = false;
    loop {
        // After every poll of h2, what it wrote goes out in one TLS write.
        let accept = poll_fn(|cx| {
            let polled = conn.poll_accept(cx);
            if polled.is_pending()
                && let Poll::Ready(Err(err)) = flusher.poll_flush(cx)
            {
                return Poll::Ready(Err(err));
            }
            polled.map(Ok)
        });
        tokio::select! {
            request = accept => match request {
                Err(err) => {
                    debug!(error = %err, "writing to the HBONE connection failed");
                    break;
                }
                Ok(Some(Ok((request, respond)))) => {
                    let stream = serve_stream(
                        handler.clone(),
                        peer.clone(),
                        peer_not_after,
                        remote,
                        request,
                        respond,
                    );
                    streams.spawn(stream.in_current_span());
                }
                Ok(Some(Err(err))) => {
                    debug!(error = %err, "HBONE connection failed");
                    break;
                }
                Ok(None) => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {
                if streams.is_empty() {
                    idle.as_mut().reset(tokio::time::Instant::now() + options.idle_timeout);
                }
            }
            () = &mut idle, if streams.is_empty() && !draining => {
                debug!(timeout = ?options.idle_timeout, "HBONE connection idle; closing it");
                draining = true;
                conn.graceful_shutdown();
            }
            why = &mut keepalive => {
                debug!(reason = %why, "HBONE keepalive failed; closing the connection");
                break;
            }
            // Also fires when the server is gone (sender dropped): drain then, too.
            _ = drain.changed(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
            () = &mut close_by, if closing => {
                debug!("the peer did not close after GOAWAY; cutting the connection");
                break;
            }
        }
        // Told to go away (idle, or the server drains) with no tunnel left: the peer gets
        // GOAWAY_GRACE to close, then the connection is cut.
        if draining && !closing && streams.is_empty() {
            closing = true;
            close_by
                .as_mut()
                .reset(tokio::time::Instant::now() + GOAWAY_GRACE);
        }
    }
    // The connection is over, so no tunnel can move data; give them a moment to report.
    let _ = tokio::time::timeout(STREAM_WIND_DOWN, async {
        while streams.join_next().await.is_some() {}
    })
    .await;
    streams.shutdown().await;
}

/// Resolves when a PING goes unanswered for `timeout`, PINGing every `interval`; never when
/// the connection gives no PING handle.
async fn keepalive(pings: Option<h2::PingPong>, interval: Duration, timeout: Duration) -> String {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(err)) => return format!("PING failed: {err}"),
            Err(_) => return format!("no answer to a PING within {timeout:?}"),
        }
    }
}

async fn serve_stream<H: ConnectHandler>(
    handler: Arc<H>,
    peer: SpiffeId,
    peer_not_after: Option<std::time::SystemTime>,
    remote: SocketAddr,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let (parts, body) = request.into_parts();
    let raw_authority = parts.uri.authority().map(|a| a.as_str().to_owned());
    let authority_text = raw_authority.as_deref().unwrap_or("");
    // Events carry the peer and authority as fields; a span per stream would cost more than
    // the two or three events it annotates.
    let refuse = |respond: &mut SendResponse<Bytes>, refusal: &Refusal| {
        info!(
            %peer,
            %remote,
            authority = authority_text,
            status = refusal.status.as_u16(),
            reason = %refusal.reason,
            "tunnel refused"
        );
        send_refusal(respond, refusal);
    };
    if parts.method != Method::CONNECT {
        let refusal = Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} is not CONNECT", parts.method),
        );
        return refuse(&mut respond, &refusal);
    }
    // ztunnel tunnels to an IP and port; host names have no meaning in a pod's netns.
    let Some(authority) = raw_authority
        .as_deref()
        .and_then(|a| a.parse::<SocketAddr>().ok())
    else {
        let refusal = Refusal::new(StatusCode::BAD_REQUEST, "authority is not ip:port");
        return refuse(&mut respond, &refusal);
    };
    // The client sends without waiting for the 200, so it may come with the first bytes.
    let defer = parts
        .headers
        .get(DEFER_RESPONSE_HEADER)
        .is_some_and(|v| v == DEFER_RESPONSE_YES);
    let request = InboundConnect {
        peer: peer.clone(),
        peer_not_after,
        authority,
        remote,
        headers: parts.headers,
    };
    let mut upstream = match handler.connect(request).await {
        Ok(upstream) => upstream,
        Err(refusal) => return refuse(&mut respond, &refusal),
    };
    let mut tunnel = if defer {
        HboneStream::deferred(respond, body)
    } else {
        match respond.send_response(response(StatusCode::OK), false) {
            Ok(send) => HboneStream::new(send, body, None),
            Err(err) => {
                debug!(%peer, %authority, error = %err, "sending 200 failed; the client went away");
                return;
            }
        }
    };
    let started = Instant::now();
    let outcome = crate::copy::bidirectional(&mut tunnel, &mut upstream, |_| {}, |_| {}).await;
    let summary = TunnelSummary {
        peer,
        remote,
        authority,
        bytes_from_peer: outcome.a_to_b,
        bytes_to_peer: outcome.b_to_a,
        duration: started.elapsed(),
        error: outcome.error,
    };
    info!(
        peer = %summary.peer,
        %remote,
        %authority,
        bytes_from_peer = summary.bytes_from_peer,
        bytes_to_peer = summary.bytes_to_peer,
        duration_ms = u64::try_from(summary.duration.as_millis()).unwrap_or(u64::MAX),
        error = summary.error.as_ref().map(field::display),
        "tunnel closed"
    );
    handler.on_close(&summary);
}

/// Sends a refusal (the caller has logged it).
fn send_refusal(respond: &mut SendResponse<Bytes>, refusal: &Refusal) {
    let mut resp = response(refusal.status);
    if refusal.status == StatusCode::METHOD_NOT_ALLOWED {
        // RFC 9110 §15.5.6: a 405 lists the methods that are allowed.
        resp.headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("CONNECT"));
    }
    if let Err(err) = respond.send_response(resp, true) {
        debug!(error = %err, "sending the refusal failed; the client went away");
    }
}

pub(super) fn response(status: StatusCode) -> Response<()> {
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    resp
}
