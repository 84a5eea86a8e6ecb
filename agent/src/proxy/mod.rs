//! The data path: listeners inside pods and the byte copying between a captured client and
//! its destination.
//!
//! - [`outbound`]: `127.0.0.1:15001` in each pod; connections leave directly (a destination
//!   outside the mesh), through the destination pod's namespace (same node), or in an HBONE
//!   tunnel (another node);
//! - [`inbound`]: `:15008` (HBONE, mutual TLS) and `:15006` (plaintext steered by
//!   `sk_lookup`) in each pod, where inbound policy is enforced.

pub mod copy;
pub mod inbound;
pub mod outbound;
pub mod registry;

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
use weft_link::identity::{SpiffeId, TrustDomain};

use crate::{
    capture::Capture,
    identity::Identities,
    inpod::{Netns, agent_socket},
    metrics::Metrics,
    policy::PolicyIndex,
    state::{Workload, WorkloadStore, WorkloadUid},
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

/// Runs `f` when dropped (on every exit path of a connection).
pub fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
