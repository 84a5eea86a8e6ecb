//! The client side of a tunnel to a service endpoint that may still be retried elsewhere.
//!
//! A tunnel opened optimistically is returned before the destination's agent has answered,
//! so an endpoint whose server is gone shows up as a refusal on the tunnel's first read,
//! after the copy has begun. Until the tunnel has written anything to the client, the
//! connection can still go to another endpoint as if nothing happened, provided the bytes
//! the client sent so far are sent again: this wrapper keeps them (bounded), and says
//! whether a retry is still possible.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// The most client bytes kept for a retry: a request's head, not an upload. Beyond it the
/// connection is no longer retried.
pub const REPLAY_MAX: usize = 64 * 1024;

/// A client stream that keeps what it reads until its peer answers.
pub struct Replayable<'a, F: FnMut()> {
    inner: &'a mut TcpStream,
    /// What the client sent so far (including what went with the CONNECT).
    kept: BytesMut,
    /// Whether a retry is off: the client was answered, closed its side, or sent too much.
    spent: bool,
    /// Called once, when the first answer reaches the client (the endpoint works).
    on_answer: Option<F>,
}

impl<'a, F: FnMut()> Replayable<'a, F> {
    /// `sent` is what the tunnel already carries (its early data).
    pub fn new(inner: &'a mut TcpStream, sent: &Bytes, on_answer: F) -> Self {
        Replayable {
            inner,
            kept: BytesMut::from(&sent[..]),
            spent: false,
            on_answer: Some(on_answer),
        }
    }

    /// The bytes to send to another endpoint, if the connection may still go to one.
    pub fn into_replay(self) -> Option<Bytes> {
        (!self.spent).then(|| self.kept.freeze())
    }

    fn spend(&mut self) {
        self.spent = true;
        self.kept = BytesMut::new();
    }
}

impl<F: FnMut() + Unpin> AsyncRead for Replayable<'_, F> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut *this.inner).poll_read(cx, buf))?;
        if !this.spent {
            let new = &buf.filled()[before..];
            // End of stream: a retry could not pass the half-close on.
            if new.is_empty() || this.kept.len() + new.len() > REPLAY_MAX {
                this.spend();
            } else {
                this.kept.extend_from_slice(new);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<F: FnMut() + Unpin> AsyncWrite for Replayable<'_, F> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut *this.inner).poll_write(cx, buf))?;
        if n > 0 && !this.spent {
            this.spend();
            if let Some(mut answered) = this.on_answer.take() {
                answered();
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // An end of stream from the tunnel is an answer too (the endpoint closed cleanly).
        if let Some(mut answered) = this.on_answer.take() {
            answered();
        }
        this.spend();
        Pin::new(&mut *this.inner).poll_shutdown(cx)
    }
}

impl<F: FnMut() + Unpin> weft_link::copy::Endpoint for Replayable<'_, F> {
    fn abort(&mut self) {
        weft_link::copy::Endpoint::abort(self.inner);
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn keeps_what_the_client_sent_until_it_is_answered() {
        let (mut app, mut agent_side) = pair().await;
        let mut answers = 0;
        let mut r = Replayable::new(&mut agent_side, &Bytes::from_static(b"GET "), || {
            answers += 1
        });
        app.write_all(b"/ HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = r.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"/ HTTP/1.1\r\n");
        assert_eq!(
            r.into_replay().unwrap(),
            Bytes::from_static(b"GET / HTTP/1.1\r\n")
        );

        let mut r = Replayable::new(&mut agent_side, &Bytes::new(), || answers += 1);
        r.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert!(r.into_replay().is_none(), "answered: no retry");
        assert_eq!(answers, 1);
    }

    #[tokio::test]
    async fn too_much_or_a_half_close_ends_the_chance_of_a_retry() {
        let (mut app, mut agent_side) = pair().await;
        let mut r = Replayable::new(&mut agent_side, &Bytes::new(), || {});
        let big = vec![7u8; REPLAY_MAX + 1];
        let writer = tokio::spawn(async move {
            app.write_all(&big).await.unwrap();
            app.shutdown().await.unwrap();
            app
        });
        let mut sink = Vec::new();
        r.read_to_end(&mut sink).await.unwrap();
        assert_eq!(sink.len(), REPLAY_MAX + 1);
        assert!(r.into_replay().is_none());
        drop(writer.await.unwrap());
    }
}
