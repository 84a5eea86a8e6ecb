//! One HBONE tunnel (an h2 stream) as a byte stream.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::client::ResponseFuture;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::StatusCode;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::pool::Lease;
use super::{HboneError, h2_to_io};
use crate::copy::Endpoint;

/// The most one write asks h2 to reserve. Larger writes are split: a stream then cannot claim
/// the connection window that other tunnels of the connection are waiting for.
const MAX_WRITE_RESERVE: usize = 256 * 1024;

/// A tunnel: bytes written become DATA frames, `shutdown` sends END_STREAM, and reads end
/// (return 0) when the peer sends END_STREAM.
///
/// Flow control follows the reader: receive capacity is given back to the peer only as the
/// bytes are read out (or, for [`crate::copy::bidirectional`], as a whole frame is handed to
/// the copy, which writes it out before it takes another), so a slow reader slows the sender
/// instead of filling memory.
///
/// A tunnel opened with [`super::ConnectRequest::optimistic`] is returned before the server
/// has answered: writes go out at once, and the answer is checked on the first read. A
/// refusal then fails that read with an error that [`HboneError::of_io`] turns back into the
/// [`HboneError`]. On the server, a tunnel whose client asked for it sends its `200` with its
/// first bytes (or its END_STREAM) instead of on its own.
pub struct HboneStream {
    send: SendSide,
    recv: Recv,
    /// Received but not yet read out.
    pending: Bytes,
    write_closed: bool,
    /// Keeps the client's pooled connection counted as in use while the tunnel lives.
    _lease: Option<Lease>,
}

enum SendSide {
    Open(SendStream<Bytes>),
    /// A server tunnel whose `200` waits for the first bytes.
    Deferred(SendResponse<Bytes>),
    /// Sending the deferred `200` failed.
    Closed,
}

enum Recv {
    Open(RecvStream),
    /// An optimistic client's tunnel whose response has not arrived.
    Awaiting(Box<Awaiting>),
    /// The optimistic tunnel was refused or got no answer (reported once, as the error).
    Failed,
}

/// A retried open: the same request on a fresh connection.
pub(crate) type Reopen = Pin<Box<dyn Future<Output = Result<HboneStream, HboneError>> + Send>>;

struct Awaiting {
    response: ResponseFuture,
    dst: SocketAddr,
    authority: SocketAddr,
    retry: Retry,
    /// The reader and the writer of a split tunnel both wait for the answer, and a future
    /// keeps only the last waker it was polled with: it is polled with one that wakes both.
    wakers: Arc<BothSides>,
    waker: Waker,
}

/// Opening the tunnel again when the server did not process the request (REFUSED_STREAM, or
/// a GOAWAY below this stream). Only while nothing but the early data was sent, since that is
/// all a new request carries.
enum Retry {
    /// Not possible (a fresh connection, or a write went out).
    Spent,
    /// The same request on a fresh connection; a future does nothing until polled.
    Ready(Reopen),
    /// The retry, started: writes wait for it.
    Running(Reopen),
}

/// Which half of the tunnel is waiting for the answer.
#[derive(Clone, Copy)]
enum Side {
    Read,
    Write,
}

#[derive(Default)]
struct BothSides {
    read: Mutex<Option<Waker>>,
    write: Mutex<Option<Waker>>,
}

