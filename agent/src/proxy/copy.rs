//! Copies bytes both ways between two TCP streams, counting as it goes (so long-lived
//! connections show up in metrics before they close) and passing half-closes through.

use prometheus_client::metrics::counter::Counter;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

/// First buffer size per direction; small so idle connections stay cheap.
const INITIAL_BUFFER: usize = 16 * 1024;
/// Largest buffer a direction grows to while reads keep filling it (bulk transfers).
const MAX_BUFFER: usize = 256 * 1024;

/// Bytes moved in each direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transferred {
    /// Client to upstream.
    pub received: u64,
    /// Upstream to client.
    pub sent: u64,
}

/// Copies until both directions have seen end-of-stream, or either fails.
pub async fn bidirectional(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    received: &Counter,
    sent: &Counter,
) -> (Transferred, std::io::Result<()>) {
    let (client_r, client_w) = client.split();
    let (upstream_r, upstream_w) = upstream.split();
    halves(client_r, client_w, upstream_r, upstream_w, received, sent).await
}

/// Like [`bidirectional`], to any byte stream (an HBONE tunnel).
pub async fn bidirectional_stream<S>(
    client: &mut TcpStream,
    upstream: S,
    received: &Counter,
    sent: &Counter,
) -> (Transferred, std::io::Result<()>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (client_r, client_w) = client.split();
    let (upstream_r, upstream_w) = tokio::io::split(upstream);
    halves(client_r, client_w, upstream_r, upstream_w, received, sent).await
}

async fn halves<CR, CW, UR, UW>(
    mut client_r: CR,
    mut client_w: CW,
    mut upstream_r: UR,
    mut upstream_w: UW,
    received: &Counter,
    sent: &Counter,
) -> (Transferred, std::io::Result<()>)
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let mut moved = Transferred::default();
    let result = {
        let up = one_way(
            &mut client_r,
            &mut upstream_w,
            received,
            &mut moved.received,
        );
        let down = one_way(&mut upstream_r, &mut client_w, sent, &mut moved.sent);
        tokio::try_join!(up, down).map(|_| ())
    };
    // Totals are exact even when the copy fails part-way.
    (moved, result)
}

async fn one_way<R, W>(
    reader: &mut R,
    writer: &mut W,
    counter: &Counter,
    total: &mut u64,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; INITIAL_BUFFER];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            // Pass the half-close on; the other direction may still be sending.
            writer.shutdown().await?;
            return Ok(());
        }
        writer.write_all(&buf[..n]).await?;
        counter.inc_by(n as u64);
        *total += n as u64;
        if n == buf.len() && buf.len() < MAX_BUFFER {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

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
