//! The library half of `cargo xtask bench`: what is compared (targets), what is measured
//! (scenarios), how CPUs are laid out, the set-up inside a testbed, the runs, and the
//! report. The xtask half builds the binaries, owns the command line and draws the charts.
//!
//! Method, in short: every target runs on the same testbed in the same run; the scenarios
//! alternate between targets (A B C A B C ..., the order rotated every round, the scenario
//! order shuffled per round) so that drift in the machine spreads over all of them; every
//! figure is kept per round and reported as a median with its spread and as a ratio to the
//! un-meshed baseline on the same path.

pub mod env;
mod error;
pub mod gateway;
pub mod load;
pub mod machine;
pub mod peers;
pub mod procstat;
pub mod report;
pub mod run;
pub mod stats;

pub use error::{Error, Result};

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The benchmark testbed's name: its own, so it never disturbs a developer's "weft".
pub const TESTBED_NAME: &str = "weft-bench";
/// Two nodes of four pods. Weft: pod-1a (enrolled client) to pod-1b (same-node server) and
/// pod-2a (cross-node server), all enrolled. Baselines and the other proxies: pod-1c (an
/// un-enrolled client) to pod-1d (same-node) and pod-2c (cross-node), un-enrolled servers, so
/// that no agent (nor its inbound steering) is on the baseline path.
pub const NODES: u32 = 2;
pub const PODS_PER_NODE: u32 = 4;
/// The pods no agent enrols (see [`crate::testbed::Config::unenrolled`]).
pub const UNENROLLED: &[&str] = &["pod-1c", "pod-1d", "pod-2c", "pod-2d"];

/// How the weft cross-node path is labelled.
pub const WEFT_CROSS_LABEL: &str = "weft cross-node (HBONE mTLS)";
/// The target that reaches the cross-node server through a service VIP, and the one it is
/// compared with (the same path, dialled at the pod's own address).
pub const WEFT_VIP: &str = "weft-vip";
pub const WEFT_CROSS: &str = "weft-cross";
/// The VIP of the service `bench` (selecting pod-2a, the HTTP and iperf ports), which the
/// client-side agent resolves to pod-2a's address.
pub const BENCH_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 100);

/// The benchmark HTTP server's port (nginx in the server pods).
pub const HTTP_PORT: u16 = 8080;
/// iperf3's port in the server pods.
pub const IPERF_PORT: u16 = 5201;
/// The 1 KiB object the HTTP scenarios fetch.
pub const HTTP_PATH: &str = "/1k";

/// A service in the server pods that a scenario talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Service {
    Http,
    Iperf,
}

impl Service {
    pub const ALL: [Service; 2] = [Service::Http, Service::Iperf];

    /// The port the server listens on.
    pub fn port(self) -> u16 {
        match self {
            Service::Http => HTTP_PORT,
            Service::Iperf => IPERF_PORT,
        }
    }

    /// Offset of this service's ports in a peer proxy's port range.
    fn index(self) -> u16 {
        match self {
            Service::Http => 0,
            Service::Iperf => 1,
        }
    }
}

/// Another proxy run from Debian's packages as a mutual-TLS TCP tunnel: a client-side
/// instance in node-1's namespace, a server-side instance in node-2's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Peer {
    Haproxy,
    Nginx,
}

impl Peer {
    pub const ALL: [Peer; 2] = [Peer::Haproxy, Peer::Nginx];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Haproxy => "haproxy",
            Peer::Nginx => "nginx",
        }
    }

    /// Client-side listening port for `service` (on node-1's pod gateway address).
    pub fn client_port(self, service: Service) -> u16 {
        self.port_base() + service.index()
    }

    /// Server-side TLS port for `service` (on node-2's fabric address).
    pub fn server_port(self, service: Service) -> u16 {
        self.port_base() + 100 + service.index()
    }

    /// Far from the agent's 15000-15021 and from the servers' ports.
    fn port_base(self) -> u16 {
        match self {
            Peer::Haproxy => 20000,
            Peer::Nginx => 21000,
        }
    }
}

/// What carries the traffic of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Via {
    /// Nothing: the client's pod is not enrolled.
    Direct,
    /// node-1's agent captures the client's connections.
    Weft,
    /// A pair of another proxy's processes.
    Peer(Peer),
}

