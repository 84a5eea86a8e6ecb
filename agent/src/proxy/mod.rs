//! The data path: listeners inside pods and the byte copying between a captured client and
//! its destination.
//!
//! - [`outbound`]: `127.0.0.1:15001` in each pod; connections leave directly (a destination
//!   outside the mesh), through the destination pod's namespace (same node), or in an HBONE
//!   tunnel (another node);
//! - [`inbound`]: `:15008` (HBONE, mutual TLS) and `:15006` (plaintext steered by
//!   `sk_lookup`) in each pod, where inbound policy is enforced;
//! - [`admission`]: the one inbound decision all three inbound ways (HBONE, plaintext and
//!   same-node delivery) take;
//! - [`record`]: the one record (labels, counters, access log) of every connection.

pub mod admission;
pub mod attempts;
pub mod copy;
pub mod inbound;
pub mod outbound;
pub mod record;
pub mod registry;
pub mod replay;

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use parking_lot::RwLock;
use tokio::net::{TcpSocket, TcpStream};
use tracing::debug;
use weft_ebpf_common::{HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
use weft_link::identity::{SpiffeId, TrustDomain};

use crate::{
    capture::Capture,
    identity::Identities,
    inpod::{Netns, agent_socket},
    metrics::Metrics,
    policy::PolicyIndex,
    state::{Workload, WorkloadStore, WorkloadUid},
};
use weft_mesh::{
    lb::{Balancer, SplitMix},
    service::ServiceIndex,
};

/// What every connection handler needs; one per agent, shared.
pub struct ProxyContext {
    pub capture: Arc<Capture>,
    /// This node's name: workloads scheduled here are reached without a tunnel.
    pub node: String,
    pub trust_domain: TrustDomain,
    /// Replaced whole when the mesh's workloads change; each connection reads one snapshot.
    pub workloads: Arc<ArcSwap<WorkloadStore>>,
    /// Replaced whole when policies change.
    pub policies: Arc<ArcSwap<PolicyIndex>>,
    /// Service VIPs, replaced whole when services change.
    pub services: Arc<ArcSwap<ServiceIndex>>,
    /// Which endpoint of a service a connection goes to, and their passive health.
    pub lb: Arc<Balancer>,
    /// Random numbers for the load balancer's picks.
    pub random: SplitMix,
    /// Live inbound connections, re-checked when policy or workloads change.
    pub connections: Arc<registry::ConnectionRegistry>,
    /// Certificates of the identities of this node's workloads.
    pub identities: Arc<Identities>,
    /// The pods enrolled on this node, by uid, for same-node delivery.
    pub pods: RwLock<HashMap<WorkloadUid, Arc<outbound::Pod>>>,
    pub metrics: Arc<Metrics>,
    /// The agent's own network namespace, to return to after creating a socket in a pod's.
    pub home: Netns,
    pub connect_timeout: Duration,
    /// Ports no connection may reach through the agent.
    pub agent_ports: AgentPorts,
    /// Limits and timeouts of the HBONE listeners (port 15008); their drain timeout is
    /// `--drain-deadline`, so inbound tunnels drain as outbound connections do.
    pub hbone: weft_link::hbone::ServerOptions,
}

/// The agent's own ports: the mesh ports it listens on in every pod (15001, 15006, 15008) and
/// the node's admin, metrics and readiness ports. A connection or CONNECT to one of them is
/// refused, as ztunnel refuses them: the agent would otherwise connect to itself, and a
/// connection to a pod's 15006 would be accepted by 15006 again, without end, until the
/// agent runs out of file descriptors.
#[derive(Debug, Clone)]
pub struct AgentPorts(Vec<u16>);

impl AgentPorts {
    /// The mesh ports and `node_ports` (the admin, metrics and readiness ports).
    pub fn new(node_ports: impl IntoIterator<Item = u16>) -> Self {
        let mut ports = vec![OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT];
        ports.extend(node_ports);
        ports.sort_unstable();
        ports.dedup();
        AgentPorts(ports)
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.binary_search(&port).is_ok()
    }
}

impl ProxyContext {
    /// The SPIFFE identity of `w` in this mesh's trust domain.
    pub fn identity_of(&self, w: &Workload) -> Option<SpiffeId> {
        w.identity(&self.trust_domain)
    }

    /// Connects to `dst` from inside `netns` with an agent socket (marked, never captured).
    pub async fn connect_from(&self, netns: &Netns, dst: SocketAddr) -> io::Result<TcpStream> {
        let socket = netns
            .run(&self.home, || agent_socket(&dst))
            .map_err(io::Error::other)??;
        let socket = TcpSocket::from_std_stream(socket.into());
        tokio::time::timeout(self.connect_timeout, socket.connect(dst))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

/// Pending connections per listener; a burst beyond this gets SYN retries.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds a listener on `addr` inside the pod's namespace with the agent's socket options.
/// An IPv6 listener is IPv6-only unless `dual_stack`.
pub fn listen_in_pod(
    pod: &outbound::Pod,
    home: &Netns,
    addr: SocketAddr,
    dual_stack: bool,
) -> Result<tokio::net::TcpListener, outbound::ListenerError> {
    let bind_err = |source| outbound::ListenerError::Bind {
        addr,
        netns: pod.netns.path().display().to_string(),
        source,
    };
    let socket = pod
        .netns
        .run(home, || -> io::Result<socket2::Socket> {
            let socket = agent_socket(&addr)?;
            socket.set_reuse_address(true)?;
            if addr.is_ipv6() {
                socket.set_only_v6(!dual_stack)?;
            }
            socket.bind(&addr.into())?;
            socket.listen(LISTEN_BACKLOG)?;
            Ok(socket)
        })?
        .map_err(bind_err)?;
    tokio::net::TcpListener::from_std(socket.into()).map_err(bind_err)
}

/// A workload's address of `family`'s kind (the source address a same-node destination is
/// told about), or its first.
pub fn address_like(w: &Workload, like: IpAddr) -> Option<IpAddr> {
    w.ips
        .iter()
        .find(|ip| ip.is_ipv4() == like.to_canonical().is_ipv4())
        .or_else(|| w.ips.first())
        .copied()
}

/// A one-line hint for a failed connect to an application.
pub fn connect_hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => "nothing listens on that port",
        io::ErrorKind::TimedOut => "no answer: is the destination up and routable from the pod?",
        _ => "the destination is unreachable from the pod",
    }
}

/// Closes with a reset, so the client sees "connection reset" at once rather than an orderly
/// end of a stream that never carried its answer.
pub fn reset(stream: TcpStream) {
    // A zero linger never blocks: close sends RST and frees the socket at once.
    if let Err(err) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
        debug!(%err, "setting SO_LINGER failed");
    }
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_own_ports_are_the_mesh_ports_and_the_node_ports() {
        let ports = AgentPorts::new([15000, 15020, 15021, 15020]);
        for port in [15000, 15001, 15006, 15008, 15020, 15021] {
            assert!(ports.contains(port), "{port}");
        }
        for port in [80, 8000, 15007, 15009, 15012, 15090] {
            assert!(!ports.contains(port), "{port}");
        }
        // Configured elsewhere, the node ports follow.
        let moved = AgentPorts::new([9000]);
        assert!(moved.contains(9000) && moved.contains(15006) && !moved.contains(15020));
    }
}
