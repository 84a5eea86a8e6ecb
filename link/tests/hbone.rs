//! HBONE data path: real TLS and HTTP/2 on loopback, real TCP upstreams.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test on any error"
)]

mod support;

use std::sync::Arc;

use http::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use weft_link::hbone::{ConnectRequest, ServerOptions, TraceParent};

use support::{Ca, CountingSockets, DirectHandler, Server, VALID, client, id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tunnels_share_one_connection() {
    let ca = Ca::new("root");
    let server = Server::start(&ca, &id("server")).await;
    let echo = support::echo_server().await;
    let tls = ca.client_tls(&id("client"), VALID);
    let sockets = Arc::new(CountingSockets::default());
    let hbone = client(&sockets);

    let tunnels = (0..8).map(|i| {
        let (hbone, tls) = (hbone.clone(), tls.clone());
        let req = ConnectRequest::new(server.addr, id("server"), echo);
        tokio::spawn(async move {
            let mut tunnel = hbone.connect(&tls, req).await.unwrap();
            let msg = format!("hello from tunnel {i}");
            tunnel.write_all(msg.as_bytes()).await.unwrap();
            tunnel.shutdown().await.unwrap();
            let mut back = String::new();
            tunnel.read_to_string(&mut back).await.unwrap();
            assert_eq!(back, msg);
        })
    });
    for task in tunnels.collect::<Vec<_>>() {
        task.await.unwrap();
    }
    assert_eq!(
        sockets.dialled(),
        1,
        "all tunnels should share one connection"
    );
    assert_eq!(hbone.pooled_connections(), 1);

    // A later tunnel reuses the idle pooled connection too.
    let req = ConnectRequest::new(server.addr, id("server"), echo);
    let mut tunnel = hbone.connect(&tls, req).await.unwrap();
    tunnel.write_all(b"again").await.unwrap();
    let mut buf = [0; 5];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"again");
    assert_eq!(sockets.dialled(), 1);
}

