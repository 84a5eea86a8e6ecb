//! What a peer cannot take from the agent: metric series (a port scan adds none), sockets on
//! its HTTP endpoints (header and idle timeouts), HBONE connections beyond the per-identity
//! limit, and CPU while it is out of file descriptors. Each test exceeds one limit and finds
//! the agent still serving others.

// The helpers below are not `#[test]` functions; a failed step in them should fail the test
// like any assertion.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::{NetnsSockets, TD, id_of, svid};
use common::{agent, eventually, require_root};
use rcgen::{Issuer, KeyPair};
use weft_link::hbone::{ClientOptions, ConnectRequest, HboneClient, HboneStream};
use weft_link::identity::{SpiffeId, TrustDomain};
use weft_link::tls::{CertResolver, ClientTls, TrustBundle};
use weft_tests::scenario;
use weft_tests::testbed::{Config, Testbed, TestbedGuard, netns};

/// A testbed whose agents run with `args` appended.
fn mesh_with(
    name: &str,
    nodes: u32,
    pods: u32,
    unenrolled: &[&str],
    args: &[&str],
) -> TestbedGuard {
    require_root();
    let mut agent = agent();
    agent
        .extra_args
        .extend(args.iter().map(|a| (*a).to_owned()));
    let config = Config::named(name)
        .size(nodes, pods)
        .agent(agent)
        .unenrolled(unenrolled);
    TestbedGuard::up(&config).unwrap_or_else(|e| panic!("bringing {name} up: {e}"))
}

/// The number of `istio_tcp_*` series `node`'s agent exports.
fn istio_series(tb: &Testbed, node: &str) -> Vec<String> {
    tb.metrics_text(node)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("istio_tcp"))
        .map(|l| {
            l.rsplit_once(' ')
                .map_or(l, |(series, _)| series)
                .to_owned()
        })
        .collect()
}

/// Connects from `pod`'s network namespace to each of `ports` of `ip` and closes again.
fn scan(tb: &Testbed, pod: &str, ip: IpAddr, ports: std::ops::Range<u16>) {
    let netns = tb.pod(pod).unwrap().netns_path.clone();
    netns::in_netns(&netns, || {
        for port in ports {
            // The agent accepts (sk_lookup steers every port to it), finds nothing listening
            // in the pod and resets; a refused connect is as good for the scan.
            let _ = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(5));
        }
    })
    .unwrap();
}

#[test]
fn a_port_scan_from_outside_the_mesh_adds_no_metric_series() {
    let tb = mesh_with("weft-e2e-lim-scan", 1, 2, &["pod-1b"], &[]);
    let ip: IpAddr = tb.pod("pod-1a").unwrap().ipv4.into();
    let closed = |tb: &Testbed| {
        tb.metrics("node-1").unwrap().sum(
            scenario::CONNECTIONS_CLOSED,
            &[
                ("reporter", "destination"),
                ("destination_workload", "pod-1a"),
            ],
        )
    };

    scan(&tb, "pod-1b", ip, 20_000..20_005);
    eventually(
        "the first scan in the metrics",
        Duration::from_secs(10),
        || closed(&tb) >= 5.0,
    );
    let after_five = istio_series(&tb, "node-1");
    assert!(!after_five.is_empty(), "the scan should be counted");

    scan(&tb, "pod-1b", ip, 20_005..20_045);
    eventually(
        "the second scan in the metrics",
        Duration::from_secs(10),
        || closed(&tb) >= 45.0,
    );
    let after_forty_five = istio_series(&tb, "node-1");
    assert_eq!(
        after_five.len(),
        after_forty_five.len(),
        "forty more ports scanned added series:\n{}",
        after_forty_five.join("\n")
    );
    for series in &after_forty_five {
        assert!(
            !series.contains(":2000") && !series.contains("destination_address"),
            "a label carries what the scanner chose: {series}"
        );
    }
}

/// The soft and hard open-files limits of process `pid`.
fn nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

fn agent_pid(tb: &Testbed, node: &str) -> u32 {
    tb.node(node).unwrap().agent.unwrap().pid
}

#[test]
fn the_agent_raises_its_open_files_limit_and_reports_it() {
    require_root();
    // The agent inherits this process's limits: start it with a soft limit below the hard one.
    let (soft, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let low = hard.min(1024);
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, low, hard).unwrap();
    let tb = mesh_with("weft-e2e-lim-nofile", 1, 1, &[], &[]);
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard).unwrap();

    let (agent_soft, agent_hard) = nofile(agent_pid(&tb, "node-1"));
    assert_eq!(agent_hard, hard);
    assert_eq!(
        agent_soft, hard,
        "the soft limit should be raised to the hard one"
    );
    let reported = tb
        .metrics("node-1")
        .unwrap()
        .sum("weft_open_files_limit", &[]);
    assert_eq!(reported, agent_soft as f64);
    let log = std::fs::read_to_string(tb.agent_log("node-1").unwrap()).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("open-files limit") && l.contains(&format!("before={low}"))),
        "the start should log the limit it found and the one it set:\n{log}"
    );
}

