//! Copying bytes both ways between two streams in one task, with byte counts, passing
//! half-closes on (EOF on one side shuts down the write side of the other: FIN <->
//! END_STREAM).
//!
//! Buffers are never zeroed (reads go into spare capacity) and start small, so a short
//! connection costs two 16 KiB allocations; a direction whose reads keep filling its buffer
//! doubles it, up to 256 KiB, for bulk transfers. A direction with nothing to read and
//! nothing left to write gives its buffer back, and one whose reads no longer fill a quarter
//! of it halves the next size: an idle connection holds no buffer, whatever burst it carried.
//!
//! A copy that fails resets both sides ([`Endpoint::abort`]): an upstream's reset reaches the
//! client as a reset, never as the clean close that makes a truncated stream look complete
//! (RFC 9113 §8.5 asks the same of a CONNECT proxy: TCP RST <-> RST_STREAM CONNECT_ERROR).
//!
//! An HBONE tunnel holds its bytes in owned buffers (h2 DATA frames), so the copy hands them
//! over instead of copying them: a frame received from a tunnel is written to the socket
//! straight from h2's buffer, and bytes read from a socket become a DATA frame without a
//! second copy ([`Endpoint`]). Each saves one pass over every byte in user space.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

/// First buffer size per direction.
const INITIAL_BUFFER: usize = 16 * 1024;
/// Largest buffer a direction grows to.
const MAX_BUFFER: usize = 256 * 1024;

/// A stream [`bidirectional`] copies through. The provided methods read and write through
/// `AsyncRead` and `AsyncWrite`, as for any socket; a stream that keeps its bytes in owned
/// buffers overrides them so that the bytes change hands without a copy.
pub trait Endpoint: AsyncRead + AsyncWrite + Unpin {
    /// Whether reads come as owned chunks from [`Endpoint::poll_read_chunk`].
    fn reads_chunks(&self) -> bool {
        false
    }

    /// The next chunk received, `None` at end of stream. Called only when
    /// [`Endpoint::reads_chunks`] says so.
    fn poll_read_chunk(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        Poll::Ready(Err(io::Error::other(
            "this stream is read through AsyncRead, not in chunks",
        )))
    }

    /// Writes bytes from the front of `buf` and removes them from it; how many.
    fn poll_write_from(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut *self).poll_write(cx, buf))?;
        buf.advance(n);
        Poll::Ready(Ok(n))
    }

    /// Ends the stream with a reset rather than a close when it is dropped or finished: the
    /// copy calls it on both sides when either fails. The default does nothing (a pipe has no
    /// reset).
    fn abort(&mut self) {}
}

impl Endpoint for tokio::net::TcpStream {
    /// SO_LINGER 0: the close that follows sends RST and frees the socket at once.
    fn abort(&mut self) {
        if let Err(err) = socket2::SockRef::from(&*self).set_linger(Some(std::time::Duration::ZERO))
        {
            tracing::debug!(%err, "setting SO_LINGER 0 to reset a connection failed");
        }
    }
}
impl Endpoint for tokio::io::DuplexStream {}

/// What a finished copy moved, and how it ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Bytes read from `a` and delivered to `b`.
    pub a_to_b: u64,
    /// Bytes read from `b` and delivered to `a`.
    pub b_to_a: u64,
    /// Why the copy stopped early; `None` when both sides closed cleanly.
    pub error: Option<io::Error>,
}

