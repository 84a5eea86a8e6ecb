//! The DNS proxy inside each enrolled pod, as ztunnel's: the kernel sends the pod's queries
//! to port 53 here (UDP and TCP, `127.0.0.1:15053` and `[::1]:15053`, see
//! `ebpf/src/dns.rs`); names of services (`<name>.<ns>.svc.cluster.local`) are answered
//! from the mesh's services, other names under `cluster.local` get NXDOMAIN, and everything
//! else is forwarded to the node's resolvers (`--dns-upstream`, by default the nameservers
//! of the node's `/etc/resolv.conf`).
//!
//! Every query gets an answer at once or within the forward timeout, never silence: a
//! malformed query gets FORMERR, an oversized one REFUSED, an outside name with no upstream
//! REFUSED, an upstream that does not answer SERVFAIL. What a pod can hold is bounded:
//! forwards in flight and TCP connections per pod, and idle TCP connections are closed.
//!
//! The listeners live in the pod's network namespace; the forwarding sockets are created in
//! the agent's own (the node's), where the node's resolvers are reachable, and carry the
//! agent's mark so no capture program ever redirects them.

pub mod wire;

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
    task::JoinHandle,
};
use tracing::{debug, warn};
use weft_ebpf_common::{AGENT_SOCKET_MARK, DNS_PORT, DNS_PROXY_PORT};
use weft_mesh::dns::{Lookup, ServiceNames, addresses};

use crate::{
    inpod::{Netns, NetnsError},
    state::WorkloadStore,
};
use wire::{ParseError, Rcode};

/// Forwards one pod may have in flight; more are answered SERVFAIL at once. A resolver
/// sends a few queries at a time (A and AAAA, one per search domain); this leaves room for
/// busy pods while no pod can hold thousands of sockets of the agent.
pub const MAX_FORWARDS_PER_POD: usize = 128;
/// TCP connections one pod may hold to its DNS proxy; more are closed at once.
pub const MAX_TCP_PER_POD: usize = 32;
/// A TCP connection with no complete query for this long is closed (RFC 7766 suggests
/// seconds, not minutes).
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// TTL of the proxy's own answers: short, so a changed service is seen soon.
pub const ANSWER_TTL: u32 = 5;
/// Where the node's resolvers are listed.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(
        "cannot bind the DNS proxy ({transport}) on {addr} inside {netns}: {source} (is the \
         pod's loopback interface up?)"
    )]
    Bind {
        transport: &'static str,
        addr: SocketAddr,
        netns: String,
        #[source]
        source: io::Error,
    },
}

/// The node's resolvers from a resolv.conf text: every `nameserver` line (port 53), in
/// order; lines that do not parse are skipped with a warning naming them.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        // A zone index (`fe80::1%eth0`) cannot be used from the agent's sockets as written.
        match words.next().map(str::parse::<IpAddr>) {
            Some(Ok(ip)) => out.push(SocketAddr::new(ip, DNS_PORT)),
            _ => warn!(
                line = n + 1,
                text = line,
                "resolv.conf: nameserver line skipped"
            ),
        }
    }
    out
}

/// What the proxy does with one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// No answer: not a DNS query at all.
    Drop,
    /// This reply, at once.
    Reply(Vec<u8>),
    /// Ask the node's resolvers; the client takes replies up to `limit` bytes.
    Forward { limit: usize },
}

/// How a query arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// Labels of `weft_dns_queries_total`: how a query was answered, and over what. Constants
/// only, never a name a pod chose.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    /// `service` (a service's addresses), `nodata`, `nxdomain`, `forwarded` (an upstream
    /// answered), `servfail` (no upstream answered in time, or the pod's forward limit was
    /// reached), `refused` (oversized, or no upstream), `formerr`, `notimp`, `dropped`.
    answer: &'static str,
    transport: &'static str,
}

/// The proxy: what every pod's listeners share.
pub struct DnsProxy {
    names: Arc<ArcSwap<ServiceNames>>,
    workloads: Arc<ArcSwap<WorkloadStore>>,
    upstreams: Vec<SocketAddr>,
    forward_timeout: Duration,
    /// The bounds of each pod's proxy (the constants above; tests shrink them).
    max_forwards: usize,
    max_tcp: usize,
    tcp_idle: Duration,
    queries: Family<QueryLabels, Counter>,
}

/// One pod's bound DNS sockets, not yet serving.
pub struct PodDns {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
}

impl PodDns {
    /// The addresses it listens on (UDP and TCP share them).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
}

/// Per-pod limits, shared by the pod's listeners.
struct PodLimits {
    forwards: Arc<Semaphore>,
    tcp: Arc<Semaphore>,
}