/// Connects to `node`'s metrics port from inside the node.
fn connect_metrics(tb: &Testbed, node: &str) -> TcpStream {
    let n = tb.node(node).unwrap();
    let addr = SocketAddr::new("127.0.0.1".parse().unwrap(), n.metrics_addr.port());
    netns::in_netns(&n.netns_path, || TcpStream::connect(addr))
        .unwrap()
        .unwrap()
}

/// Reads until the peer closes; `false` if it is still open after `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn a_slowloris_on_the_metrics_port_is_cut_while_metrics_still_answer() {
    let tb = mesh_with(
        "weft-e2e-lim-slow",
        1,
        1,
        &[],
        &["--http-header-timeout", "1s"],
    );
    let mut slow = connect_metrics(&tb, "node-1");
    let mut writer = slow.try_clone().unwrap();
    // One more byte of a header every 100 ms: never idle, never a complete request.
    let trickle = std::thread::spawn(move || {
        let mut sent = writer.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ");
        while sent.is_ok() {
            std::thread::sleep(Duration::from_millis(100));
            sent = writer.write_all(b"s");
        }
    });
    // Others are served meanwhile.
    tb.metrics("node-1").unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(15)),
        "a client still sending headers after --http-header-timeout should be cut"
    );
    trickle.join().unwrap();
    tb.metrics("node-1").unwrap();
}

#[test]
fn out_of_file_descriptors_the_agent_backs_off_and_serves_again() {
    let tb = mesh_with("weft-e2e-lim-emfile", 1, 1, &[], &[]);
    let pid = agent_pid(&tb, "node-1");
    let (_, hard) = nofile(pid);
    // A new descriptor takes the lowest free number, which must be below the soft limit: a
    // limit at the lowest free number leaves none.
    let open: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|fd| !open.contains(fd)).unwrap();
    let prlimit = |soft: u64| {
        let status = std::process::Command::new("prlimit")
            .args([
                "--pid",
                &pid.to_string(),
                &format!("--nofile={soft}:{hard}"),
            ])
            .status()
            .unwrap();
        assert!(status.success(), "prlimit failed");
    };
    // No descriptor left: every accept fails with EMFILE while the connections wait in the
    // listener's queue.
    prlimit(lowest_free);
    let mut waiting: Vec<TcpStream> = (0..4).map(|_| connect_metrics(&tb, "node-1")).collect();
    for stream in &mut waiting {
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
    }
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command (which may hold spaces): utime and stime are 14 and 15.
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    let window = Duration::from_secs(3);
    let before = cpu();
    std::thread::sleep(window);
    let used = (cpu() - before) as f64 / ticks;
    // Back to a limit with room: the queued connections are served.
    prlimit(hard);
    assert!(
        used < window.as_secs_f64() / 4.0,
        "the agent used {used:.2}s of CPU in {window:?} while out of descriptors: an accept \
         loop spins instead of backing off"
    );
    for stream in &mut waiting {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    tb.metrics("node-1").unwrap();
}

// === HBONE connections per peer identity ===

/// Opens a tunnel to `pod`'s HTTP server through its port 15008 as `who`, from `from`'s
/// network namespace, on a connection of its own (a client per tunnel: its pool holds one).
async fn open_tunnel(
    tb: &Testbed,
    from: &str,
    pod: &str,
    issuer: &Issuer<'_, KeyPair>,
    who: &SpiffeId,
) -> Result<(HboneClient, HboneStream), String> {
    let control = tb.state_dir().join("control");
    let root_pem = std::fs::read_to_string(control.join("root-cert.pem")).unwrap();
    let td: TrustDomain = TD.parse().unwrap();
    let bundle = Arc::new(TrustBundle::from_pem(td, root_pem.as_bytes()).unwrap());
    let now = time::OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let tls = ClientTls::new(
        Arc::new(CertResolver::new(svid(issuer, who, now - hour, 2 * hour))),
        bundle,
    );
    let ip: IpAddr = tb.pod(pod).unwrap().ipv4.into();
    let req = ConnectRequest::new(
        SocketAddr::new(ip, 15008),
        id_of(tb, pod),
        SocketAddr::new(ip, scenario::HTTP_PORT),
    );
    let netns = Path::new("/run/netns").join(&tb.node(from).unwrap().netns);
    let hbone = HboneClient::new(Arc::new(NetnsSockets(netns)), ClientOptions::default());
    let tunnel = hbone
        .connect(&tls, req)
        .await
        .map_err(|e| weft_link::error_chain(&e))?;
    Ok((hbone, tunnel))
}

