//! Opening HBONE tunnels.

use std::fmt;
use std::future::{Future as _, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tracing::{Instrument, debug, debug_span};

use super::pool::{Conn, Lease, Pool, PoolKey};
use super::stream::unprocessed;
use super::transport;
use super::{
    BAGGAGE_HEADER, CONNECTION_WINDOW, DEFER_RESPONSE_HEADER, DEFER_RESPONSE_YES, HboneError,
    HboneStream, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE, MAX_SEND_BUFFER, STREAM_WINDOW,
    TRACEPARENT_HEADER, TraceParent,
};
use crate::identity::SpiffeId;
use crate::tls::ClientTls;

/// Long enough for a SYN retransmission or two on a busy node, short enough that an
/// application's connect does not hang for the kernel's two minutes when the peer is gone.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS and the HTTP/2 preface take two round trips and some signing; seconds mean the peer
/// is not an HBONE server or is overloaded.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Tunnels per connection before another connection is opened. ztunnel's default, the
/// minimum RFC 9113 §6.5.2 recommends servers allow, and Go's default.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// A connection without tunnels is closed after this long (ztunnel's pool default): reuse
/// within bursts, no lingering sockets to pods that are gone.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Creates the sockets tunnels are dialled from.
///
/// The agent dials from inside the source pod's network namespace, so that the connection
/// leaves with the pod's IP; that needs a socket created there, which only the caller can do.
pub trait SocketFactory: Send + Sync + fmt::Debug {
    fn new_tcp(&self, dst: SocketAddr) -> io::Result<TcpSocket>;
}

/// Sockets in the caller's own network namespace, with `TCP_NODELAY`.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainSocketFactory;

impl SocketFactory for PlainSocketFactory {
    fn new_tcp(&self, dst: SocketAddr) -> io::Result<TcpSocket> {
        let socket = match dst {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        // Small writes of interactive protocols must not wait for ACKs (TOOLCHAIN.md).
        socket.set_nodelay(true)?;
        Ok(socket)
    }
}

/// Client settings; the defaults are the named constants of this module.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Limit on the TCP connect to the destination's port 15008.
    pub connect_timeout: Duration,
    /// Limit on the TLS handshake plus the HTTP/2 preface exchange.
    pub handshake_timeout: Duration,
    /// Tunnels per connection, also bounded by the server's SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_streams_per_connection: u32,
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// One tunnel to open.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// The destination's HBONE address, normally `pod_ip:15008`.
    pub dst: SocketAddr,
    /// Identities the destination may prove; any other is refused. Never empty.
    pub expected: Vec<SpiffeId>,
    /// The original destination, sent as `:authority`.
    pub authority: SocketAddr,
    /// The trace this connection belongs to; a new one is started when `None`.
    pub traceparent: Option<TraceParent>,
    /// W3C baggage to pass on, as received or built by the caller.
    pub baggage: Option<HeaderValue>,
    /// Bytes the client already sent, to go out with the request: the server gets the
    /// CONNECT and the first bytes in one read instead of waiting a round trip for them.
    pub early_data: Bytes,
    /// Return the tunnel as soon as the request is sent, without waiting for the answer, and
    /// ask the server (with [`DEFER_RESPONSE_HEADER`]) to send its `200` along with its first
    /// bytes: the answer then costs no packet and no wake-up of its own. A refusal shows up
    /// on the tunnel's first read instead (see [`HboneStream`]). Servers that do not know the
    /// header answer at once, which works the same.
    pub optimistic: bool,
}

impl ConnectRequest {
    pub fn new(dst: SocketAddr, expected: SpiffeId, authority: SocketAddr) -> Self {
        Self {
            dst,
            expected: vec![expected],
            authority,
            traceparent: None,
            baggage: None,
            early_data: Bytes::new(),
            optimistic: false,
        }
    }
}

/// Opens tunnels over pooled, multiplexed connections. Clones share the pool.
#[derive(Clone)]
pub struct HboneClient {
    inner: Arc<Inner>,
}

struct Inner {
    sockets: Arc<dyn SocketFactory>,
    options: ClientOptions,
    pool: Pool,
    next_conn_id: AtomicU64,
}

impl fmt::Debug for HboneClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HboneClient")
            .field("sockets", &self.inner.sockets)
            .field("options", &self.inner.options)
            .field("connections", &self.inner.pool.connections())
            .finish()
    }
}

