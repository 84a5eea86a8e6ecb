//! Privileged: the sk_lookup program steers plaintext TCP arriving at a pod to the agent's
//! inbound listener (15006) inside the pod's network namespace, over IPv4 and IPv6, and leaves
//! HBONE, in-pod loopback traffic and (once detached) everything alone.
//!
//! Two network namespaces of its own, joined by a veth pair: A is "outside", B is the pod.
//! Needs root (netns, veth, BPF); without it the test fails, it never skips.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions; a failure is a test failure"
)]

use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};
use weft_agent::{
    capture::{Capture, CaptureError},
    inpod::Netns,
};
use weft_ebpf_common::{INBOUND_PLAINTEXT_PORT, Verdict};

const A4: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 2);
const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5eed, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5eed, 0, 0, 0, 0, 0, 2);
const APP_PORT: u16 = 8080;
const HBONE_PORT: u16 = 15008;
const WAIT: Duration = Duration::from_secs(5);

#[test]
fn plaintext_to_a_pod_is_steered_to_the_inbound_listener() {
    require_root();
    let pair = NetnsPair::new("steer");
    let home = Netns::current().unwrap();
    let a = Netns::open(&pair.path_a()).unwrap();
    let b = Netns::open(&pair.path_b()).unwrap();

    // Inside B: the agent's inbound listener (dual-stack [::]:15006, the rule documented on
    // `Capture::attach_inbound`), the application on B's addresses, something on HBONE.
    let (inbound, app4, app6, hbone) = b
        .run(&home, || {
            (
                listen(SocketAddr::new(
                    Ipv6Addr::UNSPECIFIED.into(),
                    INBOUND_PLAINTEXT_PORT,
                )),
                listen(SocketAddr::new(B4.into(), APP_PORT)),
                listen(SocketAddr::new(B6.into(), APP_PORT)),
                listen(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), HBONE_PORT)),
            )
        })
        .unwrap();

    let (capture, _logger) = Capture::load(0).expect("loading the capture programs");
    let links = capture
        .attach_inbound(&pair.path_b(), &[B4.into(), B6.into()], &inbound)
        .expect("attaching inbound steering to namespace B");

    for (client_ns, dst) in [(&a, B4.into()), (&a, B6.into())] {
        let dst = SocketAddr::new(dst, APP_PORT);
        let _client = connect_from(client_ns, &home, dst);
        let accepted = accept_within(&inbound, WAIT)
            .unwrap_or_else(|| panic!("A -> {dst} was not steered to the 15006 listener"));
        let local = accepted.local_addr().unwrap();
        assert_eq!(
            SocketAddr::new(local.ip().to_canonical(), local.port()),
            dst,
            "the steered socket's local address must be the original destination"
        );
        assert_nothing_pending(&app4, "app (v4)");
        assert_nothing_pending(&app6, "app (v6)");
    }

    // HBONE is the mesh's own port: never steered.
    let dst = SocketAddr::new(B4.into(), HBONE_PORT);
    let _client = connect_from(&a, &home, dst);
    accept_within(&hbone, WAIT).expect("A -> B:15008 must reach the HBONE listener");
    assert_nothing_pending(&inbound, "15006 after a connection to 15008");

    // B to its own address goes over loopback (though the kernel reports eth0 as the ingress
    // device): the application, not the agent.
    for (app, dst) in [(&app4, IpAddr::from(B4)), (&app6, B6.into())] {
        let dst = SocketAddr::new(dst, APP_PORT);
        let _client = connect_from(&b, &home, dst);
        accept_within(app, WAIT)
            .unwrap_or_else(|| panic!("B -> {dst} (loopback) must reach the app directly"));
        assert_nothing_pending(&inbound, "15006 after an in-pod connection");
    }

    let counts = capture.verdict_counts();
    let count = |v: Verdict| counts.iter().find(|(c, _)| *c == v).map_or(0, |(_, n)| *n);
    assert!(count(Verdict::InboundSteered) >= 2, "{counts:?}");
    assert!(count(Verdict::InboundPassMeshPort) >= 1, "{counts:?}");
    assert!(count(Verdict::InboundPassLocal) >= 2, "{counts:?}");
    assert_eq!(count(Verdict::InboundAssignFailed), 0, "{counts:?}");

    // Detached: the application gets its connections again.
    drop(links);
    for (app, dst) in [(&app4, IpAddr::from(B4)), (&app6, B6.into())] {
        let dst = SocketAddr::new(dst, APP_PORT);
        let _client = connect_from(&a, &home, dst);
        accept_within(app, WAIT)
            .unwrap_or_else(|| panic!("after detaching, A -> {dst} must reach the app"));
        assert_nothing_pending(&inbound, "15006 after detaching");
    }
}

