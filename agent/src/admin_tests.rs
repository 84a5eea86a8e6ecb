//! The admin, metrics and readiness connections' limits, on a real loopback listener: each
//! is exceeded by one client while another is still served.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// Far beyond every limit under test, so a test never waits on it.
const LONG: Duration = Duration::from_secs(3600);
/// How long a test waits for the server to close a connection before it fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// Serves `body` on every request within `limits`, on a loopback port.
async fn server(limits: HttpLimits, body: Bytes) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            let service = service_fn(move |_req| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            tokio::spawn(serve_connection(stream, limits, service));
        }
    });
    addr
}

/// A whole request and response on a new connection.
async fn get(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

/// Reads `r` until the server closes it; the bytes read, or `None` if still open after
/// [`PATIENCE`].
async fn read_until_closed(r: &mut (impl AsyncRead + Unpin)) -> Option<usize> {
    let mut buf = vec![0; 64 * 1024];
    let mut total = 0;
    tokio::time::timeout(PATIENCE, async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_while_others_are_served() {
    let limits = HttpLimits {
        header_timeout: Duration::from_millis(300),
        idle_timeout: LONG,
    };
    let addr = server(limits, Bytes::from_static(b"served")).await;

    // Slowloris: one more byte of a header value every 50 ms, never the end of the headers.
    // It is never idle, and stays far below the header count and size limits, so only the
    // header timeout can cut it.
    let slow = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = slow.into_split();
    let trickle = tokio::spawn(async move {
        let mut sent = w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
        while sent.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            sent = w.write_all(b"s").await;
        }
    });
    assert!(get(addr).await.ends_with("served"));
    assert!(
        read_until_closed(&mut r).await.is_some(),
        "a client still sending headers after the header timeout should be cut"
    );
    trickle.abort();
    assert!(get(addr).await.ends_with("served"));
}

#[tokio::test]
async fn silent_clients_and_ones_that_stop_reading_are_cut_after_the_idle_timeout() {
    let limits = HttpLimits {
        header_timeout: LONG,
        // Long enough that the reading client below is never starved past it.
        idle_timeout: Duration::from_secs(1),
    };
    // Far more than loopback's socket buffers hold, so the server's writes stall.
    let big = Bytes::from(vec![b'x'; 64 * 1024 * 1024]);
    let addr = server(limits, big.clone()).await;

    // Connects and sends nothing.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(
        read_until_closed(&mut silent).await.is_some(),
        "a silent connection should be cut after the idle timeout"
    );

    // Asks for the large response and does not read it.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // What the sockets buffered arrives, then the end: the server stopped writing.
    let read = read_until_closed(&mut stalled)
        .await
        .expect("a client that stopped reading should be cut");
    assert!(
        read < big.len(),
        "the whole response arrived ({read} bytes): the stalled connection was not cut"
    );

    // A client that reads gets all of it meanwhile.
    let mut reader = TcpStream::connect(addr).await.unwrap();
    reader
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let read = read_until_closed(&mut reader).await.unwrap();
    assert!(read > big.len(), "{read} bytes");
}