impl HboneClient {
    pub fn new(sockets: Arc<dyn SocketFactory>, options: ClientOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool: Pool::new(options.idle_timeout),
                sockets,
                options,
                next_conn_id: AtomicU64::new(1),
            }),
        }
    }

    /// Open connections in the pool.
    pub fn pooled_connections(&self) -> usize {
        self.inner.pool.connections()
    }

    /// Opens a tunnel from `tls`'s identity to `req.authority` through `req.dst`.
    pub async fn connect(
        &self,
        tls: &ClientTls,
        req: ConnectRequest,
    ) -> Result<HboneStream, HboneError> {
        // Debug level: at the default level, no span is built for each tunnel.
        let span = debug_span!(
            "hbone_outbound",
            src = %tls.identity(),
            dst = %req.dst,
            authority = %req.authority,
        );
        self.connect_inner(tls, req).instrument(span).await
    }

    async fn connect_inner(
        &self,
        tls: &ClientTls,
        req: ConnectRequest,
    ) -> Result<HboneStream, HboneError> {
        let request = build_request(&req)?;
        let key = PoolKey::new(
            tls.identity().clone(),
            req.expected.clone(),
            req.dst,
            tls.certificate().not_after(),
        );
        // A pooled connection can die between checkout and use, and a server may refuse a
        // stream it has no room for (REFUSED_STREAM, RFC 9113 §8.7: safe to retry). One retry
        // on a fresh connection hides both; a fresh connection failing is the real answer.
        let mut reuse = true;
        loop {
            let (lease, pooled) = self.checkout(tls, &key, reuse).await?;
            match self.open(&req, request.clone(), lease).await {
                Err(OpenError::Retryable(err)) if pooled => {
                    debug!(error = %err, "pooled connection failed; retrying on a new one");
                    reuse = false;
                }
                Err(OpenError::Retryable(err) | OpenError::Final(err)) => return Err(err),
                Ok(mut stream) => {
                    if req.optimistic && pooled {
                        // The server's answer comes after we return: the stream retries.
                        let reopen = self.clone().reopen(tls.clone(), key, req, request);
                        stream.set_retry(Box::pin(reopen));
                    }
                    return Ok(stream);
                }
            }
        }
    }

    /// An optimistic tunnel sent again on a fresh connection, after the pooled one did not
    /// process it.
    async fn reopen(
        self,
        tls: ClientTls,
        key: PoolKey,
        req: ConnectRequest,
        request: Request<()>,
    ) -> Result<HboneStream, HboneError> {
        let (lease, _) = self.checkout(&tls, &key, false).await?;
        match self.open(&req, request, lease).await {
            Ok(stream) => Ok(stream),
            Err(OpenError::Retryable(err) | OpenError::Final(err)) => Err(err),
        }
    }

    /// A stream slot, and whether it is on a connection that was already pooled. With
    /// `reuse` false, always dials (a retry after a pooled connection failed).
    async fn checkout(
        &self,
        tls: &ClientTls,
        key: &PoolKey,
        reuse: bool,
    ) -> Result<(Lease, bool), HboneError> {
        let slot = self.inner.pool.slot(key);
        if reuse && let Some(lease) = slot.checkout() {
            return Ok((lease, true));
        }
        let _dialling = slot.dial.lock().await;
        // Another caller may have dialled while we waited; its connection may have room.
        if reuse && let Some(lease) = slot.checkout() {
            return Ok((lease, true));
        }
        let conn = self.dial(tls, key).await?;
        let lease = conn
            .try_reserve()
            .ok_or(HboneError::NoStreams { dst: key.dst })?;
        slot.insert(conn);
        Ok((lease, false))
    }

    async fn dial(&self, tls: &ClientTls, key: &PoolKey) -> Result<Arc<Conn>, HboneError> {
        let dst = key.dst;
        let options = &self.inner.options;
        // Before any network activity: a config error is the caller's, not the network's.
        let config = tls
            .config_for(&key.expected)
            .map_err(|source| HboneError::Config { source })?;
        let socket = self
            .inner
            .sockets
            .new_tcp(dst)
            .map_err(|source| HboneError::Socket { dst, source })?;
        let tcp = tokio::time::timeout(options.connect_timeout, socket.connect(dst))
            .await
            .map_err(|_| HboneError::ConnectTimeout { dst })?
            .map_err(|source| HboneError::Connect { dst, source })?;
        let id = self.inner.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let max_streams = usize::try_from(options.max_streams_per_connection).unwrap_or(usize::MAX);
        tokio::time::timeout(
            options.handshake_timeout,
            handshake(tcp, config, dst, id, max_streams),
        )
        .await
        .map_err(|_| HboneError::HandshakeTimeout { dst })?
    }

    async fn open(
        &self,
        req: &ConnectRequest,
        request: Request<()>,
        lease: Lease,
    ) -> Result<HboneStream, OpenError> {
        let dst = req.dst;
        let conn = lease.conn().clone();
        let dead = |err: h2::Error| {
            conn.mark_closed();
            OpenError::Retryable(HboneError::h2(dst, err))
        };
        let mut sender = conn.sender().ready().await.map_err(dead)?;
        let (response, mut send) = sender.send_request(request, false).map_err(dead)?;
        // Queued behind the HEADERS frame, so both leave in one write. The stream's initial
        // window covers it; beyond that h2 holds it until the window opens.
        if !req.early_data.is_empty()
            && let Err(err) = send.send_data(req.early_data.clone(), false)
        {
            // The only way to fail here is a stream that has already ended: the connection
            // task ran between the two calls and took the server's whole answer, or its
            // reset (a server that has answered in full resets the rest with NO_ERROR,
            // RFC 9113 §8.1). That answer decides the outcome and is read below; this error
            // would only hide it.
            debug!(conn = conn.id, %err, "early data not sent: the stream had ended");
        }
        if req.optimistic {
            return Ok(HboneStream::awaiting(
                send,
                response,
                lease,
                dst,
                req.authority,
            ));
        }
        // The request is out: unless the server says it did not process it, failures from
        // here on are this tunnel's (the server may already have connected upstream).
        let response = response.await.map_err(|err| {
            if unprocessed(&err) {
                OpenError::Retryable(HboneError::h2(dst, err))
            } else {
                OpenError::Final(HboneError::h2(dst, err))
            }
        })?;
        if response.status() != StatusCode::OK {
            return Err(OpenError::Final(HboneError::Refused {
                dst,
                authority: req.authority,
                status: response.status(),
            }));
        }
        debug!(conn = conn.id, "tunnel open");
        Ok(HboneStream::new(send, response.into_body(), Some(lease)))
    }
}

