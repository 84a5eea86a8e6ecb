//! Copying bytes both ways between two streams in one task, with byte counts, passing
//! half-closes on (EOF on one side shuts down the write side of the other: FIN <->
//! END_STREAM).
//!
//! Buffers are never zeroed (reads go into spare capacity) and start small, so a short
//! connection costs two 16 KiB allocations; a direction whose reads keep filling its buffer
//! doubles it, up to 256 KiB, for bulk transfers.
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
}

impl Endpoint for tokio::net::TcpStream {}
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

/// Copies until both directions have seen end-of-stream, or either fails. `on_a_to_b` and
/// `on_b_to_a` are told of every delivered chunk (live metrics). Counts are of bytes
/// delivered, not read, and are exact even when the copy fails part-way.
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
    /// The next buffer's size (doubles while reads fill the current one).
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
                        if n >= capacity && capacity < MAX_BUFFER {
                            self.next_capacity = (capacity * 2).min(MAX_BUFFER);
                        }
                        n == 0
                    },
                )
            };
            match read {
                Poll::Ready(Ok(eof)) => self.read_eof = eof,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => {
                    // Nothing more to send for now: push out what the writer holds.
                    ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    return Poll::Pending;
                }
            }
        }
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
}