/// One thing compared: a client pod, a server pod and what lies between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Short, stable id (results.json, `--target`).
    pub id: String,
    /// What the report calls it.
    pub label: String,
    pub client: String,
    pub server: String,
    pub via: Via,
    /// The id of the target this one is compared with: the un-meshed path between the
    /// same nodes.
    pub baseline: String,
    /// The client dials the service VIP [`BENCH_VIP`] instead of the server's address.
    #[serde(default)]
    pub vip: bool,
}

/// node-1's address on its pods' links, where the client-side peer proxies listen: the
/// un-enrolled client reaches it in one hop, like a node-local proxy.
pub const NODE1_POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 78, 1, 1);
/// node-2's fabric address, where the server-side peer proxies listen.
pub const NODE2_FABRIC: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 12);
/// The server pods' addresses (see the testbed's address plan).
pub const POD_1B: Ipv4Addr = Ipv4Addr::new(10, 78, 1, 12);
pub const POD_1D: Ipv4Addr = Ipv4Addr::new(10, 78, 1, 14);
pub const POD_2A: Ipv4Addr = Ipv4Addr::new(10, 78, 2, 11);
pub const POD_2C: Ipv4Addr = Ipv4Addr::new(10, 78, 2, 13);

impl Target {
    fn new(id: &str, label: &str, client: &str, server: &str, via: Via, baseline: &str) -> Self {
        Self {
            id: id.to_owned(),
            label: label.to_owned(),
            client: client.to_owned(),
            server: server.to_owned(),
            via,
            baseline: baseline.to_owned(),
            vip: false,
        }
    }

    /// Every target, baselines first.
    pub fn all() -> Vec<Target> {
        let mut targets = vec![
            Target::new(
                "direct",
                "direct cross-node (no mesh)",
                "pod-1c",
                "pod-2c",
                Via::Direct,
                "direct",
            ),
            Target::new(
                "direct-same",
                "direct same-node (no mesh)",
                "pod-1c",
                "pod-1d",
                Via::Direct,
                "direct-same",
            ),
            Target::new(
                "weft-same",
                "weft same-node",
                "pod-1a",
                "pod-1b",
                Via::Weft,
                "direct-same",
            ),
            Target::new(
                WEFT_CROSS,
                WEFT_CROSS_LABEL,
                "pod-1a",
                "pod-2a",
                Via::Weft,
                "direct",
            ),
            Target {
                vip: true,
                ..Target::new(
                    WEFT_VIP,
                    "weft cross-node via service VIP",
                    "pod-1a",
                    "pod-2a",
                    Via::Weft,
                    "direct",
                )
            },
        ];
        for peer in Peer::ALL {
            targets.push(Target::new(
                peer.name(),
                &format!("{} mTLS tunnel (TLS 1.3, 2 proxies)", peer.name()),
                "pod-1c",
                "pod-2c",
                Via::Peer(peer),
                "direct",
            ));
        }
        targets
    }

    /// The server pod's address.
    pub fn server_ip(&self) -> Ipv4Addr {
        match self.server.as_str() {
            "pod-1b" => POD_1B,
            "pod-1d" => POD_1D,
            "pod-2c" => POD_2C,
            _ => POD_2A,
        }
    }

    /// Where the client connects to reach `service`.
    pub fn addr(&self, service: Service) -> SocketAddr {
        match self.via {
            Via::Weft if self.vip => SocketAddr::from((BENCH_VIP, service.port())),
            Via::Direct | Via::Weft => SocketAddr::from((self.server_ip(), service.port())),
            Via::Peer(peer) => SocketAddr::from((NODE1_POD_GATEWAY, peer.client_port(service))),
        }
    }
}

/// Where processes run. On this class of VM a wake-up across CPUs costs milliseconds at the
/// tail, so the layout is part of every figure's name. Every scenario of a run shares one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Load generator, proxies and server all on CPU 0: every figure, cost per request and
    /// per connection included, is then a share of one CPU (the default).
    #[default]
    OneCpu,
    /// Proxies alone on CPU 1, everything else on CPU 0: the proxy's capacity when it has a
    /// CPU to itself (`cargo xtask bench --proxy-own-cpu`).
    ProxyOwnCpu,
}

impl Layout {
    pub fn describe(self) -> &'static str {
        match self {
            Layout::OneCpu => "all on CPU 0",
            Layout::ProxyOwnCpu => "proxy on CPU 1, rest on CPU 0",
        }
    }

    /// The CPU the proxy processes (agents, peers) get.
    pub fn proxy_cpu(self) -> usize {
        match self {
            Layout::OneCpu => 0,
            Layout::ProxyOwnCpu => 1,
        }
    }
}

