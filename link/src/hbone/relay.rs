//! Copying a tunnel to and from its upstream, with byte counts.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Copy buffer per direction. Larger than tokio's 8 KiB default so that one copy moves what
/// a 1 MiB HTTP/2 frame or a burst of TCP segments delivers in a few calls, not dozens.
const RELAY_BUFFER: usize = 64 * 1024;

/// What a finished relay moved, and how it ended.
#[derive(Debug, Default)]
pub struct RelayOutcome {
    /// Bytes read from `a` and written to `b`.
    pub a_to_b: u64,
    /// Bytes read from `b` and written to `a`.
    pub b_to_a: u64,
    /// Why the relay stopped early; `None` when both sides closed cleanly.
    pub error: Option<io::Error>,
}

/// Copies both ways until both directions are closed. EOF on one side shuts down the write
/// side of the other (END_STREAM <-> FIN), so half-closed connections work. Counts are kept
/// even when the relay fails, for logs and metrics.
pub async fn relay<A, B>(a: A, b: B) -> RelayOutcome
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a = Counted::new(a);
    let mut b = Counted::new(b);
    let result =
        tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, RELAY_BUFFER, RELAY_BUFFER).await;
    RelayOutcome {
        // Count what was delivered, not what was read: a failed write delivered nothing.
        a_to_b: b.written,
        b_to_a: a.written,
        error: result.err(),
    }
}

/// Counts bytes written through it.
struct Counted<T> {
    inner: T,
    written: u64,
}

impl<T> Counted<T> {
    fn new(inner: T) -> Self {
        Self { inner, written: 0 }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.written += n as u64;
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn counts_both_ways_and_passes_half_close() {
        let (a, mut a_peer) = tokio::io::duplex(1024);
        let (b, mut b_peer) = tokio::io::duplex(1024);
        let task = tokio::spawn(relay(a, b));
        a_peer.write_all(b"hello").await.unwrap();
        a_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        b_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        // b's side is still open after a's half-close.
        b_peer.write_all(b"back!!").await.unwrap();
        b_peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        a_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"back!!");
        let outcome = task.await.unwrap();
        assert_eq!((outcome.a_to_b, outcome.b_to_a), (5, 6));
        assert!(outcome.error.is_none());
    }
}
