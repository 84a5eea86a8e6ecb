//! Per-connection bounds: a subscriber that vanishes without closing its connection (a
//! crashed node, a dropped NAT entry) is found by the server's HTTP/2 pings and dropped,
//! with its stream and queue; one connection holds a bounded number of streams.

mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_stream::wrappers::ReceiverStream;
use weft_control::{config::Source, server::ServerConfig};
use weft_proto::discovery::v1::{
    ClientHello, ClientKind, ResourceType, StatusRequest, SubscribeRequest,
    discovery_client::DiscoveryClient, subscribe_request::Message,
};

/// Forwards one connection to `upstream` until `freeze` is set, then stops moving bytes in
/// either direction but keeps both sockets open: a peer that is gone without a FIN.
async fn freezing_proxy(upstream: SocketAddr, freeze: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.expect("accept");
        let server = TcpStream::connect(upstream)
            .await
            .expect("connect upstream");
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        for (mut from, mut to) in [(cr, sw), (sr, cw)] {
            let freeze = freeze.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match from.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if freeze.load(Ordering::Acquire) {
                        break;
                    }
                    if to.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                // Hold both halves open: no FIN, no RST.
                std::future::pending::<()>().await;
                drop((from, to));
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_silent_subscriber_is_dropped_by_keepalive() {
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    write(config.path(), "mesh.yaml", WORKLOADS);
    let mut c = ServerConfig::new(
        Source::Directory(config.path().to_path_buf()),
        "127.0.0.1:0".parse().unwrap(),
        state.path().to_path_buf(),
    );
    c.init_ca = true;
    c.keepalive_interval = Duration::from_millis(200);
    c.keepalive_timeout = Duration::from_millis(200);
    let server = Server::run(c).await;

    let freeze = Arc::new(AtomicBool::new(false));
    let proxy = freezing_proxy(server.addr, freeze.clone()).await;
    let endpoint = weft_link::control::endpoint_with_identity(
        &format!("https://127.0.0.1:{}", proxy.port()),
        &server.root_pem,
        None,
        Some(&server.node_identity("node-1")),
        WAIT,
    )
    .unwrap();
    let mut client = DiscoveryClient::new(endpoint.connect().await.unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(SubscribeRequest {
        message: Some(Message::Hello(ClientHello {
            kind: ClientKind::Agent.into(),
            name: "agent-1".into(),
            node: "node-1".into(),
            client_version: "test".into(),
            resource_types: vec![ResourceType::Workload.into()],
        })),
    })
    .await
    .unwrap();
    let mut inbound = client
        .subscribe(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    inbound.message().await.unwrap().unwrap();

    let mut admin = server.admin().await;
    let clients = |admin: &mut DiscoveryClient<tonic::transport::Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .status(StatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .clients
                .len()
        }
    };
    assert_eq!(clients(&mut admin).await, 1);
    // Still there after several ping rounds while it answers.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(clients(&mut admin).await, 1);

    freeze.store(true, Ordering::Release);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while clients(&mut admin).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent subscriber is still registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(tx);
    server.stop().await;
}

#[tokio::test]
async fn one_connection_gets_a_bounded_number_of_streams() {
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    write(config.path(), "mesh.yaml", WORKLOADS);
    let server = Server::start(config.path(), state.path(), "127.0.0.1:0".parse().unwrap()).await;
    // One channel is one HTTP/2 connection.
    let client = server.admin().await;
    let limit = weft_control::server::limits::MAX_STREAMS_PER_CONNECTION as usize;
    let mut open = Vec::new();
    for i in 0..limit {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(SubscribeRequest {
            message: Some(Message::Hello(ClientHello {
                kind: ClientKind::Ctl.into(),
                name: format!("watcher-{i}"),
                node: String::new(),
                client_version: "test".into(),
                resource_types: vec![ResourceType::Workload.into()],
            })),
        })
        .await
        .unwrap();
        let mut inbound = client
            .clone()
            .subscribe(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        inbound.message().await.unwrap().unwrap();
        open.push((tx, inbound));
    }
    // Every stream is taken: the next call waits for one to end.
    let mut status = client.clone();
    let mut next = tokio::spawn(async move { status.status(StatusRequest {}).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut next)
            .await
            .is_err(),
        "a stream beyond the limit was served"
    );
    drop(open.pop());
    let answered = tokio::time::timeout(WAIT, next).await.unwrap().unwrap();
    assert!(answered.is_ok(), "{answered:?}");
    drop(open);
    server.stop().await;
}