/// The CPU of load generators and servers in every layout.
pub const WORKLOAD_CPU: usize = 0;

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// One iperf3 stream: bulk throughput.
    Throughput,
    /// Keep-alive requests for 1 KiB, one connection, closed loop.
    Rps1,
    /// The same with 50 connections.
    Rps50,
    /// One request per connection (`Connection: close`): new connections per second.
    Cps,
    /// A fixed request rate, open loop: latency percentiles.
    Latency,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::Throughput,
        Scenario::Rps1,
        Scenario::Rps50,
        Scenario::Cps,
        Scenario::Latency,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Scenario::Throughput => "throughput",
            Scenario::Rps1 => "rps-1",
            Scenario::Rps50 => "rps-50",
            Scenario::Cps => "cps",
            Scenario::Latency => "latency",
        }
    }

    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.id() == id)
    }

    pub fn title(self) -> &'static str {
        match self {
            Scenario::Throughput => "Single-stream throughput (iperf3)",
            Scenario::Rps1 => "Requests per second, 1 connection, 1 KiB responses, keep-alive",
            Scenario::Rps50 => "Requests per second, 50 connections, 1 KiB responses, keep-alive",
            Scenario::Cps => "New connections per second (one request each, Connection: close)",
            Scenario::Latency => {
                "Latency at a fixed request rate (open loop, from intended send time)"
            }
        }
    }
}

/// How long and how hard to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub rounds: u32,
    /// Measured seconds per run (iperf3 `-t`, the load generator's duration).
    pub duration_secs: f64,
    /// Unmeasured seconds before each HTTP run.
    pub warmup_secs: f64,
    /// The latency scenario's request rate, and its connections.
    pub latency_rate: u32,
    pub latency_connections: u32,
    /// Concurrent connections of the connection-churn scenario.
    pub cps_connections: u32,
    /// Where processes run, for every scenario of the run.
    #[serde(default)]
    pub layout: Layout,
    pub scenarios: Vec<Scenario>,
    /// Seed of the per-round scenario shuffle (recorded so a run can be repeated).
    pub seed: u64,
}

impl Plan {
    /// A full run: several rounds of 10-second measurements.
    pub fn full(seed: u64) -> Self {
        Self {
            rounds: 5,
            duration_secs: 10.0,
            warmup_secs: 2.0,
            latency_rate: 1000,
            latency_connections: 4,
            cps_connections: 8,
            layout: Layout::OneCpu,
            scenarios: Scenario::ALL.to_vec(),
            seed,
        }
    }

    /// A smoke run of the harness: one short round; its figures mean nothing.
    pub fn quick(seed: u64) -> Self {
        Self {
            rounds: 1,
            duration_secs: 2.0,
            warmup_secs: 0.5,
            ..Self::full(seed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_consistent() {
        let targets = Target::all();
        for t in &targets {
            assert!(
                targets
                    .iter()
                    .any(|b| b.id == t.baseline && b.via == Via::Direct)
            );
            if t.via == Via::Weft {
                assert!(
                    !UNENROLLED.contains(&t.client.as_str()),
                    "{} is captured",
                    t.id
                );
            } else {
                assert!(
                    UNENROLLED.contains(&t.client.as_str()),
                    "{} is direct",
                    t.id
                );
            }
        }
        let haproxy = targets.iter().find(|t| t.id == "haproxy").unwrap();
        assert_eq!(haproxy.addr(Service::Http).to_string(), "10.78.1.1:20000");
        let cross = targets.iter().find(|t| t.id == "weft-cross").unwrap();
        assert_eq!(cross.addr(Service::Iperf).to_string(), "10.78.2.11:5201");
        assert_eq!(cross.label, WEFT_CROSS_LABEL);
        let vip = targets.iter().find(|t| t.id == WEFT_VIP).unwrap();
        assert_eq!(vip.addr(Service::Http).to_string(), "10.96.0.100:8080");
        assert_eq!(vip.server, cross.server, "the same server, by VIP");
    }

    #[test]
    fn scenario_ids_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::from_id(s.id()), Some(s));
        }
        assert_eq!(Scenario::from_id("nope"), None);
    }
}