/// Bytes sent with the CONNECT reach the destination first, then the ones written to the
/// tunnel, on a single-threaded runtime where many tunnels answer in the same poll (their
/// frames then leave in one TLS write).
#[tokio::test(flavor = "current_thread")]
async fn early_data_arrives_first_and_many_tunnels_answer_together() {
    let ca = Ca::new("root");
    let server = Server::start(&ca, &id("server")).await;
    let echo = support::echo_server().await;
    let tls = ca.client_tls(&id("client"), VALID);
    let sockets = Arc::new(CountingSockets::default());
    let hbone = client(&sockets);

    let tunnels = (0..40).map(|i| {
        let (hbone, tls) = (hbone.clone(), tls.clone());
        let mut req = ConnectRequest::new(server.addr, id("server"), echo);
        // Larger than h2's 256-byte threshold for writing a DATA frame on its own.
        let early = format!("{i:04}:").repeat(100);
        req.early_data = bytes::Bytes::from(early.clone());
        tokio::spawn(async move {
            let mut tunnel = hbone.connect(&tls, req).await.unwrap();
            tunnel.write_all(b"|rest").await.unwrap();
            tunnel.shutdown().await.unwrap();
            let mut back = String::new();
            tunnel.read_to_string(&mut back).await.unwrap();
            assert_eq!(back, format!("{early}|rest"));
        })
    });
    for task in tunnels.collect::<Vec<_>>() {
        task.await.unwrap();
    }
    assert_eq!(sockets.dialled(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_connection_makes_the_pool_dial_another() {
    let ca = Ca::new("root");
    let options = ServerOptions {
        max_concurrent_streams: 2,
        ..Default::default()
    };
    let cert = ca.issue(&id("server"), VALID);
    let server = Server::start_with(&ca, cert, DirectHandler::default(), None, options).await;
    let echo = support::echo_server().await;
    let tls = ca.client_tls(&id("client"), VALID);
    let sockets = Arc::new(CountingSockets::default());
    let hbone = client(&sockets);

    let mut open = Vec::new();
    for _ in 0..3 {
        let req = ConnectRequest::new(server.addr, id("server"), echo);
        open.push(hbone.connect(&tls, req).await.unwrap());
    }
    assert_eq!(
        sockets.dialled(),
        2,
        "the third tunnel needs a second connection"
    );
    for tunnel in &mut open {
        tunnel.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        tunnel.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }
    // Once a tunnel closes, its slot is reused instead of dialling again.
    drop(open.pop());
    drop(open.pop());
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let req = ConnectRequest::new(server.addr, id("server"), echo);
    let _tunnel = hbone.connect(&tls, req).await.unwrap();
    assert_eq!(sockets.dialled(), 2);
}

/// Sends `len` bytes into `w`, `chunk` bytes per write, then shuts it down, while reading `r`
/// to its end, and checks that exactly the bytes sent came back. Writing and reading at once
/// lets the echo push back while we write, which exercises the window updates of both
/// directions. The pattern differs at every offset modulo 251, so a lost or repeated chunk
/// shows.
async fn echo_round_trip<R, W>(mut r: R, mut w: W, len: usize, chunk: usize)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for piece in sent.chunks(chunk) {
            w.write_all(piece).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(len);
    r.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), len);
    assert!(back == data, "echoed bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mebibytes_arrive_intact_both_ways() {
    const LEN: usize = 10 * 1024 * 1024;
    let ca = Ca::new("root");
    let server = Server::start(&ca, &id("server")).await;
    let echo = support::echo_server().await;
    let tls = ca.client_tls(&id("client"), VALID);
    let hbone = client(&Arc::new(CountingSockets::default()));

    let req = ConnectRequest::new(server.addr, id("server"), echo);
    let tunnel = hbone.connect(&tls, req).await.unwrap();
    let (r, w) = tokio::io::split(tunnel);
    echo_round_trip(r, w, LEN, LEN).await;

    // The server reports the counts once the tunnel is over.
    for _ in 0..50 {
        if !server.handler.summaries.lock().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let summaries = server.handler.summaries.lock();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].bytes_from_peer, LEN as u64);
    assert_eq!(summaries[0].bytes_to_peer, LEN as u64);
    assert_eq!(summaries[0].peer, id("client"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_on_both_ends_move_bulk_intact_and_count_it() {
    // The agents' shape: application socket -> copy -> tunnel -> (server's copy) -> upstream,
    // so both ends hand frames over without copying them.
    const LEN: usize = 6 * 1024 * 1024 + 4321;
    let ca = Ca::new("root");
    let server = Server::start(&ca, &id("server")).await;
    let echo = support::echo_server().await;
    let tls = ca.client_tls(&id("client"), VALID);
    let hbone = client(&Arc::new(CountingSockets::default()));
    let req = ConnectRequest::new(server.addr, id("server"), echo);
    let mut tunnel = hbone.connect(&tls, req).await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    let copy = tokio::spawn(async move {
        let (mut accepted, _) = listener.accept().await.unwrap();
        weft_link::copy::bidirectional(&mut accepted, &mut tunnel, |_| {}, |_| {}).await
    });
    let (r, w) = TcpStream::connect(app_addr).await.unwrap().into_split();
    // Odd write sizes, so frames and reads never line up.
    echo_round_trip(r, w, LEN, 70_001).await;
    let outcome = copy.await.unwrap();
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!((outcome.a_to_b, outcome.b_to_a), (LEN as u64, LEN as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_passes_through() {
    let ca = Ca::new("root");
    let server = Server::start(&ca, &id("server")).await;
    let upstream = support::count_then_reply_server().await;
    let tls = ca.client_tls(&id("client"), VALID);
    let hbone = client(&Arc::new(CountingSockets::default()));

    let req = ConnectRequest::new(server.addr, id("server"), upstream);
    let mut tunnel = hbone.connect(&tls, req).await.unwrap();
    tunnel.write_all(&[7; 1000]).await.unwrap();
    // END_STREAM must reach the upstream as a FIN, and its answer must still come back.
    tunnel.shutdown().await.unwrap();
    let mut reply = String::new();
    tunnel.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, "got 1000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_reach_the_handler() {
    let ca = Ca::new("root");
    let server = Server::start(&ca, &id("server")).await;
    let echo = support::echo_server().await;
    let tls = ca.client_tls(&id("client"), VALID);
    let hbone = client(&Arc::new(CountingSockets::default()));

    let tp: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        .parse()
        .unwrap();
    let mut req = ConnectRequest::new(server.addr, id("server"), echo);
    req.traceparent = Some(tp);
    req.baggage = Some("k8s.namespace.name=default".parse().unwrap());
    let _tunnel = hbone.connect(&tls, req).await.unwrap();
    // Without a traceparent, one is generated.
    let req = ConnectRequest::new(server.addr, id("server"), echo);
    let _tunnel2 = hbone.connect(&tls, req).await.unwrap();

    let requests = server.handler.requests.lock();
    assert_eq!(requests[0].authority, echo);
    assert_eq!(requests[0].peer, id("client"));
    assert_eq!(requests[0].headers["traceparent"], tp.to_string().as_str());
    assert_eq!(requests[0].headers["baggage"], "k8s.namespace.name=default");
    let generated = requests[1].headers["traceparent"].to_str().unwrap();
    assert!(generated.parse::<TraceParent>().is_ok(), "{generated}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_gets_503() {
    let ca = Ca::new("root");
    let server = Server::start(&ca, &id("server")).await;
    let tls = ca.client_tls(&id("client"), VALID);
    let hbone = client(&Arc::new(CountingSockets::default()));

    let nothing = support::closed_port().await;
    let req = ConnectRequest::new(server.addr, id("server"), nothing);
    let err = hbone.connect(&tls, req).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_policy_refuses_a_peer_with_401() {
    let ca = Ca::new("root");
    let server = server_denying_intruder(&ca).await;
    let echo = support::echo_server().await;
    let hbone = client(&Arc::new(CountingSockets::default()));

    let tls = ca.client_tls(&id("intruder"), VALID);
    let req = ConnectRequest::new(server.addr, id("server"), echo);
    let err = hbone.connect(&tls, req).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED), "{err}");
}

/// A raw h2 connection over mTLS to `server`, driven in the background, ready to send.
async fn raw_h2(ca: &Ca, server: &Server) -> h2::client::SendRequest<bytes::Bytes> {
    let tls = ca.client_tls(&id("client"), VALID);
    let config = tls.config_for(&[id("server")]).unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = ServerName::IpAddress(server.addr.ip().into());
    let stream = TlsConnector::from(config).connect(name, tcp).await.unwrap();
    let (send, conn) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(conn);
    send.ready().await.unwrap()
}

/// A server that refuses the service account "intruder" with 401.
async fn server_denying_intruder(ca: &Ca) -> Server {
    let handler = DirectHandler {
        deny: vec!["intruder".into()],
        ..Default::default()
    };
    let cert = ca.issue(&id("server"), VALID);
    Server::start_with(ca, cert, handler, None, Default::default()).await
}

/// Sends one raw request over mTLS + h2 and returns the response status.
async fn raw_request(ca: &Ca, server: &Server, method: Method, authority: &str) -> StatusCode {
    let mut send = raw_h2(ca, server).await;
    let uri = match method {
        Method::CONNECT => authority.to_owned(),
        _ => format!("https://{authority}/"),
    };
    let req = Request::builder().method(method).uri(uri).body(()).unwrap();
    let (response, _stream) = send.send_request(req, false).unwrap();
    response.await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clean_refusals() {
    let ca = Ca::new("root");
    let server = Server::start(&ca, &id("server")).await;
    let echo = support::echo_server().await.to_string();

    let status = raw_request(&ca, &server, Method::GET, &echo).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    for authority in ["example.com:80", "127.0.0.1", "127.0.0.1:99999", "[::1]"] {
        let status = raw_request(&ca, &server, Method::CONNECT, authority).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{authority}");
    }
    // The handler never saw any of them, and the server still serves.
    assert!(server.handler.requests.lock().is_empty());
    let status = raw_request(&ca, &server, Method::CONNECT, &echo).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_connections_leave_the_pool() {
    let ca = Ca::new("root");
    let server = Server::start(&ca, &id("server")).await;
    let addr = server.addr;
    let echo = support::echo_server().await;
    let tls = ca.client_tls(&id("client"), VALID);
    let sockets = Arc::new(CountingSockets::default());
    let hbone = client(&sockets);

    drop(
        hbone
            .connect(&tls, ConnectRequest::new(addr, id("server"), echo))
            .await
            .unwrap(),
    );
    assert_eq!(hbone.pooled_connections(), 1);
    server.stop().await;
    for _ in 0..100 {
        if hbone.pooled_connections() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        hbone.pooled_connections(),
        0,
        "GOAWAY should retire the connection"
    );

    // A new server on the same address: the next tunnel dials afresh and works.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let cert = ca.issue(&id("server"), VALID);
    let _server = Server::start_on(
        listener,
        &ca,
        cert,
        DirectHandler::default(),
        None,
        Default::default(),
    );
    let mut tunnel = hbone
        .connect(&tls, ConnectRequest::new(addr, id("server"), echo))
        .await
        .unwrap();
    tunnel.write_all(b"x").await.unwrap();
    let mut buf = [0; 1];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(sockets.dialled(), 2);
}

// === optimistic tunnels: the 200 comes with the first bytes ===

/// A raw CONNECT over mTLS + h2, with or without the defer header; the response future and
/// the request's send side.
async fn raw_connect(
    ca: &Ca,
    server: &Server,
    authority: std::net::SocketAddr,
    defer: bool,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let mut send = raw_h2(ca, server).await;
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(authority.to_string());
    if defer {
        req = req.header(weft_link::hbone::DEFER_RESPONSE_HEADER, "?1");
    }
    send.send_request(req.body(()).unwrap(), false).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferring_client_gets_the_200_with_the_first_bytes_and_others_at_once() {
    let ca = Ca::new("root");
    let server = Server::start(&ca, &id("server")).await;
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();

    // Without the header: 200 as soon as the upstream is connected, before it says anything.
    let (response, _send) = raw_connect(&ca, &server, addr, false).await;
    let (_quiet, _) = upstream.accept().await.unwrap();
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), response)
        .await
        .expect("no 200 for a client that waits for it")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // With it: no answer while the upstream is silent, then the 200 and its bytes together.
    let (mut response, _send) = raw_connect(&ca, &server, addr, true).await;
    let (mut speaker, _) = upstream.accept().await.unwrap();
    let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut response).await;
    assert!(early.is_err(), "the 200 came before any upstream bytes");
    speaker.write_all(b"hello").await.unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    assert_eq!(&body.data().await.unwrap().unwrap()[..], b"hello");

    // An upstream that closes without a word: 200, then END_STREAM.
    let (response, _send) = raw_connect(&ca, &server, addr, true).await;
    drop(upstream.accept().await.unwrap());
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        assert!(data.unwrap().is_empty(), "bytes from a silent upstream");
    }
}

/// The upstream answers only after the client's EOF, and the server holds the 200 until it
/// does: an optimistic client must send all of a body larger than the stream window first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optimistic_tunnel_uploads_before_any_answer() {
    let ca = Ca::new("root");
    let server = Server::start(&ca, &id("server")).await;
    let upstream = support::count_then_reply_server().await;
    let tls = ca.client_tls(&id("client"), VALID);
    let hbone = client(&Arc::new(CountingSockets::default()));

    let mut req = ConnectRequest::new(server.addr, id("server"), upstream);
    req.optimistic = true;
    req.early_data = bytes::Bytes::from_static(b"first");
    let tunnel = hbone.connect(&tls, req).await.unwrap();
    let (mut r, mut w) = tokio::io::split(tunnel);
    let upload = 10 * 1024 * 1024;
    let writer = tokio::spawn(async move {
        w.write_all(&vec![1u8; upload]).await.unwrap();
        w.shutdown().await.unwrap();
        w
    });
    let mut reply = String::new();
    // The limit is checked first: a read that is ready but was never woken must fail too.
    tokio::select! {
        biased;
        () = tokio::time::sleep(std::time::Duration::from_secs(30)) => {
            panic!("the upload and the deferred 200 wait for each other, or a wake-up was lost")
        }
        read = r.read_to_string(&mut reply) => { read.unwrap(); }
    }
    assert_eq!(reply, format!("got {}", upload + 5));
    writer.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optimistic_tunnel_reports_its_refusal_on_the_first_read() {
    let ca = Ca::new("root");
    let server = server_denying_intruder(&ca).await;
    let echo = support::echo_server().await;
    let nothing = support::closed_port().await;
    let hbone = client(&Arc::new(CountingSockets::default()));

    for (who, to, status) in [
        ("client", nothing, StatusCode::SERVICE_UNAVAILABLE),
        ("intruder", echo, StatusCode::UNAUTHORIZED),
    ] {
        let tls = ca.client_tls(&id(who), VALID);
        let mut req = ConnectRequest::new(server.addr, id("server"), to);
        req.optimistic = true;
        let mut tunnel = hbone.connect(&tls, req).await.unwrap();
        // A write before the answer goes out (and the server drops it); once the answer is
        // in, the write reports it. Either way the refusal is reported once.
        let mut buf = [0; 8];
        let err = match tunnel.write_all(b"ignored").await {
            Err(err) => err,
            Ok(()) => tunnel.read(&mut buf).await.unwrap_err(),
        };
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        let open = weft_link::hbone::HboneError::of_io(&err).expect("the open failure");
        assert_eq!(open.status(), Some(status), "{open}");
    }
}

/// A server that refuses the second stream of its first connection with REFUSED_STREAM,
/// `delay` after it arrives, and answers every other one with `200` and "ok".
async fn refusing_server(ca: &Ca, delay: std::time::Duration) -> std::net::SocketAddr {
    let cert = Arc::new(weft_link::tls::CertResolver::new(
        ca.issue(&id("server"), VALID),
    ));
    let config = weft_link::tls::server_config(cert, ca.bundle(), None).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((tcp, _)) = listener.accept().await {
            let refuse_second = std::mem::take(&mut first);
            let tls = acceptor.accept(tcp).await.unwrap();
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(tls).await.unwrap();
                let mut streams = 0;
                while let Some(Ok((_, mut respond))) = conn.accept().await {
                    streams += 1;
                    if refuse_second && streams == 2 {
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                        });
                        continue;
                    }
                    let ok = http::Response::builder().status(200).body(()).unwrap();
                    let mut send = respond.send_response(ok, false).unwrap();
                    send.send_data(bytes::Bytes::from_static(b"ok"), true)
                        .unwrap();
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optimistic_tunnel_the_server_did_not_process_is_sent_again() {
    let ca = Ca::new("root");
    let tls = ca.client_tls(&id("client"), VALID);
    let authority = "127.0.0.1:9".parse().unwrap();
    let optimistic = |addr| {
        let mut req = ConnectRequest::new(addr, id("server"), authority);
        req.optimistic = true;
        req.early_data = bytes::Bytes::from_static(b"hello");
        req
    };
    let read_all = |mut tunnel: weft_link::hbone::HboneStream| async move {
        let mut got = String::new();
        tunnel.read_to_string(&mut got).await.map(|_| got)
    };

    // Only the early data went: refused on the pooled connection, sent again on a new one.
    let addr = refusing_server(&ca, std::time::Duration::ZERO).await;
    let sockets = Arc::new(CountingSockets::default());
    let hbone = client(&sockets);
    let first = hbone.connect(&tls, optimistic(addr)).await.unwrap();
    assert_eq!(read_all(first).await.unwrap(), "ok");
    let second = hbone.connect(&tls, optimistic(addr)).await.unwrap();
    assert_eq!(read_all(second).await.unwrap(), "ok");
    assert_eq!(sockets.dialled(), 2, "the retry dials a new connection");

    // Bytes beyond the early data went before the refusal: a new request could not carry
    // them, so the refusal is final.
    let addr = refusing_server(&ca, std::time::Duration::from_millis(200)).await;
    let sockets = Arc::new(CountingSockets::default());
    let hbone = client(&sockets);
    let first = hbone.connect(&tls, optimistic(addr)).await.unwrap();
    assert_eq!(read_all(first).await.unwrap(), "ok");
    let mut second = hbone.connect(&tls, optimistic(addr)).await.unwrap();
    second.write_all(b" and more").await.unwrap();
    let err = read_all(second).await.unwrap_err();
    assert!(
        weft_link::hbone::HboneError::of_io(&err).is_some(),
        "not an open failure: {err}"
    );
    assert!(err.to_string().contains("refused"), "{err}");
    assert_eq!(sockets.dialled(), 1, "no retry once more was sent");
}

/// Accepts one connection on a fresh port and hands it to `serve`; the port.
async fn one_upstream<F, Fut>(serve: F) -> std::net::SocketAddr
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        serve(stream).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_cross_the_tunnel_both_ways() {
    let ca = Ca::new("root");
    let server = Server::start(&ca, &id("server")).await;
    let tls = ca.client_tls(&id("client"), VALID);
    let hbone = client(&Arc::new(CountingSockets::default()));

    // The upstream answers, then resets: the tunnel's reader sees a reset (RST_STREAM
    // CONNECT_ERROR), not the clean end that would make the answer look complete.
    let upstream = one_upstream(|mut s| async move {
        s.write_all(b"partial").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        socket2::SockRef::from(&s)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
    })
    .await;
    let req = ConnectRequest::new(server.addr, id("server"), upstream);
    let mut tunnel = hbone.connect(&tls, req).await.unwrap();
    let mut got = Vec::new();
    let err = tunnel
        .read_to_end(&mut got)
        .await
        .expect_err("an upstream reset came through as a clean end");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    // CONNECT_ERROR, as RFC 9113 §8.5 has it, rather than the CANCEL of a dropped stream.
    let reason = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason);
    assert_eq!(reason, Some(h2::Reason::CONNECT_ERROR), "{err}");

    // The client's side aborts: the upstream sees a reset.
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let upstream = one_upstream(|mut s| async move {
        let mut got = Vec::new();
        let _ = seen_tx.send(s.read_to_end(&mut got).await.map_err(|e| e.kind()));
    })
    .await;
    let req = ConnectRequest::new(server.addr, id("server"), upstream);
    let mut tunnel = hbone.connect(&tls, req).await.unwrap();
    tunnel.write_all(b"request").await.unwrap();
    weft_link::copy::Endpoint::abort(&mut tunnel);
    drop(tunnel);
    let seen = tokio::time::timeout(std::time::Duration::from_secs(10), seen_rx)
        .await
        .expect("the upstream connection stayed open")
        .unwrap();
    assert_eq!(seen, Err(std::io::ErrorKind::ConnectionReset));
}