impl BothSides {
    fn register(&self, side: Side, waker: &Waker) {
        let mut slot = match side {
            Side::Read => self.read.lock(),
            Side::Write => self.write.lock(),
        };
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

impl Wake for BothSides {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let read = self.read.lock().take();
        let write = self.write.lock().take();
        for waker in [read, write].into_iter().flatten() {
            waker.wake();
        }
    }
}

/// Whether the server said it did not act on a request: safe to send it again.
pub(crate) fn unprocessed(err: &h2::Error) -> bool {
    err.reason() == Some(h2::Reason::REFUSED_STREAM) || (err.is_go_away() && err.is_remote())
}

impl HboneStream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream, lease: Option<Lease>) -> Self {
        Self {
            send: SendSide::Open(send),
            recv: Recv::Open(recv),
            pending: Bytes::new(),
            write_closed: false,
            _lease: lease,
        }
    }

    /// A client tunnel whose response is still to come.
    pub(crate) fn awaiting(
        send: SendStream<Bytes>,
        response: ResponseFuture,
        lease: Lease,
        dst: SocketAddr,
        authority: SocketAddr,
    ) -> Self {
        let wakers = Arc::new(BothSides::default());
        Self {
            send: SendSide::Open(send),
            recv: Recv::Awaiting(Box::new(Awaiting {
                response,
                dst,
                authority,
                retry: Retry::Spent,
                waker: Waker::from(wakers.clone()),
                wakers,
            })),
            pending: Bytes::new(),
            write_closed: false,
            _lease: Some(lease),
        }
    }

    /// How to open this tunnel again if the server did not process it.
    pub(crate) fn set_retry(&mut self, retry: Reopen) {
        if let Recv::Awaiting(awaiting) = &mut self.recv {
            awaiting.retry = Retry::Ready(retry);
        }
    }

    /// A server tunnel that answers `200` with its first bytes.
    pub(crate) fn deferred(respond: SendResponse<Bytes>, recv: RecvStream) -> Self {
        Self {
            send: SendSide::Deferred(respond),
            recv: Recv::Open(recv),
            pending: Bytes::new(),
            write_closed: false,
            _lease: None,
        }
    }

    /// Ready once the server's answer is in: the body for `200`, the refusal otherwise. A
    /// request the server did not process is sent again on a fresh connection first, when
    /// it still can be.
    fn poll_opened(
        &mut self,
        cx: &mut Context<'_>,
        side: Side,
    ) -> Poll<io::Result<&mut RecvStream>> {
        loop {
            let awaiting = match &mut self.recv {
                // (Matched again below: returning this borrow from the loop would hold it.)
                Recv::Open(_) => break,
                Recv::Failed => return Poll::Ready(Err(failed())),
                Recv::Awaiting(awaiting) => awaiting,
            };
            awaiting.wakers.register(side, cx.waker());
            let mut both = Context::from_waker(&awaiting.waker);
            if let Retry::Running(reopening) = &mut awaiting.retry {
                match ready!(reopening.as_mut().poll(&mut both)) {
                    Ok(reopened) => *self = reopened,
                    Err(err) => return Poll::Ready(Err(self.fail(err))),
                }
                continue;
            }
            let (dst, authority) = (awaiting.dst, awaiting.authority);
            match ready!(Pin::new(&mut awaiting.response).poll(&mut both)) {
                Ok(response) if response.status() == StatusCode::OK => {
                    self.recv = Recv::Open(response.into_body());
                }
                Ok(response) => {
                    let status = response.status();
                    let refused = HboneError::Refused {
                        dst,
                        authority,
                        status,
                    };
                    return Poll::Ready(Err(self.fail(refused)));
                }
                Err(err) => match std::mem::replace(&mut awaiting.retry, Retry::Spent) {
                    Retry::Ready(reopen) if unprocessed(&err) => {
                        tracing::debug!(error = %err, "tunnel not processed; retrying on a new connection");
                        awaiting.retry = Retry::Running(reopen);
                    }
                    _ => return Poll::Ready(Err(self.fail(HboneError::h2(dst, err)))),
                },
            }
        }
        match &mut self.recv {
            Recv::Open(recv) => Poll::Ready(Ok(recv)),
            Recv::Awaiting(_) | Recv::Failed => Poll::Ready(Err(failed())),
        }
    }

    /// Marks the tunnel failed and returns `err` as the I/O error to report.
    fn fail(&mut self, err: HboneError) -> io::Error {
        self.recv = Recv::Failed;
        open_error(err)
    }

    /// Before a write on a tunnel still waiting for its answer: a refusal that has arrived is
    /// reported (rather than the reset that follows it), a tunnel being opened again takes
    /// writes once it is, and otherwise the write goes out before the answer, after which the
    /// tunnel can no longer be retried.
    fn poll_writable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if matches!(self.recv, Recv::Open(_)) {
            return Poll::Ready(Ok(()));
        }
        if self.poll_opened(cx, Side::Write)?.is_pending()
            && let Recv::Awaiting(awaiting) = &mut self.recv
        {
            if let Retry::Running(_) = awaiting.retry {
                return Poll::Pending;
            }
            awaiting.retry = Retry::Spent;
        }
        Poll::Ready(Ok(()))
    }

    /// The send side, sending the server's deferred `200` first.
    fn send_stream(&mut self) -> io::Result<&mut SendStream<Bytes>> {
        if let SendSide::Deferred(_) = self.send
            && let SendSide::Deferred(mut respond) =
                std::mem::replace(&mut self.send, SendSide::Closed)
        {
            let send = respond
                .send_response(super::server::response(StatusCode::OK), false)
                .map_err(h2_to_io)?;
            self.send = SendSide::Open(send);
        }
        match &mut self.send {
            SendSide::Open(send) => Ok(send),
            SendSide::Deferred(_) | SendSide::Closed => Err(tunnel_closed()),
        }
    }

    /// The error for a send side that h2 has closed: the peer's reset reason if it sent one.
    fn send_closed(&mut self, cx: &mut Context<'_>) -> io::Error {
        let SendSide::Open(send) = &mut self.send else {
            return tunnel_closed();
        };
        match send.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("tunnel reset by peer: {reason}"),
            ),
            Poll::Ready(Err(e)) => h2_to_io(e),
            Poll::Pending => io::Error::new(io::ErrorKind::BrokenPipe, "tunnel closed"),
        }
    }

    /// Ready with how many of `want` bytes (at least one) h2 takes now: what both the peer's
    /// windows and our send buffer allow.
    fn poll_send_capacity(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        ready!(self.poll_writable(cx))?;
        loop {
            let send = self.send_stream()?;
            let available = send.capacity();
            if available > 0 {
                return Poll::Ready(Ok(available.min(want)));
            }
            // Reservation is a total, not an increment, so asking again does not pile up.
            send.reserve_capacity(want.min(MAX_WRITE_RESERVE));
            match ready!(send.poll_capacity(cx)) {
                // Capacity grew (or a stale notification): look again.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => return Poll::Ready(Err(self.send_closed(cx))),
            }
        }
    }

    /// Gives `n` received bytes' worth of window back to the peer.
    fn release(&mut self, n: usize) -> io::Result<()> {
        match &mut self.recv {
            Recv::Open(recv) => recv.flow_control().release_capacity(n).map_err(h2_to_io),
            // Nothing can have been received before the response.
            Recv::Awaiting(_) | Recv::Failed => Ok(()),
        }
    }

    /// The next DATA frame, once the tunnel is open; `None` at END_STREAM.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        match ready!(self.poll_opened(cx, Side::Read)) {
            Ok(recv) => recv
                .poll_data(cx)
                .map(|data| data.map(|d| d.map_err(h2_to_io))),
            Err(err) => Poll::Ready(Some(Err(err))),
        }
    }
}