#[test]
fn unusable_inbound_listeners_are_refused_at_enrolment() {
    require_root();
    let pair = NetnsPair::new("refuse");
    let home = Netns::current().unwrap();
    let b = Netns::open(&pair.path_b()).unwrap();
    let (capture, _logger) = Capture::load(0).expect("loading the capture programs");
    let both: [IpAddr; 2] = [B4.into(), B6.into()];

    let expect_refusal =
        |listener: &TcpListener, ips: &[IpAddr], what: &str, needle: &str| match capture
            .attach_inbound(&pair.path_b(), ips, listener)
        {
            Err(err @ CaptureError::InboundListener { .. }) => {
                let msg = err.to_string();
                assert!(msg.contains(needle), "{what}: {msg}");
                assert!(
                    msg.contains(&pair.name_b),
                    "{what} must name the netns: {msg}"
                );
            }
            Err(other) => panic!("{what}: wrong error {other}"),
            Ok(_) => panic!("{what}: was accepted"),
        };

    // Created in the node's (here: the test's) namespace, not the pod's.
    let outside = listen(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0));
    expect_refusal(
        &outside,
        &both,
        "listener outside the pod",
        "not created inside",
    );

    let (v4_only, v6_only) = b
        .run(&home, || {
            let v4 = listen(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
            let v6 = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
            v6.set_only_v6(true).unwrap();
            v6.bind(&SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0).into())
                .unwrap();
            v6.listen(16).unwrap();
            (v4, TcpListener::from(v6))
        })
        .unwrap();
    expect_refusal(
        &v4_only,
        &both,
        "AF_INET listener, IPv6 pod IP",
        "IPv6 pod IP",
    );
    expect_refusal(
        &v6_only,
        &both,
        "v6-only listener, IPv4 pod IP",
        "IPv4 pod IP",
    );

    // A family-matched listener is fine, and the error for a vanished netns names its path.
    let links = capture
        .attach_inbound(&pair.path_b(), &[B4.into()], &v4_only)
        .expect("an AF_INET listener for IPv4 pod IPs only");
    drop(links);
    let gone = Path::new("/run/netns/weft-skl-does-not-exist");
    let err = capture
        .attach_inbound(gone, &[B4.into()], &v4_only)
        .err()
        .expect("a missing netns must fail");
    assert!(err.to_string().contains("weft-skl-does-not-exist"), "{err}");
}

// === helpers ===

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, veth, BPF): run it as root, e.g. through \
         `cargo xtask test`; it fails rather than skipping so CI cannot pass without it"
    );
}

/// Two named network namespaces joined by a veth pair, deleted on drop (also on panic).
struct NetnsPair {
    name_a: String,
    name_b: String,
}

impl NetnsPair {
    fn new(tag: &str) -> Self {
        let pid = std::process::id();
        let pair = NetnsPair {
            name_a: format!("weft-skl-{pid}-{tag}-a"),
            name_b: format!("weft-skl-{pid}-{tag}-b"),
        };
        run("ip", &["netns", "add", &pair.name_a]);
        run("ip", &["netns", "add", &pair.name_b]);
        pair.ip(&pair.name_a, &["link", "set", "lo", "up"]);
        pair.ip(&pair.name_b, &["link", "set", "lo", "up"]);
        // Created inside A with its peer moved straight into B: no name in the host namespace.
        pair.ip(
            &pair.name_a,
            &[
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &pair.name_b,
            ],
        );
        for (ns, v4, v6) in [(&pair.name_a, A4, A6), (&pair.name_b, B4, B6)] {
            pair.ip(ns, &["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
            pair.ip(
                ns,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
            pair.ip(ns, &["link", "set", "eth0", "up"]);
        }
        pair
    }

    fn path_a(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name_a)
    }

    fn path_b(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name_b)
    }

    /// `ip` inside a namespace through nsenter (`ip netns exec` would remount /sys).
    fn ip(&self, ns: &str, args: &[&str]) {
        let net = format!("--net=/run/netns/{ns}");
        let mut all = vec![net.as_str(), "ip"];
        all.extend_from_slice(args);
        run("nsenter", &all);
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for name in [&self.name_a, &self.name_b] {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("running {program}: {err}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A non-blocking listener; `[::]` listeners are dual-stack (IPV6_V6ONLY off).
fn listen(addr: SocketAddr) -> TcpListener {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
    if addr.is_ipv6() {
        socket.set_only_v6(false).unwrap();
    }
    socket.set_reuse_address(true).unwrap();
    socket
        .bind(&addr.into())
        .unwrap_or_else(|err| panic!("bind {addr}: {err}"));
    socket.listen(64).unwrap();
    socket.set_nonblocking(true).unwrap();
    TcpListener::from(socket)
}

/// Connects from inside `ns`; the handshake is complete when this returns.
fn connect_from(ns: &Netns, home: &Netns, dst: SocketAddr) -> TcpStream {
    ns.run(home, || TcpStream::connect_timeout(&dst, WAIT))
        .unwrap()
        .unwrap_or_else(|err| panic!("connect to {dst}: {err}"))
}

fn accept_within(listener: &TcpListener, wait: Duration) -> Option<TcpStream> {
    let deadline = Instant::now() + wait;
    loop {
        match listener.accept() {
            Ok((stream, _)) => return Some(stream),
            Err(err) if err.kind() == ErrorKind::WouldBlock => {}
            Err(err) => panic!("accept: {err}"),
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn assert_nothing_pending(listener: &TcpListener, what: &str) {
    if let Some(stream) = accept_within(listener, Duration::from_millis(100)) {
        panic!(
            "{what}: unexpected connection from {:?} to {:?}",
            stream.peer_addr(),
            stream.local_addr()
        );
    }
}