/// Copies until both directions have seen end-of-stream, or either fails; a failure aborts
/// both sides, so each peer sees a reset. `on_a_to_b` and `on_b_to_a` are told of every
/// delivered chunk (live metrics). Counts are of bytes delivered, not read, and are exact
/// even when the copy fails part-way.
pub async fn bidirectional<A, B>(
    a: &mut A,
    b: &mut B,
    mut on_a_to_b: impl FnMut(u64),
    mut on_b_to_a: impl FnMut(u64),
) -> Outcome
where
    A: Endpoint + ?Sized,
    B: Endpoint + ?Sized,
{
    let mut up = OneWay::new();
    let mut down = OneWay::new();
    let result = poll_fn(|cx| {
        let up_done = up.poll(cx, &mut *a, &mut *b, &mut on_a_to_b)?.is_ready();
        let down_done = down.poll(cx, &mut *b, &mut *a, &mut on_b_to_a)?.is_ready();
        if up_done && down_done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await;
    if result.is_err() {
        a.abort();
        b.abort();
    }
    Outcome {
        a_to_b: up.delivered,
        b_to_a: down.delivered,
        error: result.err(),
    }
}

/// One direction's state.
struct OneWay {
    /// Read from a byte stream and not yet written.
    buf: BytesMut,
    /// Taken from a chunked reader and not yet written.
    chunk: Bytes,
    /// The next buffer's size (doubles while reads fill the current one, halves while they
    /// fill less than a quarter of it).
    next_capacity: usize,
    read_eof: bool,
    done: bool,
    delivered: u64,
}

impl OneWay {
    fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            chunk: Bytes::new(),
            next_capacity: INITIAL_BUFFER,
            read_eof: false,
            done: false,
            delivered: 0,
        }
    }

    fn count(&mut self, n: usize, on_delivered: &mut impl FnMut(u64)) -> io::Result<()> {
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.delivered += n as u64;
        on_delivered(n as u64);
        Ok(())
    }

    /// Ready when this direction is finished: EOF read, everything written, and the
    /// writer shut down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        on_delivered: &mut impl FnMut(u64),
    ) -> Poll<io::Result<()>>
    where
        R: Endpoint + ?Sized,
        W: Endpoint + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while !self.chunk.is_empty() {
                let n = ready!(Pin::new(&mut *writer).poll_write(cx, &self.chunk))?;
                self.count(n, on_delivered)?;
                self.chunk.advance(n);
            }
            while !self.buf.is_empty() {
                let n = ready!(writer.poll_write_from(cx, &mut self.buf))?;
                self.count(n, on_delivered)?;
            }
            if self.read_eof {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let read = if reader.reads_chunks() {
                reader.poll_read_chunk(cx).map_ok(|chunk| match chunk {
                    Some(chunk) => {
                        self.chunk = chunk;
                        false
                    }
                    None => true,
                })
            } else {
                // Empty here: takes back the written part of the buffer, or allocates anew
                // when a tunnel still holds a frame made from it.
                self.buf.reserve(self.next_capacity);
                let capacity = self.buf.capacity();
                tokio_util::io::poll_read_buf(Pin::new(&mut *reader), cx, &mut self.buf).map_ok(
                    |n| {
                        self.next_capacity = next_capacity(capacity, n);
                        n == 0
                    },
                )
            };
            match read {
                Poll::Ready(Ok(eof)) => self.read_eof = eof,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {
                    // Nothing to read and (the loop above) nothing left to write: an idle
                    // direction keeps no buffer. The next read allocates `next_capacity`.
                    self.buf = BytesMut::new();
                    // Nothing more to send for now: push out what the writer holds.
                    ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    return Poll::Pending;
                }
            }
        }
    }
}

