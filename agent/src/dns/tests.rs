//! The proxy's decisions on real bytes, and forwarding to a resolver in this process (bound
//! on port 0 of loopback). Forwarding sockets carry the agent's mark, so these tests need
//! CAP_NET_ADMIN (root), as every test of the agent's sockets does.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use weft_mesh::{
    dns::ServiceNames,
    service::{Service, TrafficDistribution},
    workload::{Workload, WorkloadStore, WorkloadUid},
};

use super::wire::{self, Rcode, TYPE_A, TYPE_AAAA, tests::decode, tests::query};
use super::*;

fn proxy(upstreams: Vec<SocketAddr>, timeout: Duration) -> DnsProxy {
    let web = Service {
        name: "web".into(),
        namespace: "default".into(),
        vips: vec![
            "10.96.0.10".parse().unwrap(),
            "fd00:96::10".parse().unwrap(),
        ],
        ports: Vec::new(),
        endpoints: vec![WorkloadUid("w1".into())],
        traffic_distribution: TrafficDistribution::Any,
    };
    let db = Service {
        name: "db".into(),
        vips: Vec::new(),
        ..web.clone()
    };
    let w1 = Workload {
        uid: WorkloadUid("w1".into()),
        name: "w1".into(),
        namespace: "default".into(),
        ips: vec!["10.78.1.11".parse().unwrap()],
        ..Workload::default()
    };
    DnsProxy::new(
        Arc::new(ArcSwap::from_pointee(ServiceNames::from_arcs([
            Arc::new(web),
            Arc::new(db),
        ]))),
        Arc::new(ArcSwap::from_pointee(WorkloadStore::new(vec![w1]))),
        upstreams,
        timeout,
    )
}