impl DnsProxy {
    pub fn new(
        names: Arc<ArcSwap<ServiceNames>>,
        workloads: Arc<ArcSwap<WorkloadStore>>,
        upstreams: Vec<SocketAddr>,
        forward_timeout: Duration,
    ) -> Self {
        DnsProxy {
            names,
            workloads,
            upstreams,
            forward_timeout,
            max_forwards: MAX_FORWARDS_PER_POD,
            max_tcp: MAX_TCP_PER_POD,
            tcp_idle: TCP_IDLE_TIMEOUT,
            queries: Family::default(),
        }
    }

    /// Registers `weft_dns_queries_total`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "weft_dns_queries",
            "Queries the pods' DNS proxies answered, by answer and transport",
            self.queries.clone(),
        );
    }

    fn count(&self, answer: &'static str, transport: Transport) {
        self.queries
            .get_or_create(&QueryLabels {
                answer,
                transport: transport.label(),
            })
            .inc();
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// What to do with `msg`, which arrived over `transport`. Names of the cluster are
    /// answered here; only outside names are forwarded.
    pub fn decide(&self, msg: &[u8], transport: Transport) -> Decision {
        // Longer than any query may be: refused on its header alone, unparsed.
        if msg.len() > wire::MAX_QUERY
            && let Some(header) = wire::query_header(msg)
        {
            debug!(len = msg.len(), "oversized DNS query refused");
            self.count("refused", transport);
            return Decision::Reply(wire::header_only(header, Rcode::Refused));
        }
        let query = match wire::parse_query(msg) {
            Ok(q) => q,
            Err(err) => {
                debug!(%err, "DNS query not answered normally");
                self.count(
                    match err {
                        ParseError::NoHeader { .. } | ParseError::NotAQuery => "dropped",
                        ParseError::Malformed { .. } => "formerr",
                        ParseError::NotImplemented { .. } => "notimp",
                    },
                    transport,
                );
                return err.reply().map_or(Decision::Drop, Decision::Reply);
            }
        };
        let limit = match transport {
            Transport::Udp => query.udp_limit(),
            Transport::Tcp => usize::from(u16::MAX),
        };
        let max_query = match (transport, query.edns) {
            (Transport::Udp, None) => wire::MAX_PLAIN_UDP,
            _ => wire::MAX_QUERY,
        };
        if msg.len() > max_query {
            debug!(len = msg.len(), max_query, "oversized DNS query refused");
            self.count("refused", transport);
            return Decision::Reply(wire::reply(&query, Rcode::Refused, false, &[], 0, limit));
        }
        let reply = |rcode, ips: &[IpAddr]| {
            let answer = match (rcode, ips.is_empty()) {
                (Rcode::NxDomain, _) => "nxdomain",
                (_, true) => "nodata",
                (_, false) => "service",
            };
            self.count(answer, transport);
            Decision::Reply(wire::reply(&query, rcode, true, ips, ANSWER_TTL, limit))
        };
        let names = self.names.load();
        match names.lookup(&query.name) {
            Lookup::Outside if self.upstreams.is_empty() => {
                self.count("refused", transport);
                Decision::Reply(wire::reply(&query, Rcode::Refused, false, &[], 0, limit))
            }
            Lookup::Outside => Decision::Forward { limit },
            Lookup::NoSuchName => reply(Rcode::NxDomain, &[]),
            Lookup::Empty => reply(Rcode::NoError, &[]),
            Lookup::Service(service) => {
                let v4 = match query.qtype {
                    wire::TYPE_A => true,
                    wire::TYPE_AAAA => false,
                    _ => return reply(Rcode::NoError, &[]),
                };
                if !query.class_in() {
                    return reply(Rcode::NoError, &[]);
                }
                let ips = addresses(service, v4, &self.workloads.load());
                reply(Rcode::NoError, &ips)
            }
        }
    }

    /// Binds the pod's DNS listeners inside `netns`: UDP and TCP on `127.0.0.1:15053`, and
    /// on `[::1]:15053` unless the pod has no IPv6 loopback.
    pub fn bind(&self, netns: &Netns, home: &Netns) -> Result<PodDns, DnsError> {
        let mut pod = PodDns {
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let addr = SocketAddr::new(ip, DNS_PROXY_PORT);
            let bound = netns.run(home, || bind_pair(addr))?;
            match bound {
                Ok((udp, tcp)) => {
                    pod.udp.push(udp);
                    pod.tcp.push(tcp);
                }
                // A pod without IPv6 has no [::1]; its resolvers cannot ask over IPv6 anyway.
                Err((_, err)) if ip.is_ipv6() => {
                    warn!(netns = %netns.path().display(), %err, "no IPv6 DNS proxy listener");
                }
                Err((transport, source)) => {
                    return Err(DnsError::Bind {
                        transport,
                        addr,
                        netns: netns.path().display().to_string(),
                        source,
                    });
                }
            }
        }
        Ok(pod)
    }

    /// Serves a pod's bound listeners; the tasks end when aborted (the pod left).
    pub fn spawn(self: &Arc<Self>, pod: PodDns) -> Vec<JoinHandle<()>> {
        let limits = Arc::new(PodLimits {
            forwards: Arc::new(Semaphore::new(self.max_forwards)),
            tcp: Arc::new(Semaphore::new(self.max_tcp)),
        });
        let mut tasks = Vec::new();
        for socket in pod.udp {
            tasks.push(tokio::spawn(
                self.clone().serve_udp(Arc::new(socket), limits.clone()),
            ));
        }
        for listener in pod.tcp {
            tasks.push(tokio::spawn(
                self.clone().serve_tcp(listener, limits.clone()),
            ));
        }
        tasks
    }

    async fn serve_udp(self: Arc<Self>, socket: Arc<UdpSocket>, limits: Arc<PodLimits>) {
        // One datagram can be up to 64 KiB; a smaller buffer would silently cut oversized
        // queries down to a size that looks acceptable.
        let mut buf = vec![0u8; usize::from(u16::MAX)];
        loop {
            let (len, peer) = match socket.recv_from(&mut buf).await {
                Ok(got) => got,
                Err(err) => {
                    debug!(%err, "DNS proxy UDP receive failed");
                    // A persistent error (ENOMEM, ENOBUFS) must not spin a worker.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let msg = &buf[..len];
            match self.decide(msg, Transport::Udp) {
                Decision::Drop => {}
                Decision::Reply(reply) => send_udp(&socket, &reply, peer).await,
                Decision::Forward { limit } => {
                    let Ok(permit) = limits.forwards.clone().try_acquire_owned() else {
                        self.count("servfail", Transport::Udp);
                        send_udp(&socket, &self.servfail(msg, limit), peer).await;
                        continue;
                    };
                    let (proxy, socket, query) = (self.clone(), socket.clone(), msg.to_vec());
                    tokio::spawn(async move {
                        let reply = proxy.forward(&query, Transport::Udp, limit).await;
                        send_udp(&socket, &reply, peer).await;
                        drop(permit);
                    });
                }
            }
        }
    }

    async fn serve_tcp(self: Arc<Self>, listener: TcpListener, limits: Arc<PodLimits>) {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    debug!(%err, "DNS proxy TCP accept failed");
                    // EMFILE and friends: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = limits.tcp.clone().try_acquire_owned() else {
                debug!("DNS proxy TCP connection limit reached; closing");
                continue;
            };
            let (proxy, limits) = (self.clone(), limits.clone());
            tokio::spawn(async move {
                if let Err(err) = proxy.tcp_connection(stream, &limits).await {
                    debug!(%err, "DNS proxy TCP connection ended");
                }
                drop(permit);
            });
        }
    }

    /// Answers length-prefixed queries in order until the client closes or idles.
    async fn tcp_connection(&self, mut stream: TcpStream, limits: &PodLimits) -> io::Result<()> {
        loop {
            let msg = match tokio::time::timeout(self.tcp_idle, read_frame(&mut stream)).await {
                Ok(Ok(Some(msg))) => msg,
                Ok(Ok(None)) | Err(_) => return Ok(()),
                Ok(Err(err)) => return Err(err),
            };
            let reply = match self.decide(&msg, Transport::Tcp) {
                Decision::Drop => return Ok(()),
                Decision::Reply(reply) => reply,
                Decision::Forward { limit } => match limits.forwards.clone().try_acquire_owned() {
                    Ok(_permit) => self.forward(&msg, Transport::Tcp, limit).await,
                    Err(_) => {
                        self.count("servfail", Transport::Tcp);
                        self.servfail(&msg, limit)
                    }
                },
            };
            // A client that does not read its answers is not waited for.
            tokio::time::timeout(self.tcp_idle, write_frame(&mut stream, &reply))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client not reading"))??;
        }
    }

    /// SERVFAIL for a query that parsed.
    fn servfail(&self, msg: &[u8], limit: usize) -> Vec<u8> {
        match wire::parse_query(msg) {
            Ok(q) => wire::reply(&q, Rcode::ServFail, false, &[], 0, limit),
            Err(err) => err.reply().unwrap_or_default(),
        }
    }

    /// Asks the node's resolvers in order (the next when one fails at once) within the
    /// forward timeout; SERVFAIL when none answers. UDP queries go over UDP, and over TCP
    /// when the answer came back truncated (used if it fits the client's limit); TCP
    /// queries go over TCP.
    async fn forward(&self, query: &[u8], transport: Transport, limit: usize) -> Vec<u8> {
        let Some(id) = query.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
            return Vec::new();
        };
        let attempt = async {
            for upstream in &self.upstreams {
                let got = match transport {
                    Transport::Udp => match ask_udp(*upstream, query, id).await {
                        Ok((reply, true)) => match ask_tcp(*upstream, query, id).await {
                            Ok(full) if full.len() <= limit => Ok(full),
                            _ => Ok(reply),
                        },
                        Ok((reply, false)) => Ok(reply),
                        Err(err) => Err(err),
                    },
                    Transport::Tcp => ask_tcp(*upstream, query, id).await,
                };
                match got {
                    Ok(reply) => return Some(reply),
                    Err(err) => debug!(%upstream, %err, "DNS upstream failed"),
                }
            }
            None
        };
        match tokio::time::timeout(self.forward_timeout, attempt).await {
            Ok(Some(reply)) => {
                self.count("forwarded", transport);
                reply
            }
            Ok(None) | Err(_) => {
                debug!(upstreams = ?self.upstreams, "no DNS upstream answered; SERVFAIL");
                self.count("servfail", transport);
                self.servfail(query, limit)
            }
        }
    }
}

