//! Bad input at the HTTP level, each answered correctly and cheaply: oversized heads (431)
//! and bodies (413), request-smuggling shapes (400 and the connection closed), slow clients,
//! and HTTP/2 rapid reset (GOAWAY, memory bounded).

// Helpers are not `#[test]` functions; a failed setup step should panic like an assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A gateway routing everything to one backend, with `extra` flags.
async fn setup(extra: &[&str]) -> (Gateway, u16, Backend, tempfile::TempDir) {
    let backend = Backend::start("one").await;
    let (dir, port) = one_route_dir(backend.addr);
    let mut args = vec!["--config-dir", dir.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    let gw = Gateway::spawn(&args);
    gw.wait_ready();
    (gw, port, backend, dir)
}

/// Sends `raw` on a new connection; returns everything read until the server closes it (or
/// `wait` passes) and whether it closed.
async fn raw(port: u16, raw: &[u8], wait: Duration) -> (String, bool) {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_and_bodies_413() {
    let (gw, port, backend, _dir) = setup(&["--max-body-bytes", "1000"]).await;
    let base = format!("http://127.0.0.1:{port}");
    let big = format!("x-big: {}", "a".repeat(70 * 1024));
    let head = format!("GET /x HTTP/1.1\r\nhost: a\r\n{big}\r\n\r\n");
    let (answer, closed) = raw(port, head.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{answer:?}\n{}",
        gw.log()
    );
    assert!(closed);
    // HTTP/2 advertises the same limit (SETTINGS_MAX_HEADER_LIST_SIZE): curl's nghttp2
    // refuses to send such a head at all, and a client that sent it would get 431 from h2.
    let before = backend.requests.load(std::sync::atomic::Ordering::Relaxed);
    assert_ne!(
        curl(&["--http2-prior-knowledge", "-H", &big, &format!("{base}/x")]).0,
        200
    );
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::Relaxed),
        before
    );
    let many: Vec<String> = (0..200).map(|i| format!("x-h{i}: v")).collect();
    let mut args: Vec<&str> = many.iter().flat_map(|h| ["-H", h.as_str()]).collect();
    let url = format!("{base}/x");
    args.push(&url);
    let (status, body) = curl(&args);
    assert_eq!(status, 431, "too many header lines: {body}");

    let before = backend.requests.load(std::sync::atomic::Ordering::Relaxed);
    let body = "b".repeat(2000);
    // Declared too large: refused before anything is read or forwarded.
    assert_eq!(curl(&["--data-binary", &body, &url]).0, 413);
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::Relaxed),
        before
    );
    // Chunked, so undeclared: cut off once past the limit.
    assert_eq!(
        curl(&[
            "-H",
            "transfer-encoding: chunked",
            "--data-binary",
            &body,
            &url
        ])
        .0,
        413,
        "{}",
        gw.log()
    );
    // Within the limit: forwarded.
    let (status, echo) = curl(&["--data-binary", &body[..900], &url]);
    assert_eq!(status, 200);
    assert!(echo.contains("\"body_bytes\":900"), "{echo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_shapes_get_400_and_the_connection_closes() {
    let (gw, port, backend, _dir) = setup(&[]).await;
    // hyper follows RFC 9112 §6.3 for a request with both Content-Length and
    // Transfer-Encoding: the chunked framing wins, the Content-Length is dropped and the
    // connection is closed after the response, so whatever follows the chunked body (the
    // smuggled request) is never read. Every other shape is refused with 400.
    let te_wins = "content-length and transfer-encoding";
    let shapes: [(&str, &str); 6] = [
        (
            "content-length and transfer-encoding",
            "POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n",
        ),
        (
            "two different content-lengths",
            "POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        ),
        (
            "transfer-encoding not ending in chunked",
            "POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        ),
        (
            "a signed content-length",
            "POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: +5\r\n\r\nhello",
        ),
        (
            "an obsolete folded header",
            "GET /x HTTP/1.1\r\nhost: a\r\nx-a: b\r\n c\r\n\r\n",
        ),
        (
            "a space before the colon",
            "GET /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding : chunked\r\n\r\n",
        ),
    ];
    for (what, request) in shapes {
        let (answer, closed) = raw(port, request.as_bytes(), Duration::from_secs(5)).await;
        if what == te_wins {
            assert!(answer.starts_with("HTTP/1.1 200"), "{what}: {answer:?}");
            assert!(
                answer.contains("\"body_bytes\":0"),
                "{what}: chunked framing: {answer:?}"
            );
            assert!(answer.contains("connection: close"), "{what}: {answer:?}");
            assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{what}: {answer:?}");
        } else {
            assert!(
                answer.starts_with("HTTP/1.1 400"),
                "{what}: {answer:?}\n{}",
                gw.log()
            );
        }
        assert!(closed, "{what}: the connection stays open");
        assert!(!answer.contains("smuggled"), "{what}");
    }
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the chunked request reached the backend\n{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_bodies_are_cut_off() {
    let (gw, port, backend, _dir) =
        setup(&["--header-timeout", "1s", "--body-timeout", "1s"]).await;
    // A head that never ends.
    let started = Instant::now();
    let (_, closed) = raw(
        port,
        b"GET /x HTTP/1.1\r\nhost: a\r\nx-slow: ",
        Duration::from_secs(5),
    )
    .await;
    assert!(closed, "a slow head keeps its connection\n{}", gw.log());
    assert!(started.elapsed() < Duration::from_secs(4));
    // A body that stalls: the gateway gives up on it (408) rather than hold the backend.
    let (answer, _) = raw(
        port,
        b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\nonly this",
        Duration::from_secs(6),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "{answer:?}\n{}",
        gw.log()
    );
    let _ = backend;
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_gets_goaway_and_memory_stays_bounded() {
    let (gw, port, _backend, _dir) = setup(&[]).await;
    let rss_before = rss_kib(gw.child.id());
    let mut goaways = 0;
    for _round in 0..20 {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        let mut sent = 0;
        for _ in 0..2000 {
            let req = http::Request::get(format!("http://127.0.0.1:{port}/x"))
                .body(())
                .unwrap();
            let Ok(ready) = client.clone().ready().await else {
                break;
            };
            client = ready;
            let Ok((_, mut stream)) = client.send_request(req, false) else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
            sent += 1;
        }
        let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
        match ended {
            // GOAWAY, or the socket closed right after it while the client still wrote.
            Ok(Ok(Err(e)))
                if e.is_go_away()
                    || e.is_io()
                    || e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) =>
            {
                goaways += 1;
            }
            other => panic!(
                "after {sent} resets the connection ended with {other:?}\n{}",
                gw.log()
            ),
        }
    }
    assert_eq!(goaways, 20);
    assert!(
        gw.log()
            .contains("remotely-reset pending-accept streams reached limit"),
        "the rapid-reset limit closed the connections"
    );
    let rss_after = rss_kib(gw.child.id());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // The gateway still serves.
    assert_eq!(
        curl(&[
            "--http2-prior-knowledge",
            &format!("http://127.0.0.1:{port}/x")
        ])
        .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_flood_is_held_to_the_concurrent_stream_limit() {
    let (gw, port, _backend, _dir) = setup(&["--h2-max-streams", "50"]).await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    // One answered request first: the server's SETTINGS (its stream limit) come before any
    // response, so after it the client knows the limit and queues streams beyond it instead
    // of opening them and having them refused.
    let (first, _) = client
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(http::Request::get("http://a/").body(()).unwrap(), true)
        .unwrap();
    first.await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..150 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = client.ready().await?;
            let req = http::Request::get("http://a/slow").body(()).unwrap();
            let (resp, _) = client.send_request(req, true)?;
            let resp = resp.await?;
            Ok::<_, h2::Error>(resp.status().as_u16())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if let Ok(Ok(200)) = t.await {
            ok += 1;
        }
    }
    assert_eq!(ok, 150, "every stream is served in turn\n{}", gw.log());
    let max = common::SLOW_MAX_IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst);
    assert!(max <= 50, "{max} requests of one connection ran at once");
    assert!(
        max >= 40,
        "the limit was not reached ({max}): the test proves nothing"
    );
}
