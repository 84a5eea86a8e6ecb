//! Accepting HBONE tunnels.

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
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, debug_span, field, info, warn};

use super::{
    CONNECTION_WINDOW, DEFER_RESPONSE_HEADER, DEFER_RESPONSE_YES, HboneStream, MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE, MAX_SEND_BUFFER, STREAM_WINDOW, transport,
};
use crate::identity::SpiffeId;
use crate::tls::{peer_identity, peer_not_after};

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

/// After `accept` fails (e.g. EMFILE), wait before the next try instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

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
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
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
}

/// Serves HBONE on a listener: mTLS, HTTP/2, one [`ConnectHandler`] call per CONNECT.
pub struct HboneServer<H> {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: Arc<H>,
    options: ServerOptions,
}

impl<H: ConnectHandler> HboneServer<H> {
    /// `listener` is bound by the caller, normally to port 15008 inside a pod's network
    /// namespace; `tls` comes from [`crate::tls::server_config`].
    pub fn new(listener: TcpListener, tls: Arc<rustls::ServerConfig>, handler: Arc<H>) -> Self {
        Self {
            listener,
            acceptor: TlsAcceptor::from(tls),
            handler,
            options: ServerOptions::default(),
        }
    }

    pub fn with_options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until `shutdown` completes, then drains: connections get GOAWAY, and tunnels
    /// have `drain_timeout` to finish before they are cut.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (drain_tx, drain_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, remote)) => {
                        let span = debug_span!("hbone_conn", %remote, peer = field::Empty);
                        let conn = serve_connection(
                            tcp,
                            remote,
                            self.acceptor.clone(),
                            self.handler.clone(),
                            self.options.clone(),
                            drain_rx.clone(),
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
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    handler: Arc<H>,
    options: ServerOptions,
    mut drain: watch::Receiver<bool>,
) {
    if let Err(err) = tcp.set_nodelay(true) {
        debug!(error = %err, "setting TCP_NODELAY failed");
    }
    let handshake = async {
        let tls = acceptor
            .accept(tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let peer = peer_identity(tls.get_ref().1).map_err(|e| format!("peer identity: {e}"))?;
        let peer = (peer, peer_not_after(tls.get_ref().1));
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
    let (peer, mut conn, flusher) =
        match tokio::time::timeout(options.handshake_timeout, handshake).await {
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
    let (peer, peer_not_after) = peer;
    tracing::Span::current().record("peer", field::display(&peer));
    debug!("HBONE connection established");

    let mut streams = JoinSet::new();
    let mut draining = false;
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
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            // Also fires when the server is gone (sender dropped): drain then, too.
            _ = drain.changed(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
        }
    }
    // The connection is over, so no tunnel can move data; give them a moment to report.
    let _ = tokio::time::timeout(STREAM_WIND_DOWN, async {
        while streams.join_next().await.is_some() {}
    })
    .await;
    streams.shutdown().await;
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