/// Binds UDP and TCP on `addr` with the agent's socket options (on the calling thread, which
/// is inside the pod's namespace); on failure, which of the two failed.
fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), (&'static str, io::Error)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let udp = (|| {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::DGRAM.nonblocking(),
            Some(Protocol::UDP),
        )?;
        socket.set_mark(AGENT_SOCKET_MARK)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.bind(&addr.into())?;
        UdpSocket::from_std(socket.into())
    })()
    .map_err(|err| ("UDP", err))?;
    let tcp = (|| {
        let socket = crate::inpod::agent_socket(&addr)?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(128)?;
        TcpListener::from_std(socket.into())
    })()
    .map_err(|err| ("TCP", err))?;
    Ok((udp, tcp))
}

async fn send_udp(socket: &UdpSocket, reply: &[u8], peer: SocketAddr) {
    if reply.is_empty() {
        return;
    }
    if let Err(err) = socket.send_to(reply, peer).await {
        debug!(%err, %peer, "DNS proxy UDP send failed");
    }
}

/// One length-prefixed message (RFC 1035 4.2.2); `None` at a clean end of stream.
async fn read_frame(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    // At most 64 KiB, the most a 16-bit length can say; `decide` refuses what is too long.
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn write_frame(stream: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    if msg.is_empty() {
        return Ok(());
    }
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "DNS message over 64 KiB"))?;
    let mut frame = Vec::with_capacity(2 + msg.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(msg);
    stream.write_all(&frame).await
}

