//! One HBONE tunnel (an h2 stream) as a byte stream.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h2_to_io;
use super::pool::Lease;
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
pub struct HboneStream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received but not yet read out.
    pending: Bytes,
    write_closed: bool,
    /// Keeps the client's pooled connection counted as in use while the tunnel lives.
    _lease: Option<Lease>,
}

impl HboneStream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream, lease: Option<Lease>) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            write_closed: false,
            _lease: lease,
        }
    }

    /// The error for a send side that h2 has closed: the peer's reset reason if it sent one.
    fn send_closed(&mut self, cx: &mut Context<'_>) -> io::Error {
        match self.send.poll_reset(cx) {
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
        loop {
            let available = self.send.capacity();
            if available > 0 {
                return Poll::Ready(Ok(available.min(want)));
            }
            // Reservation is a total, not an increment, so asking again does not pile up.
            self.send.reserve_capacity(want.min(MAX_WRITE_RESERVE));
            match ready!(self.send.poll_capacity(cx)) {
                // Capacity grew (or a stale notification): look again.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => return Poll::Ready(Err(self.send_closed(cx))),
            }
        }
    }

    /// Gives `n` received bytes' worth of window back to the peer.
    fn release(&mut self, n: usize) -> io::Result<()> {
        self.recv
            .flow_control()
            .release_capacity(n)
            .map_err(h2_to_io)
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
                match ready!(self.recv.poll_data(cx)) {
                    Some(Ok(data)) if data.is_empty() => {}
                    Some(Ok(data)) => break data,
                    Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
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
        self.send
            .send_data(buf.split_to(n).freeze(), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }
}

impl fmt::Debug for HboneStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HboneStream")
            .field("stream_id", &self.send.stream_id())
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
            match ready!(this.recv.poll_data(cx)) {
                // DATA frames may be empty; loop rather than report a false EOF.
                Some(Ok(data)) => this.pending = data,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
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
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2's connection task writes queued frames out; there is nothing to flush here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            // Drop any reservation left: END_STREAM needs no window.
            this.send.reserve_capacity(0);
            this.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
            this.write_closed = true;
        }
        Poll::Ready(Ok(()))
    }
}
