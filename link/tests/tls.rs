//! Who may talk to whom: the SPIFFE verifiers, rotation and hostile input, through real
//! HBONE handshakes on loopback.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test on any error"
)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use weft_link::hbone::{ConnectRequest, HboneError, ServerOptions};
use weft_link::tls::{CertResolver, Certificate, ClientTls, PeerPolicy, TlsError};

use support::{Ca, CountingSockets, DenyList, DirectHandler, EXPIRED, Server, VALID, client, id};

/// Opens a tunnel to an echo server and checks one round trip.
async fn works(tls: &ClientTls, server: &Server) {
    let echo = support::echo_server().await;
    let hbone = client(&Arc::new(CountingSockets::default()));
    let mut tunnel = hbone
        .connect(tls, ConnectRequest::new(server.addr, id("server"), echo))
        .await
        .unwrap();
    tunnel.write_all(b"ok").await.unwrap();
    let mut buf = [0; 2];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ok");
}

async fn refused(tls: &ClientTls, server: &Server) -> HboneError {
    let echo = support::echo_server().await;
    let hbone = client(&Arc::new(CountingSockets::default()));
    hbone
        .connect(tls, ConnectRequest::new(server.addr, id("server"), echo))
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_from_another_ca_is_refused() {
    let ca = Ca::new("root");
    let server = Server::start(&ca, &id("server")).await;
    // The client trusts the server's CA, but its own certificate comes from elsewhere.
    let rogue = Ca::new("rogue");
    let cert = rogue.issue(&id("client"), VALID);
    let tls = ClientTls::new(Arc::new(CertResolver::new(cert)), ca.bundle());
    let err = refused(&tls, &server).await;
    assert!(matches!(err, HboneError::H2 { .. }), "{err}");
    assert!(err.to_string().contains("refused this client"), "{err}");
    works(&ca.client_tls(&id("client"), VALID), &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_from_another_ca_is_refused() {
    let ca = Ca::new("root");
    let rogue = Ca::new("rogue");
    let server = Server::start(&rogue, &id("server")).await;
    let err = refused(&ca.client_tls(&id("client"), VALID), &server).await;
    assert!(
        err.to_string()
            .contains("certificate signed by an unknown CA"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificates_are_refused() {
    let ca = Ca::new("root");
    let server = Server::start(&ca, &id("server")).await;
    let err = refused(&ca.client_tls(&id("client"), EXPIRED), &server).await;
    assert!(err.to_string().contains("refused this client"), "{err}");

    let cert = ca.issue(&id("server"), EXPIRED);
    let stale = Server::start_with(
        &ca,
        cert,
        DirectHandler::default(),
        None,
        Default::default(),
    )
    .await;
    let err = refused(&ca.client_tls(&id("client"), VALID), &stale).await;
    assert!(
        err.to_string()
            .contains("certificate expired at 2021-01-01T00:00:00Z"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_with_another_identity_is_refused() {
    let ca = Ca::new("root");
    let server = Server::start(&ca, &id("impostor")).await;
    let err = refused(&ca.client_tls(&id("client"), VALID), &server).await;
    let want = "peer is spiffe://cluster.local/ns/default/sa/impostor, \
                expected spiffe://cluster.local/ns/default/sa/server";
    assert!(err.to_string().contains(want), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_policy_refuses_a_peer() {
    let ca = Ca::new("root");
    let policy: Arc<dyn PeerPolicy> = Arc::new(DenyList(vec!["intruder".into()]));
    let cert = ca.issue(&id("server"), VALID);
    let server = Server::start_with(
        &ca,
        cert,
        DirectHandler::default(),
        Some(policy),
        Default::default(),
    )
    .await;
    let err = refused(&ca.client_tls(&id("intruder"), VALID), &server).await;
    assert!(err.to_string().contains("refused this client"), "{err}");
    assert!(server.handler.requests.lock().is_empty());
    works(&ca.client_tls(&id("client"), VALID), &server).await;
}

#[test]
fn certificates_must_be_svids() {
    let ca = Ca::new("root");
    let load = |uri: &str| {
        let (chain, key) = ca.issue_pem(uri, VALID);
        Certificate::from_pem(chain.as_bytes(), key.as_bytes())
    };
    let err = load("https://example.com/").unwrap_err();
    assert!(matches!(err, TlsError::NotSvid { .. }), "{err}");
    let err = load("spiffe://cluster.local/workload").unwrap_err();
    assert!(
        err.to_string()
            .contains("/ns/<namespace>/sa/<service-account>"),
        "{err}"
    );

    // A key that is not the certificate's.
    let (chain, _) = ca.issue_pem(id("a").as_str(), VALID);
    let (_, other_key) = ca.issue_pem(id("a").as_str(), VALID);
    let err = Certificate::from_pem(chain.as_bytes(), other_key.as_bytes()).unwrap_err();
    assert!(matches!(err, TlsError::Key { .. }), "{err}");

    // Rotation keeps the identity.
    let resolver = CertResolver::new(ca.issue(&id("a"), VALID));
    let err = resolver.rotate(ca.issue(&id("b"), VALID)).unwrap_err();
    assert!(matches!(err, TlsError::IdentityChanged { .. }), "{err}");
}

/// The leaf certificate a fresh handshake with `server` presents.
async fn presented_leaf(ca: &Ca, server: &Server) -> Vec<u8> {
    let config = ca
        .client_tls(&id("client"), VALID)
        .config_for(&[id("server")])
        .unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = ServerName::IpAddress(server.addr.ip().into());
    let tls = TlsConnector::from(config).connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_reaches_new_connections_and_spares_old_ones() {
    let ca = Ca::new("root");
    let server = Server::start(&ca, &id("server")).await;
    let echo = support::echo_server().await;
    let tls = ca.client_tls(&id("client"), VALID);
    let hbone = client(&Arc::new(CountingSockets::default()));
    let mut tunnel = hbone
        .connect(&tls, ConnectRequest::new(server.addr, id("server"), echo))
        .await
        .unwrap();
    let old = presented_leaf(&ca, &server).await;
    assert_eq!(old, server.cert.current().chain()[0].to_vec());

    server.cert.rotate(ca.issue(&id("server"), VALID)).unwrap();
    let new = presented_leaf(&ca, &server).await;
    assert_ne!(new, old, "a new handshake must see the rotated certificate");
    assert_eq!(new, server.cert.current().chain()[0].to_vec());

    tunnel.write_all(b"still here").await.unwrap();
    let mut buf = [0; 10];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_hellos_do_not_hurt_the_server() {
    let ca = Ca::new("root");
    let options = ServerOptions {
        handshake_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let cert = ca.issue(&id("server"), VALID);
    let server = Server::start_with(&ca, cert, DirectHandler::default(), None, options).await;

    // Not TLS at all: the server closes the connection.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_closed(&mut tcp).await;

    // Half a ClientHello, then the client hangs up.
    let hello = client_hello(&ca);
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&hello[..hello.len() / 2]).await.unwrap();
    tcp.shutdown().await.unwrap();
    assert_closed(&mut tcp).await;

    // Half a ClientHello, then silence: the handshake timeout closes it.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&hello[..hello.len() / 2]).await.unwrap();
    assert_closed(&mut tcp).await;

    // Connected, never a byte.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    assert_closed(&mut tcp).await;

    works(&ca.client_tls(&id("client"), VALID), &server).await;
}

/// The first flight of a real client, as bytes.
fn client_hello(ca: &Ca) -> Vec<u8> {
    let config = ca
        .client_tls(&id("client"), VALID)
        .config_for(&[id("server")])
        .unwrap();
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    assert!(out.len() > 100, "a ClientHello is a few hundred bytes");
    out
}

/// The server closes `tcp` (EOF or reset) within a few seconds.
async fn assert_closed(tcp: &mut TcpStream) {
    let mut buf = vec![0; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => panic!("the server kept the connection open"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            // An alert may come first.
            Ok(Ok(_)) => {}
        }
    }
}

/// The server's own account of why a client's handshake failed.
async fn server_side_error(ca: &Ca, policy: Option<Arc<dyn PeerPolicy>>, tls: ClientTls) -> String {
    let cert = Arc::new(CertResolver::new(ca.issue(&id("server"), VALID)));
    let config = weft_link::tls::server_config(cert, ca.bundle(), policy).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let config = tls.config_for(&[id("server")]).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::IpAddress(addr.ip().into());
        // The client's side completes; the server decides after reading its certificate.
        if let Ok(mut stream) = TlsConnector::from(config).connect(name, tcp).await {
            let _ = stream.read(&mut [0; 16]).await;
        }
    });
    let (tcp, _) = listener.accept().await.unwrap();
    let err = tokio_rustls::TlsAcceptor::from(config)
        .accept(tcp)
        .await
        .unwrap_err();
    client.await.unwrap();
    err.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_names_why_it_refused_a_client() {
    let ca = Ca::new("root");
    let rogue = Ca::new("rogue");
    let foreign = ClientTls::new(
        Arc::new(CertResolver::new(rogue.issue(&id("client"), VALID))),
        ca.bundle(),
    );
    let err = server_side_error(&ca, None, foreign).await;
    assert!(err.contains("certificate signed by an unknown CA"), "{err}");

    let err = server_side_error(&ca, None, ca.client_tls(&id("client"), EXPIRED)).await;
    assert!(
        err.contains("certificate expired at 2021-01-01T00:00:00Z"),
        "{err}"
    );

    let policy: Arc<dyn PeerPolicy> = Arc::new(DenyList(vec!["intruder".into()]));
    let err = server_side_error(&ca, Some(policy), ca.client_tls(&id("intruder"), VALID)).await;
    assert!(
        err.contains("spiffe://cluster.local/ns/default/sa/intruder refused by policy"),
        "{err}"
    );

    // Another trust domain, even signed by the right CA, is not a peer.
    let (chain, key) = ca.issue_pem("spiffe://other.domain/ns/default/sa/client", VALID);
    let cert = Certificate::from_pem(chain.as_bytes(), key.as_bytes()).unwrap();
    let foreign_td = ClientTls::new(Arc::new(CertResolver::new(cert)), ca.bundle());
    let err = server_side_error(&ca, None, foreign_td).await;
    assert!(err.contains("outside trust domain cluster.local"), "{err}");
}