/// A marked socket for `upstream`'s family, in the agent's own namespace.
fn upstream_socket(upstream: SocketAddr, ty: socket2::Type) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(upstream),
        ty.nonblocking(),
        None,
    )?;
    socket.set_mark(AGENT_SOCKET_MARK)?;
    Ok(socket)
}

/// One UDP exchange: the reply with `id`, and whether it was truncated.
async fn ask_udp(upstream: SocketAddr, query: &[u8], id: u16) -> io::Result<(Vec<u8>, bool)> {
    let socket = upstream_socket(upstream, socket2::Type::DGRAM)?;
    let unspecified: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    socket.bind(&unspecified.into())?;
    let socket = UdpSocket::from_std(socket.into())?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        // Connected: only the upstream's datagrams arrive; one with another id is stale.
        let len = socket.recv(&mut buf).await?;
        if let Some((got, truncated)) = wire::reply_header(&buf[..len])
            && got == id
        {
            buf.truncate(len);
            return Ok((buf, truncated));
        }
    }
}

/// One TCP exchange on a fresh connection.
async fn ask_tcp(upstream: SocketAddr, query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let socket = upstream_socket(upstream, socket2::Type::STREAM)?;
    socket.set_tcp_nodelay(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    let mut stream = socket.connect(upstream).await?;
    write_frame(&mut stream, query).await?;
    match read_frame(&mut stream).await? {
        Some(reply) if wire::reply_header(&reply).is_some_and(|(got, _)| got == id) => Ok(reply),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the upstream closed without an answer to the query",
        )),
    }
}

#[cfg(test)]
mod tests;