/// Sends the rest of a `GET /whoami.txt` (after `sent`) and checks the status line.
async fn finish_whoami(tunnel: &mut HboneStream, sent: &[u8]) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = b"GET /whoami.txt HTTP/1.1\r\nHost: x\r\n\r\n";
    tunnel
        .write_all(&request[sent.len()..])
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0; 12];
    tunnel
        .read_exact(&mut buf)
        .await
        .map_err(|e| weft_link::error_chain(&e))?;
    assert_eq!(&buf, b"HTTP/1.0 200");
    Ok(())
}

/// [`open_tunnel`], then a request through it.
async fn tunnel_as(
    tb: &Testbed,
    from: &str,
    pod: &str,
    issuer: &Issuer<'_, KeyPair>,
    who: &SpiffeId,
) -> Result<(HboneClient, HboneStream), String> {
    let (hbone, mut tunnel) = open_tunnel(tb, from, pod, issuer, who).await?;
    finish_whoami(&mut tunnel, b"").await?;
    Ok((hbone, tunnel))
}

/// The mesh CA of the testbed, to issue SVIDs for any identity.
fn mesh_ca(tb: &Testbed) -> Issuer<'static, KeyPair> {
    let control = tb.state_dir().join("control");
    let root_pem = std::fs::read_to_string(control.join("root-cert.pem")).unwrap();
    let root_key =
        KeyPair::from_pem(&std::fs::read_to_string(control.join("root-key.pem")).unwrap()).unwrap();
    Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap()
}

#[test]
fn an_idle_hbone_connection_is_closed_and_a_busy_one_is_not() {
    let tb = mesh_with(
        "weft-e2e-lim-idle",
        2,
        1,
        &[],
        &["--hbone-idle-timeout", "1s"],
    );
    let _server = scenario::serve_http(&tb, "pod-2a").unwrap();
    let ca = mesh_ca(&tb);
    let client = id_of(&tb, "pod-1a");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A tunnel open (half a request sent) for longer than the idle timeout keeps its
        // connection.
        let (busy_client, mut busy) = open_tunnel(&tb, "node-1", "pod-2a", &ca, &client)
            .await
            .unwrap();
        let half = b"GET /whoami.txt HTTP/1.1\r\n";
        tokio::io::AsyncWriteExt::write_all(&mut busy, half)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(busy_client.pooled_connections(), 1);
        finish_whoami(&mut busy, half).await.unwrap();

        // Once its tunnel is over, the connection is closed by the server (GOAWAY), well
        // before the client's own pool would retire it.
        drop(busy);
        let deadline = Instant::now() + Duration::from_secs(10);
        while busy_client.pooled_connections() > 0 {
            assert!(
                Instant::now() < deadline,
                "the idle HBONE connection is still open"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn one_identity_gets_at_most_its_hbone_connections_while_another_connects() {
    let tb = mesh_with(
        "weft-e2e-lim-peercap",
        2,
        1,
        &[],
        &["--hbone-max-connections-per-identity", "2"],
    );
    let _server = scenario::serve_http(&tb, "pod-2a").unwrap();
    let mesh_ca = mesh_ca(&tb);
    let greedy = id_of(&tb, "pod-1a");
    let ns = tb.pod("pod-1a").unwrap().namespace.clone();
    let other = SpiffeId::new(TD.parse().unwrap(), &ns, "other").unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let first = tunnel_as(&tb, "node-1", "pod-2a", &mesh_ca, &greedy)
            .await
            .unwrap();
        let _second = tunnel_as(&tb, "node-1", "pod-2a", &mesh_ca, &greedy)
            .await
            .unwrap();
        assert!(
            tunnel_as(&tb, "node-1", "pod-2a", &mesh_ca, &greedy)
                .await
                .is_err(),
            "a third connection of one identity must be refused"
        );
        tunnel_as(&tb, "node-1", "pod-2a", &mesh_ca, &other)
            .await
            .unwrap();
        // A closed connection gives its place back.
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match tunnel_as(&tb, "node-1", "pod-2a", &mesh_ca, &greedy).await {
                Ok(_) => break,
                Err(err) => {
                    assert!(Instant::now() < deadline, "no place came back: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    let log = std::fs::read_to_string(tb.agent_log("node-2").unwrap()).unwrap();
    assert!(
        log.contains("HBONE connection refused"),
        "the refusal should be logged"
    );
    let refused = tb.metrics("node-2").unwrap().sum(
        "weft_connections_denied_total",
        &[("reason", "hbone_connections_per_identity")],
    );
    assert!(refused >= 1.0, "the refusal should be counted");
}
