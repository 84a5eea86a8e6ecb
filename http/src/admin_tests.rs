//! The admin, metrics and readiness connections' limits, on a real loopback listener: each
//! is exceeded by one client while another is still served.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// Far beyond every limit under test, so a test never waits on it.
const LONG: Duration = Duration::from_secs(3600);
/// How long a test waits for the server to close a connection before it fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// Serves `body` on every request of every endpoint within the timeouts, on loopback ports;
/// the admin endpoint's address.
fn server(header_timeout: Duration, idle_timeout: Duration, body: Bytes) -> SocketAddr {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let endpoints = Endpoints::bind(any, any, any, "test").unwrap();
    let addr = endpoints.listeners[0].0.local_addr().unwrap();
    endpoints.spawn(header_timeout, idle_timeout, move |_, _| {
        Response::new(server::full(body.clone()))
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
    let addr = server(
        Duration::from_millis(300),
        LONG,
        Bytes::from_static(b"served"),
    );

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
    // Far more than loopback's socket buffers hold, so the server's writes stall.
    let big = Bytes::from(vec![b'x'; 64 * 1024 * 1024]);
    // The idle timeout is long enough that the reading client below is never starved past it.
    let addr = server(LONG, Duration::from_secs(1), big.clone());

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

#[tokio::test]
async fn a_port_in_use_is_named_with_the_endpoint_and_the_hint() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let err = Endpoints::bind(any, addr, any, "is another one running?")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "cannot listen on {addr} for the metrics endpoint: "
        )) && err.ends_with("(is another one running?)"),
        "{err}"
    );
}