/// The copy takes DATA frames as they are and gives its read buffer to h2 as a frame.
impl Endpoint for HboneStream {
    fn reads_chunks(&self) -> bool {
        true
    }

    fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        let chunk = if self.pending.is_empty() {
            loop {
                match ready!(self.poll_data(cx)) {
                    Some(Ok(data)) if data.is_empty() => {}
                    Some(Ok(data)) => break data,
                    Some(Err(e)) => return Poll::Ready(Err(e)),
                    None => return Poll::Ready(Ok(None)),
                }
            }
        } else {
            std::mem::take(&mut self.pending)
        };
        // The frame has left h2 for the copy, which writes it out before it reads again: the
        // peer may now send this much more.
        self.release(chunk.len())?;
        Poll::Ready(Ok(Some(chunk)))
    }

    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_send_capacity(cx, buf.len()))?;
        self.send_stream()?
            .send_data(buf.split_to(n).freeze(), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    /// RST_STREAM with CONNECT_ERROR: RFC 9113 §8.5 has a CONNECT proxy signal a TCP error
    /// (a reset included) this way, and the peer's agent resets its TCP connection in turn.
    /// A refused or failed tunnel has nothing to reset.
    fn abort(&mut self) {
        match &mut self.send {
            SendSide::Open(send) => send.send_reset(h2::Reason::CONNECT_ERROR),
            SendSide::Deferred(respond) => respond.send_reset(h2::Reason::CONNECT_ERROR),
            SendSide::Closed => {}
        }
    }
}

impl fmt::Debug for HboneStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HboneStream")
            .field(
                "stream_id",
                &match &self.send {
                    SendSide::Open(send) => Some(send.stream_id()),
                    SendSide::Deferred(_) | SendSide::Closed => None,
                },
            )
            .field("open", &matches!(self.recv, Recv::Open(_)))
            .field("pending", &self.pending.len())
            .field("write_closed", &self.write_closed)
            .finish()
    }
}

impl AsyncRead for HboneStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                // Only now may the peer send more: these bytes have left our buffers.
                this.release(n)?;
                return Poll::Ready(Ok(()));
            }
            match ready!(this.poll_data(cx)) {
                // DATA frames may be empty; loop rather than report a false EOF.
                Some(Ok(data)) => this.pending = data,
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for HboneStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(this.poll_send_capacity(cx, buf.len()))?;
        this.send_stream()?
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2's connection task writes queued frames out; there is nothing to flush here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            ready!(this.poll_writable(cx))?;
            let send = this.send_stream()?;
            // Drop any reservation left: END_STREAM needs no window.
            send.reserve_capacity(0);
            send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
            this.write_closed = true;
        }
        Poll::Ready(Ok(()))
    }
}

fn tunnel_closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "tunnel closed")
}

/// What a failed tunnel says after it has reported why.
fn failed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the tunnel was not opened")
}

/// A failure to open the tunnel, as the I/O error a read or write of it returns.
fn open_error(err: HboneError) -> io::Error {
    let kind = match err {
        HboneError::Refused { .. } => io::ErrorKind::ConnectionRefused,
        _ => io::ErrorKind::ConnectionReset,
    };
    io::Error::new(kind, err)
}
