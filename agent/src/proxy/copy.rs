//! Copies bytes both ways between a captured client and its destination, counting into the
//! connection's metrics as it goes (so long-lived connections show up before they close).
//! The copy itself is [`weft_link::copy`]: one task, unzeroed buffers, half-closes passed on.

use prometheus_client::metrics::counter::Counter;
use weft_link::copy::Endpoint;

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transferred {
    /// Client to upstream.
    pub received: u64,
    /// Upstream to client.
    pub sent: u64,
}

/// Copies until both directions have seen end-of-stream, or either fails. `received`
/// counts client-to-upstream bytes, `sent` the other way.
pub async fn bidirectional<C, U>(
    client: &mut C,
    upstream: &mut U,
    received: &Counter,
    sent: &Counter,
) -> (Transferred, std::io::Result<()>)
where
    C: Endpoint + ?Sized,
    U: Endpoint + ?Sized,
{
    let outcome = weft_link::copy::bidirectional(
        client,
        upstream,
        |n| {
            received.inc_by(n);
        },
        |n| {
            sent.inc_by(n);
        },
    )
    .await;
    let moved = Transferred {
        received: outcome.a_to_b,
        sent: outcome.b_to_a,
    };
    (moved, outcome.error.map_or(Ok(()), Err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair of loopback streams.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn copies_both_ways_counts_exactly_and_passes_half_close_on() {
        // client <-> (agent_client | agent_upstream) <-> server
        let (mut client, mut agent_client) = pair().await;
        let (mut agent_upstream, mut server) = pair().await;
        let received = Counter::default();
        let sent = Counter::default();
        let proxy = tokio::spawn({
            let (received, sent) = (received.clone(), sent.clone());
            async move { bidirectional(&mut agent_client, &mut agent_upstream, &received, &sent).await }
        });

        let request = vec![7u8; 300_000];
        client.write_all(&request).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, request, "server gets every byte, then EOF");

        // The other direction still works after the client's half-close.
        server.write_all(b"response").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"response");

        let (moved, result) = proxy.await.unwrap();
        result.unwrap();
        assert_eq!((moved.received, moved.sent), (300_000, 8));
        assert_eq!((received.get(), sent.get()), (300_000, 8));
    }
}
