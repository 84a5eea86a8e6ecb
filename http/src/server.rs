//! Serving one client connection: HTTP/1.1 and HTTP/2 (prior knowledge on plain TCP, or
//! whatever ALPN chose under TLS) over any byte stream, within limits that a client the
//! server does not trust cannot exceed.
//!
//! What each limit answers:
//! - a client that trickles its request head (slowloris) is cut off after
//!   [`ServerLimits::header_read_timeout`];
//! - a request head larger than [`ServerLimits::max_header_bytes`] gets `431` (HTTP/1.1:
//!   hyper's read buffer limit; HTTP/2: `SETTINGS_MAX_HEADER_LIST_SIZE`, which h2 answers
//!   with `431` too);
//! - a body larger than the limit the caller gives [`guard_body`] fails with
//!   [`BodyError::TooLarge`] (the caller answers `413`), one that stalls between two chunks
//!   for [`ServerLimits::body_read_timeout`] with [`BodyError::Timeout`];
//! - HTTP/1.1 request smuggling shapes (`Content-Length` with `Transfer-Encoding`, two
//!   different `Content-Length`s, a `Transfer-Encoding` that does not end in `chunked`) are
//!   refused by hyper's parser with `400` and the connection is closed;
//! - HTTP/2 stream floods are capped by [`ServerLimits::h2_max_concurrent_streams`], and
//!   rapid reset (CVE-2023-44487) by h2's limits on streams the client resets before they are
//!   accepted and on streams the server has to reset: past them the connection gets `GOAWAY`;
//! - a connection that moves no byte either way for [`ServerLimits::idle_timeout`] is closed.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, combinators::UnsyncBoxBody};
use hyper::{
    Request, Response,
    body::{Frame, Incoming, SizeHint},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type requests and responses travel with through the engine.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A request head is read within this long (Envoy's `request_headers_timeout` is off by
/// default; nginx's `client_header_timeout` is 60 s). Ten seconds is ample for any honest
/// client and short for a slowloris.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// nginx's `large_client_header_buffers` total and Envoy's `max_request_headers_kb` are both
/// 60-64 KiB: every real request head fits, an abusive one costs little memory.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Request body size limit when a route gives none: enough for API payloads, small enough
/// that a stream of large uploads cannot tie up a backend.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// A body that sends nothing for this long is abandoned (nginx's `client_body_timeout`).
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection that moves nothing either way for this long is closed (Envoy's
/// `idle_timeout` default is one hour; edge proxies close much sooner).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Streams one HTTP/2 connection may have open at once (Envoy's edge recommendation).
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams reset by the client before the server accepted them, tolerated at once; more is
/// rapid reset and ends the connection with `GOAWAY`. h2's own default.
pub const DEFAULT_H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the server had to reset because the client misbehaved on them (h2's default
/// since the "MadeYouReset" advisory); more ends the connection with `GOAWAY`.
pub const DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// HTTP/1.1 header lines per request (hyper's default); more get `431`.
pub const DEFAULT_MAX_HEADERS: usize = 100;

/// The limits of every client connection.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_accept_reset_streams: usize,
    pub h2_max_local_error_reset_streams: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            h2_max_pending_accept_reset_streams: DEFAULT_H2_MAX_PENDING_ACCEPT_RESET_STREAMS,
            h2_max_local_error_reset_streams: DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS,
        }
    }
}

/// hyper refuses a read buffer smaller than this.
const HYPER_MIN_BUF: usize = 8192;

/// Serves connections with one set of limits. Build once, share (`Arc`) between listeners.
pub struct HttpServer {
    builder: auto::Builder<TokioExecutor>,
    limits: ServerLimits,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    pub fn new(limits: ServerLimits) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(HYPER_MIN_BUF))
            .max_headers(limits.max_headers)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
            .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
            // A client that stops answering PINGs is gone; closes what the idle timer would
            // leave open while streams are merely waiting.
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        HttpServer { builder, limits }
    }

    pub fn limits(&self) -> &ServerLimits {
        &self.limits
    }

    /// Serves one connection until the client closes it, it breaks a limit, or `shutdown`
    /// completes; then in-flight requests finish (HTTP/1.1 closes after the current
    /// response, HTTP/2 sends `GOAWAY`) before this returns.
    pub async fn serve<IO, S, B>(&self, io: IO, service: S, shutdown: impl Future<Output = ()>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
            + Send
            + Clone
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let (io, last) = Activity::new(io);
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        tokio::pin!(shutdown);
        let idle = self.limits.idle_timeout;
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(err) = served {
                    debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            () = idle_for(&last, idle) => {
                debug!(timeout = ?idle, "connection idle; closing it");
                return;
            }
            () = &mut shutdown => {}
        }
        conn.as_mut().graceful_shutdown();
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(err) = served {
                    debug!(error = %err, "connection ended with an error while draining");
                }
            }
            () = idle_for(&last, idle) => {}
        }
    }
}

/// Resolves once no byte has moved for `timeout` since the last activity in `last`.
async fn idle_for(last: &Mutex<Instant>, timeout: Duration) {
    loop {
        let deadline = *last.lock() + timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// A stream that records when a byte last moved through it, either way.
struct Activity<T> {
    inner: T,
    last: Arc<Mutex<Instant>>,
}

impl<T> Activity<T> {
    fn new(inner: T) -> (Self, Arc<Mutex<Instant>>) {
        let last = Arc::new(Mutex::new(Instant::now()));
        (
            Activity {
                inner,
                last: last.clone(),
            },
            last,
        )
    }

    fn moved(&self, n: usize) {
        if n > 0 {
            *self.last.lock() = Instant::now();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.moved(buf.filled().len().saturating_sub(before));
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            self.moved(n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.moved(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why a request body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("request body stalled for {after:?}")]
    Timeout { after: Duration },
}

impl BodyError {
    /// The `BodyError` somewhere in an error's source chain, if any.
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<BodyError> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(b) = e.downcast_ref::<BodyError>() {
                return Some(*b);
            }
            cur = e.source();
        }
        None
    }
}

/// The request body, cut off past `max_bytes` or when no chunk comes for `timeout`.
/// A `Content-Length` above the limit is for the caller to refuse before reading (see
/// [`declared_too_large`]); this catches bodies that lie or are chunked.
pub fn guard_body(body: Incoming, max_bytes: u64, timeout: Duration) -> Body {
    GuardedBody {
        inner: body,
        seen: 0,
        max_bytes,
        timeout,
        sleep: None,
    }
    .boxed_unsync()
}

/// Whether a request declares (`Content-Length`) a body above `max_bytes`.
pub fn declared_too_large<B>(req: &Request<B>, max_bytes: u64) -> bool {
    req.headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > max_bytes)
}

struct GuardedBody {
    inner: Incoming,
    seen: u64,
    max_bytes: u64,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.sleep = None;
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.max_bytes {
                        return Poll::Ready(Some(Err(Box::new(BodyError::TooLarge {
                            limit: this.max_bytes,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(Box::new(BodyError::Timeout { after: timeout }))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}
