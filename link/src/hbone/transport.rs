//! The byte stream under an HBONE connection's HTTP/2: TLS behind a write buffer that only the
//! connection's driver empties.
//!
//! h2 hands every DATA frame of 256 bytes or more to its transport as a write of its own and
//! flushes before the next one, and TLS makes every write a record and a system call. Fifty
//! tunnels answering at once would cost fifty `writev`s. Here h2's writes and flushes only
//! fill a buffer; the task that drives the connection calls [`Flusher::poll_flush`] after each
//! poll of h2, so everything h2 produced in that poll leaves in one TLS write. Frames as large
//! as the buffer pass straight through (after what is already buffered).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What one driver poll may gather before writes wait for the buffer to drain.
const WRITE_BUFFER: usize = 64 * 1024;

/// The transport h2 owns. Reads go straight through.
pub(crate) struct Transport<T> {
    shared: Arc<Mutex<Buffered<T>>>,
}

/// The driver's handle: writes out what h2 left in the buffer.
pub(crate) struct Flusher<T> {
    shared: Arc<Mutex<Buffered<T>>>,
}

struct Buffered<T> {
    io: T,
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    written: usize,
}

/// Wraps `io`; h2 gets the transport, the task driving h2 keeps the flusher.
pub(crate) fn buffered<T>(io: T) -> (Transport<T>, Flusher<T>) {
    let shared = Arc::new(Mutex::new(Buffered {
        io,
        buf: Vec::new(),
        written: 0,
    }));
    (
        Transport {
            shared: shared.clone(),
        },
        Flusher { shared },
    )
}

impl<T: AsyncWrite + Unpin> Buffered<T> {
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_out(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_write_slices(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum::<usize>();
        if self.buf.len() + len > WRITE_BUFFER {
            ready!(self.poll_write_out(cx))?;
        }
        if len >= WRITE_BUFFER {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(WRITE_BUFFER);
        }
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }
}

impl<T: AsyncWrite + Unpin> Flusher<T> {
    /// Writes out everything h2 has written so far. Pending while the socket is full, with
    /// the caller woken when it drains.
    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.lock().poll_flush(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Transport<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.shared.lock().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Transport<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.shared
            .lock()
            .poll_write_slices(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.shared.lock().poll_write_slices(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Left to the driver: see the module documentation.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = self.shared.lock();
        ready!(shared.poll_flush(cx))?;
        Pin::new(&mut shared.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_wait_for_the_driver_and_large_ones_keep_their_order() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let (mut transport, flusher) = buffered(near);
        transport.write_all(b"small one, ").await.unwrap();
        transport.flush().await.unwrap();
        let mut probe = [0u8; 1];
        let nothing =
            tokio::time::timeout(std::time::Duration::from_millis(20), far.read(&mut probe)).await;
        assert!(nothing.is_err(), "h2's own flush writes nothing out");

        poll_fn(|cx| flusher.poll_flush(cx)).await.unwrap();
        let mut got = vec![0u8; 11];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"small one, ");

        // Buffered bytes go before a write too large to buffer.
        let large = vec![9u8; WRITE_BUFFER + 1];
        transport.write_all(b"head").await.unwrap();
        transport.write_all(&large).await.unwrap();
        poll_fn(|cx| flusher.poll_flush(cx)).await.unwrap();
        let mut got = vec![0u8; 4 + large.len()];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..4], b"head");
        assert_eq!(&got[4..], &large[..]);

        // Shutting down writes out what is left, then ends the stream.
        transport.write_all(b"tail").await.unwrap();
        transport.shutdown().await.unwrap();
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"tail");
    }
}