enum OpenError {
    /// The server did not act on the request: safe to send it on another connection.
    Retryable(HboneError),
    /// The server answered, or may have acted on the request.
    Final(HboneError),
}

fn build_request(req: &ConnectRequest) -> Result<Request<()>, HboneError> {
    let authority = req.authority;
    // IPv6 authorities come out bracketed ("[::1]:80"), as RFC 3986 wants.
    let uri = Uri::try_from(authority.to_string()).map_err(|e| HboneError::Request {
        authority,
        source: e.into(),
    })?;
    let traceparent = req.traceparent.unwrap_or_else(TraceParent::generate);
    let mut builder = Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .header(TRACEPARENT_HEADER, traceparent.to_string());
    if let Some(baggage) = &req.baggage {
        builder = builder.header(BAGGAGE_HEADER, baggage.clone());
    }
    if req.optimistic {
        builder = builder.header(DEFER_RESPONSE_HEADER, DEFER_RESPONSE_YES);
    }
    builder
        .body(())
        .map_err(|source| HboneError::Request { authority, source })
}

/// TLS, then HTTP/2, then one PING round trip before the connection is pooled: the server's
/// SETTINGS precede its PING ACK, so afterwards its stream limit is known and a full
/// connection is never mistaken for one with room.
async fn handshake(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
    dst: SocketAddr,
    id: u64,
    max_streams: usize,
) -> Result<Arc<Conn>, HboneError> {
    let server_name = ServerName::IpAddress(dst.ip().into());
    let tls = TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|source| HboneError::tls(dst, source))?;
    let (transport, flusher) = transport::buffered(tls);
    let (send, mut connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .enable_push(false)
        .handshake::<_, Bytes>(transport)
        .await
        .map_err(|err| HboneError::h2_handshake(dst, err))?;
    let ping = connection.ping_pong();
    let closed = Arc::new(AtomicBool::new(false));
    let driver_closed = closed.clone();
    // The driver ends when the connection fails or when the pool and every tunnel have
    // dropped their handles (h2 then sends GOAWAY and closes).
    tokio::spawn(
        async move {
            // After every poll of h2, what it wrote goes out in one TLS write.
            let driven = poll_fn(|cx| {
                let polled = Pin::new(&mut connection)
                    .poll(cx)
                    .map_err(|e| e.to_string());
                if polled.is_ready() {
                    return polled;
                }
                match flusher.poll_flush(cx) {
                    Poll::Ready(Err(err)) => Poll::Ready(Err(format!("writing: {err}"))),
                    _ => Poll::Pending,
                }
            })
            .await;
            match driven {
                Ok(()) => debug!("connection closed"),
                Err(err) => debug!(error = %err, "connection failed"),
            }
            driver_closed.store(true, Ordering::Release);
        }
        .instrument(debug_span!("hbone_conn", id, %dst)),
    );
    if let Some(mut ping) = ping {
        ping.ping(h2::Ping::opaque())
            .await
            .map_err(|err| HboneError::h2_handshake(dst, err))?;
    }
    debug!(id, "connection established");
    Ok(Conn::new(id, send, max_streams, closed))
}
