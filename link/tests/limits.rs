//! Limits of the HBONE server, each exceeded by a peer while another is still served: the
//! connections per peer identity, the idle timeout, and the keepalive that closes a
//! connection whose peer stopped answering.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test on any error"
)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use weft_link::hbone::{ConnectRequest, ServerOptions};
use weft_link::identity::SpiffeId;

use support::{Ca, CountingSockets, DirectHandler, Server, VALID, client, id};

/// Far beyond every limit under test, so a test never waits on it.
const LONG: Duration = Duration::from_secs(3600);

async fn server(ca: &Ca, options: ServerOptions) -> Server {
    let cert = ca.issue(&id("server"), VALID);
    Server::start_with(ca, cert, DirectHandler::default(), None, options).await
}

/// Opens a tunnel to the echo server as `who`, on a connection of its own (a client per
/// call: a shared pool would reuse one connection), and checks that bytes come back.
async fn tunnel_as(
    ca: &Ca,
    server: &Server,
    echo: std::net::SocketAddr,
    who: &SpiffeId,
) -> Result<weft_link::hbone::HboneStream, String> {
    let tls = ca.client_tls(who, VALID);
    let hbone = client(&Arc::new(CountingSockets::default()));
    let req = ConnectRequest::new(server.addr, id("server"), echo);
    let mut tunnel = hbone
        .connect(&tls, req)
        .await
        .map_err(|e| weft_link::error_chain(&e))?;
    tunnel.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = [0; 4];
    tunnel
        .read_exact(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(&buf, b"ping");
    Ok(tunnel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_gets_at_most_its_connections_while_another_still_connects() {
    let ca = Ca::new("root");
    let options = ServerOptions {
        max_connections_per_peer: 2,
        ..Default::default()
    };
    let server = server(&ca, options).await;
    let echo = support::echo_server().await;

    let greedy = id("greedy");
    let first = tunnel_as(&ca, &server, echo, &greedy).await.unwrap();
    let _second = tunnel_as(&ca, &server, echo, &greedy).await.unwrap();
    // Refused right after the handshake (GOAWAY, ENHANCE_YOUR_CALM); the server logs why.
    tunnel_as(&ca, &server, echo, &greedy)
        .await
        .expect_err("a third connection of one identity must be refused");

    // Another identity is not affected.
    tunnel_as(&ca, &server, echo, &id("other")).await.unwrap();

    // A closed connection gives its place back (the client's pool keeps the connection
    // while it lives, so drop the whole client with the tunnel).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tunnel_as(&ca, &server, echo, &greedy).await {
            Ok(_) => break,
            Err(err) => {
                assert!(Instant::now() < deadline, "no place came back: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// An mTLS connection to `server` as `who` with a completed HTTP/2 handshake, driven in the
/// background; returns the request handle and the task that ends when the connection does.
async fn h2_connection(
    ca: &Ca,
    server: &Server,
    who: &SpiffeId,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tls = ca.client_tls(who, VALID);
    let config = tls.config_for(&[id("server")]).unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = ServerName::IpAddress(server.addr.ip().into());
    let stream = TlsConnector::from(config).connect(name, tcp).await.unwrap();
    let (send, conn) = h2::client::handshake(stream).await.unwrap();
    let task = tokio::spawn(conn);
    (send.ready().await.unwrap(), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_tunnels_is_closed_after_the_idle_timeout() {
    let ca = Ca::new("root");
    let idle_timeout = Duration::from_millis(300);
    let options = ServerOptions {
        idle_timeout,
        // PINGs answered every 100 ms must not count as activity.
        keepalive_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let server = server(&ca, options).await;
    let echo = support::echo_server().await;

    // A connection that never opens a tunnel is closed.
    let started = Instant::now();
    let (_send, idle) = h2_connection(&ca, &server, &id("idle")).await;
    tokio::time::timeout(Duration::from_secs(10), idle)
        .await
        .expect("the idle connection should be closed")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= idle_timeout);

    // A connection whose tunnel stays open for longer is not.
    let mut tunnel = tunnel_as(&ca, &server, echo, &id("busy")).await.unwrap();
    tokio::time::sleep(idle_timeout * 4).await;
    tunnel.write_all(b"still").await.unwrap();
    let mut buf = [0; 5];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_pings_is_cut_while_others_are_served() {
    let ca = Ca::new("root");
    let options = ServerOptions {
        idle_timeout: LONG,
        keepalive_interval: Duration::from_millis(100),
        // Generous, so a loaded machine never delays the answering peer's PONG past it.
        keepalive_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let server = server(&ca, options).await;
    let echo = support::echo_server().await;

    // A peer that speaks HTTP/2's preface and SETTINGS and then never reads: it answers no
    // PING (a vanished node looks the same to the server).
    let tls = ca.client_tls(&id("silent"), VALID);
    let config = tls.config_for(&[id("server")]).unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = ServerName::IpAddress(server.addr.ip().into());
    let mut silent = TlsConnector::from(config).connect(name, tcp).await.unwrap();
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    silent.flush().await.unwrap();

    // Meanwhile a peer that answers keeps its tunnel through many PING intervals.
    let mut tunnel = tunnel_as(&ca, &server, echo, &id("alive")).await.unwrap();

    // The silent peer is cut: reading what the server sent (SETTINGS, PINGs) ends.
    let started = Instant::now();
    let mut sink = vec![0; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match silent.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "a peer that answers no PING should be cut; still open after {:?}",
        started.elapsed()
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    tunnel.write_all(b"alive").await.unwrap();
    let mut buf = [0; 5];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"alive");
}

/// Whether the server closed `tcp` (EOF or reset) within `within`; a peer still waiting for
/// its handshake sees nothing.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0; 1];
    matches!(
        tokio::time::timeout(within, tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_beyond_the_limit_are_closed_at_once_while_tunnels_run_on() {
    let ca = Ca::new("root");
    let options = ServerOptions {
        max_pending_handshakes: 3,
        handshake_timeout: LONG,
        ..Default::default()
    };
    let server = server(&ca, options).await;
    let echo = support::echo_server().await;
    let mut tunnel = tunnel_as(&ca, &server, echo, &id("client")).await.unwrap();

    // Anonymous peers that connect and never say hello hold every handshake slot.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(TcpStream::connect(server.addr).await.unwrap());
    }
    for tcp in &mut stalled {
        assert!(
            !closed_within(tcp, Duration::from_millis(300)).await,
            "a handshake within the limit was cut"
        );
    }
    // One more is closed as soon as it is accepted, however long the handshake timeout.
    let mut over = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_within(&mut over, Duration::from_secs(5)).await,
        "a handshake beyond the limit was kept"
    );

    // The tunnel opened before the flood still carries bytes.
    tunnel.write_all(b"pong").await.unwrap();
    let mut buf = [0; 4];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");

    // Once the stalled peers go, their slots are free for honest clients again.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(err) = tunnel_as(&ca, &server, echo, &id("later")).await {
        assert!(
            Instant::now() < deadline,
            "no handshake slot came back: {err}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_does_not_hold_up_shutdown() {
    let ca = Ca::new("root");
    let options = ServerOptions {
        handshake_timeout: LONG,
        drain_timeout: LONG,
        ..Default::default()
    };
    let server = server(&ca, options).await;
    let _stalled = TcpStream::connect(server.addr).await.unwrap();
    // Let the server accept it before the shutdown starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("the drain waited for a peer that never finished its handshake");
}