fn reply_of(d: Decision) -> Vec<u8> {
    match d {
        Decision::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn service_names_are_answered_with_their_vips_or_ready_endpoints() {
    let p = proxy(Vec::new(), Duration::from_secs(1));
    for transport in [Transport::Udp, Transport::Tcp] {
        let a = reply_of(p.decide(
            &query(1, "web.default.svc.cluster.local", TYPE_A, None),
            transport,
        ));
        assert_eq!(decode(&a).0, Rcode::NoError as u16);
        assert_eq!(decode(&a).2, ips(&["10.96.0.10"]));
        let aaaa = reply_of(p.decide(
            &query(2, "web.default.svc.cluster.local.", TYPE_AAAA, Some(1232)),
            transport,
        ));
        assert_eq!(decode(&aaaa).2, ips(&["fd00:96::10"]));
    }
    // Headless: the ready endpoints' own addresses; none of the family: NODATA.
    let db = reply_of(p.decide(
        &query(3, "db.default.svc.cluster.local", TYPE_A, None),
        Transport::Udp,
    ));
    assert_eq!(decode(&db).2, ips(&["10.78.1.11"]));
    let db6 = reply_of(p.decide(
        &query(4, "db.default.svc.cluster.local", TYPE_AAAA, None),
        Transport::Udp,
    ));
    assert_eq!((decode(&db6).0, decode(&db6).2.len()), (0, 0));
    // Another type of an existing name: NOERROR, no answer.
    let mx = reply_of(p.decide(
        &query(5, "web.default.svc.cluster.local", 15, None),
        Transport::Udp,
    ));
    assert_eq!((decode(&mx).0, decode(&mx).2.len()), (0, 0));
}

#[test]
fn unknown_cluster_names_are_nxdomain_and_outside_names_refused_without_upstream() {
    let p = proxy(Vec::new(), Duration::from_secs(1));
    for name in [
        "api.default.svc.cluster.local",
        "web.default.svc.cluster.local.default.svc.cluster.local",
        "web.cluster.local",
    ] {
        let r = reply_of(p.decide(&query(6, name, TYPE_A, None), Transport::Udp));
        assert_eq!(decode(&r).0, Rcode::NxDomain as u16, "{name}");
        // Authoritative, and no SOA: just the question.
        assert_eq!(&r[6..12], &[0, 0, 0, 0, 0, 0], "{name}");
    }
    let r = reply_of(p.decide(&query(7, "example.com", TYPE_A, None), Transport::Udp));
    assert_eq!(decode(&r).0, Rcode::Refused as u16);
    let with = proxy(vec!["127.0.0.1:1".parse().unwrap()], Duration::from_secs(1));
    assert_eq!(
        with.decide(&query(7, "example.com", TYPE_A, None), Transport::Udp),
        Decision::Forward { limit: 512 }
    );
}

#[test]
fn bad_queries_get_a_clear_answer_or_none() {
    let p = proxy(Vec::new(), Duration::from_secs(1));
    // No header: nothing to answer to.
    assert_eq!(p.decide(&[1, 2, 3], Transport::Udp), Decision::Drop);
    // A broken question: FORMERR with the query's id.
    let mut broken = query(0xBEEF, "web.default.svc.cluster.local", TYPE_A, None);
    broken.truncate(20);
    let r = reply_of(p.decide(&broken, Transport::Udp));
    assert_eq!((&r[..2], decode(&r).0), (&[0xBE, 0xEF][..], 1));
    // Oversized: a valid query padded past 512 bytes without EDNS, past 4096 with it.
    let mut big = query(8, "example.com", TYPE_A, None);
    big[11] = 1; // one additional record, a large TXT
    // Type 65280 (private use): its data is opaque to any parser.
    big.extend_from_slice(&[0, 0xFF, 0, 0, 1, 0, 0, 0, 0, 2, 0]);
    big.extend_from_slice(&[b'x'; 512]);
    let r = reply_of(p.decide(&big, Transport::Udp));
    assert_eq!(decode(&r).0, Rcode::Refused as u16);
    let mut huge = query(9, "example.com", TYPE_A, Some(4096));
    huge[11] = 2;
    huge.extend_from_slice(&[0, 0xFF, 0, 0, 1, 0, 0, 0, 0, 0x13, 0x88]);
    huge.extend_from_slice(&[b'x'; 5000]);
    for transport in [Transport::Udp, Transport::Tcp] {
        let r = reply_of(p.decide(&huge, transport));
        assert_eq!(decode(&r).0, Rcode::Refused as u16);
        // Past the largest query, even a broken one is refused on its header alone.
        let mut broken = huge.clone();
        broken[5] = 2;
        let r = reply_of(p.decide(&broken, transport));
        assert_eq!(
            (&r[..2], decode(&r).0),
            (&[0, 9][..], Rcode::Refused as u16)
        );
    }
}

/// A resolver on loopback port 0: answers every UDP query with its id and `10.1.2.3` (with
/// TC set when `truncate`), and every TCP query in full.
async fn fake_upstream(truncate: bool) -> SocketAddr {
    // UDP and TCP on one port: a port free for UDP may be taken for TCP; try another.
    let (udp, tcp, addr) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
            break (udp, tcp, addr);
        }
    };
    let answer = |msg: &[u8], tc: bool| {
        let q = wire::parse_query(msg).unwrap();
        let ips = ips(&["10.1.2.3"]);
        let mut r = wire::reply(&q, Rcode::NoError, false, &ips, 60, 65535);
        if tc {
            r[2] |= 0x02;
        }
        r
    };
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
            let r = answer(&buf[..n], truncate);
            udp.send_to(&r, peer).await.unwrap();
        }
    });
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tcp.accept().await.unwrap();
            let q = read_frame(&mut s).await.unwrap().unwrap();
            write_frame(&mut s, &answer(&q, false)).await.unwrap();
        }
    });
    addr
}

#[tokio::test]
async fn outside_names_are_forwarded_over_udp_then_tcp_when_truncated() {
    for truncate in [false, true] {
        let upstream = fake_upstream(truncate).await;
        let p = proxy(vec![upstream], Duration::from_secs(2));
        let q = query(0x4242, "outside.test", TYPE_A, None);
        for transport in [Transport::Udp, Transport::Tcp] {
            let r = p.forward(&q, transport, 512).await;
            assert_eq!(&r[..2], &[0x42, 0x42]);
            let flags = u16::from_be_bytes([r[2], r[3]]);
            assert_eq!(flags & 0x0200, 0, "the full answer, not the truncated one");
            assert_eq!(decode(&r).2, ips(&["10.1.2.3"]), "truncate={truncate}");
        }
    }
}