/// The buffer size after a read of `n` bytes into `capacity`: double when the read filled
/// it, half when it used less than a quarter, within [`INITIAL_BUFFER`, `MAX_BUFFER`].
fn next_capacity(capacity: usize, n: usize) -> usize {
    if n >= capacity {
        (capacity * 2).clamp(INITIAL_BUFFER, MAX_BUFFER)
    } else if n < capacity / 4 {
        (capacity / 2).clamp(INITIAL_BUFFER, MAX_BUFFER)
    } else {
        capacity.clamp(INITIAL_BUFFER, MAX_BUFFER)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn copies_both_ways_counts_exactly_and_passes_half_close_on() {
        // client <-> (a | b) <-> server, through in-memory pipes smaller than the data.
        let (mut a, mut client) = tokio::io::duplex(4096);
        let (mut b, mut server) = tokio::io::duplex(4096);
        let mut live = (0u64, 0u64);
        let copy = tokio::spawn(async move {
            let outcome = bidirectional(&mut a, &mut b, |n| live.0 += n, |n| live.1 += n).await;
            (outcome, live)
        });

        // Larger than MAX_BUFFER, so the buffer grows on the way.
        let request: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let sent = request.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert!(
            got == request,
            "the server gets every byte in order, then EOF"
        );

        // The other direction still works after the client's half-close.
        server.write_all(b"response").await.unwrap();
        server.shutdown().await.unwrap();
        let mut client = writer.await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"response");

        let (outcome, live) = copy.await.unwrap();
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        assert_eq!((outcome.a_to_b, outcome.b_to_a), (600_000, 8));
        assert_eq!(live, (600_000, 8), "every delivered chunk is reported");
    }

    #[tokio::test]
    async fn a_failed_side_ends_the_copy_with_its_error_and_the_counts_so_far() {
        let (mut a, mut client) = tokio::io::duplex(64);
        let (mut b, server) = tokio::io::duplex(64);
        client.write_all(b"early").await.unwrap();
        // The server is gone: writing to it fails.
        drop(server);
        let outcome = bidirectional(&mut a, &mut b, |_| {}, |_| {}).await;
        assert!(outcome.error.is_some(), "a write to a closed pipe fails");
        assert_eq!(outcome.a_to_b, 0, "nothing was delivered");
    }

    /// A connected pair of loopback sockets.
    async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// Reads to the end: the bytes, or the error that ended the stream.
    async fn read_until_end(stream: &mut tokio::net::TcpStream) -> io::Result<Vec<u8>> {
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.map(|_| got)
    }

    #[tokio::test]
    async fn an_upstream_reset_reaches_the_client_as_a_reset_and_the_other_way_round() {
        for upstream_resets in [true, false] {
            // client <-> (a | b) <-> server
            let (mut client, mut a) = tcp_pair().await;
            let (mut b, mut server) = tcp_pair().await;
            let copy =
                tokio::spawn(async move { bidirectional(&mut a, &mut b, |_| {}, |_| {}).await });
            client.write_all(b"request").await.unwrap();
            let mut request = [0u8; 7];
            server.read_exact(&mut request).await.unwrap();
            // The side that resets: SO_LINGER 0, then close.
            let (resetting, mut other) = if upstream_resets {
                (server, client)
            } else {
                (client, server)
            };
            socket2::SockRef::from(&resetting)
                .set_linger(Some(std::time::Duration::ZERO))
                .unwrap();
            drop(resetting);
            let outcome = copy.await.unwrap();
            assert!(outcome.error.is_some(), "the copy reports the reset");
            let end = read_until_end(&mut other).await;
            let err = end.expect_err("the other side saw a clean close, not a reset");
            assert_eq!(
                err.kind(),
                io::ErrorKind::ConnectionReset,
                "upstream_resets={upstream_resets}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn a_clean_close_stays_a_clean_close() {
        let (mut client, mut a) = tcp_pair().await;
        let (mut b, mut server) = tcp_pair().await;
        let copy = tokio::spawn(async move { bidirectional(&mut a, &mut b, |_| {}, |_| {}).await });
        server.write_all(b"whole answer").await.unwrap();
        server.shutdown().await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_until_end(&mut client).await.unwrap(), b"whole answer");
        assert!(copy.await.unwrap().error.is_none());
    }

    #[tokio::test]
    async fn buffers_grow_for_a_burst_and_shrink_back_after_it() {
        const BURST: usize = 1 << 20;
        // reader_peer -> reader | OneWay | writer -> writer_peer, pipes that hold the burst.
        let (mut reader_peer, mut reader) = tokio::io::duplex(BURST);
        let (mut writer, mut writer_peer) = tokio::io::duplex(BURST);
        let mut way = OneWay::new();
        let mut step = async |way: &mut OneWay| {
            poll_fn(|cx| {
                let polled = way.poll(cx, &mut reader, &mut writer, &mut |_| {});
                Poll::Ready(polled.is_pending())
            })
            .await
        };

        reader_peer.write_all(&vec![7u8; BURST]).await.unwrap();
        assert!(step(&mut way).await, "the copy waits for more");
        assert_eq!(way.delivered, BURST as u64);
        assert!(
            way.next_capacity >= MAX_BUFFER / 2,
            "the burst grew the buffer: {}",
            way.next_capacity
        );
        assert_eq!(way.buf.capacity(), 0, "an idle direction holds no buffer");
        let mut sink = vec![0u8; BURST];
        writer_peer.read_exact(&mut sink).await.unwrap();

        // Small messages after the burst: each read fills a sliver of the buffer.
        for _ in 0..8 {
            reader_peer.write_all(b"ping").await.unwrap();
            assert!(step(&mut way).await);
            assert_eq!(way.buf.capacity(), 0);
            let mut ping = [0u8; 4];
            writer_peer.read_exact(&mut ping).await.unwrap();
        }
        assert_eq!(
            way.next_capacity, INITIAL_BUFFER,
            "the buffer shrank back to its initial size"
        );
    }
}