#[tokio::test]
async fn a_silent_upstream_gets_servfail_at_the_timeout() {
    // Bound and never read: queries vanish.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p = proxy(
        vec![silent.local_addr().unwrap()],
        Duration::from_millis(300),
    );
    let q = query(0x0101, "outside.test", TYPE_A, None);
    let started = Instant::now();
    let r = p.forward(&q, Transport::Udp, 512).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(&r[..2], &[1, 1]);
    assert_eq!(decode(&r).0, Rcode::ServFail as u16);
}

#[test]
fn resolv_conf_nameservers_are_read_in_order() {
    let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver fd00::53\n\
                nameserver fe80::1%eth0\noptions ndots:2\n";
    let got = resolv_conf_nameservers(text);
    let want: Vec<SocketAddr> = vec![
        "10.0.0.2:53".parse().unwrap(),
        "[fd00::53]:53".parse().unwrap(),
    ];
    assert_eq!(got, want);
}

/// A pod's sockets on loopback port 0 of this process's namespace, served by `p`.
async fn serve(p: DnsProxy) -> (SocketAddr, SocketAddr, Vec<tokio::task::JoinHandle<()>>) {
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (u, t) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let tasks = Arc::new(p).spawn(PodDns {
        udp: vec![udp],
        tcp: vec![tcp],
    });
    (u, t, tasks)
}

async fn tcp_ask(stream: &mut tokio::net::TcpStream, msg: &[u8]) -> Vec<u8> {
    write_frame(stream, msg).await.unwrap();
    read_frame(stream).await.unwrap().unwrap()
}

#[tokio::test]
async fn served_pods_answer_over_udp_and_tcp_within_their_bounds() {
    let mut p = proxy(Vec::new(), Duration::from_secs(1));
    p.max_tcp = 2;
    p.tcp_idle = Duration::from_millis(300);
    let (udp, tcp, _tasks) = serve(p).await;

    // UDP: an answer per query, and nothing for a message without a header.
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(udp).await.unwrap();
    client.send(&[0, 1, 2]).await.unwrap();
    let q = query(0x0A0A, "web.default.svc.cluster.local", TYPE_A, None);
    client.send(&q).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &buf[..2],
        &[0x0A, 0x0A],
        "the first answer is the real query's"
    );
    assert_eq!(decode(&buf[..n]).2, ips(&["10.96.0.10"]));

    // TCP: several queries on one connection, answered in order.
    let mut first = tokio::net::TcpStream::connect(tcp).await.unwrap();
    for id in [1u16, 2, 3] {
        let r = tcp_ask(
            &mut first,
            &query(id, "web.default.svc.cluster.local", TYPE_AAAA, None),
        )
        .await;
        assert_eq!(u16::from_be_bytes([r[0], r[1]]), id);
        assert_eq!(decode(&r).2, ips(&["fd00:96::10"]));
    }
    // Two connections at most: a third is closed at once, unanswered.
    let mut second = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let r = tcp_ask(&mut second, &q).await;
    assert_eq!(decode(&r).0, 0);
    let mut third = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let _ = write_frame(&mut third, &q).await;
    let refused = tokio::time::timeout(Duration::from_secs(2), read_frame(&mut third))
        .await
        .unwrap();
    assert!(
        !matches!(refused, Ok(Some(_))),
        "over the limit: {refused:?}"
    );

    // An idle connection is closed after the idle timeout, which frees its slot.
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(2), read_frame(&mut first))
        .await
        .unwrap();
    assert!(matches!(closed, Ok(None) | Err(_)), "{closed:?}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    let mut again = tokio::net::TcpStream::connect(tcp).await.unwrap();
    let r = tcp_ask(&mut again, &q).await;
    assert_eq!(decode(&r).2, ips(&["10.96.0.10"]));
}
