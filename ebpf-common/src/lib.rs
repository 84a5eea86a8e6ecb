//! The ABI between Weft's kernel programs (`weft-ebpf`) and the agent: map names, keys and
//! values, and the verdict numbering that kernel counters, agent metrics and flow events share.
//!
//! Every type here is `#[repr(C)]`, `Copy`, and has no implicit padding: as root the verifier
//! lets a program read uninitialised stack bytes, so an implicit hole in a key silently breaks
//! hash lookups. Holes are spelled out as `_pad` fields and always written as zero. There is no
//! `bool`: flags are `u32`.
#![cfg_attr(not(test), no_std)]

/// Port of the agent's outbound capture listener inside each pod's network namespace.
pub const OUTBOUND_PORT: u16 = 15001;
/// Port of the agent's inbound plaintext capture listener inside each pod's network namespace.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// HBONE (HTTP/2 CONNECT over mutual TLS). Never captured: it is the mesh's own tunnel.
pub const HBONE_PORT: u16 = 15008;
/// DNS: connects and unconnected sends to this port from an enrolled pod go to the agent's DNS
/// proxy instead.
pub const DNS_PORT: u16 = 53;
/// Port of the agent's DNS proxy (UDP and TCP, `127.0.0.1` and `[::1]`) inside each pod's
/// network namespace.
pub const DNS_PROXY_PORT: u16 = 15053;

/// `SO_MARK` the agent sets on every socket it opens. The capture programs pass marked sockets
/// through untouched, so the agent never captures itself even where a program is attached
/// above its own cgroup. ("WF" in ASCII.)
pub const AGENT_SOCKET_MARK: u32 = 0x5746;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Names of the maps in the object file, so the agent never spells them twice.
pub mod maps {
    /// `LruHashMap<u64 /* socket cookie */, OrigDst>`, written by connect4/connect6.
    pub const ORIG_DST_BY_COOKIE: &str = "ORIG_DST_BY_COOKIE";
    /// `LruHashMap<TupleKey, OrigDst>`, written by sockops once the source port is known, read
    /// and deleted by the agent when it accepts the connection.
    pub const ORIG_DST_BY_TUPLE: &str = "ORIG_DST_BY_TUPLE";
    /// `PerCpuArray<u64>` indexed by [`Verdict`](crate::Verdict).
    pub const VERDICTS: &str = "VERDICTS";
    /// `SockHash<InboundKey>`: the agent's inbound plaintext listener (port 15006, inside the
    /// pod's network namespace) by pod IP, written by the agent, read by sk_lookup.
    pub const INBOUND_LISTENERS: &str = "INBOUND_LISTENERS";
    /// `LruHashMap<u64 /* socket cookie */, OrigDst>`: the DNS server a pod's UDP socket sent
    /// to before connect/sendmsg rewrote it to the DNS proxy, so recvmsg can give the reply
    /// that source back (resolvers drop answers from an address they did not ask).
    pub const DNS_ORIG_BY_COOKIE: &str = "DNS_ORIG_BY_COOKIE";
    /// `HashMap<ServiceKey, ServiceValue>`: service VIPs for the kernel translation (see
    /// [`ServiceKey`](crate::ServiceKey)), written by the agent.
    pub const SERVICES: &str = "SERVICES";
    /// `HashMap<BackendKey, Backend>`: each (VIP, port)'s endpoints by slot, written by the agent.
    pub const SERVICE_BACKENDS: &str = "SERVICE_BACKENDS";
    /// `LruHashMap<u64 /* socket cookie */, ServicePeer>`: the VIP a translated socket dialled,
    /// written by the service connect programs, read by getpeername.
    pub const SERVICE_PEERS: &str = "SERVICE_PEERS";
}

/// Names of the programs in the object file.
pub mod programs {
    pub const CONNECT4: &str = "weft_connect4";
    pub const CONNECT6: &str = "weft_connect6";
    pub const SOCKOPS: &str = "weft_sockops";
    /// `sk_lookup`, attached to each enrolled pod's network namespace.
    pub const INBOUND_LOOKUP: &str = "weft_inbound_lookup";
    /// Unconnected UDP sends to port 53, rewritten to the DNS proxy.
    pub const DNS_SENDMSG4: &str = "weft_dns_sendmsg4";
    pub const DNS_SENDMSG6: &str = "weft_dns_sendmsg6";
    /// The DNS proxy's replies, their source given back as the server the pod asked.
    pub const DNS_RECVMSG4: &str = "weft_dns_recvmsg4";
    pub const DNS_RECVMSG6: &str = "weft_dns_recvmsg6";
    // Service translation, attached once at the cgroup holding every pod of the node. Names
    // stay within the kernel's 15 characters so that `bpftool prog` and the run-time
    // statistics tell them apart.
    pub const SERVICE_CONNECT4: &str = "weft_svc_conn4";
    pub const SERVICE_CONNECT6: &str = "weft_svc_conn6";
    pub const SERVICE_GETPEERNAME4: &str = "weft_svc_peer4";
    pub const SERVICE_GETPEERNAME6: &str = "weft_svc_peer6";
    /// A socket of the node's pods going away: its `SERVICE_PEERS` entry goes with it.
    pub const SERVICE_RELEASE: &str = "weft_svc_rel";
}

/// Capacity of the original-destination maps. Each entry lives from `connect()` to the agent's
/// `accept()` (microseconds), so this bounds the connection *burst* between two accepts, not
/// the number of open connections. LRU eviction means an overflow loses the oldest pending
/// entry, which the agent reports as a connection without an original destination.
pub const ORIG_DST_MAP_ENTRIES: u32 = 65_536;

/// An IP address in IPv6 form: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`) so one key type
/// serves both families. Each `u32` holds four address bytes in network order, exactly as the
/// kernel's `user_ip6` / `remote_ip6` fields do.
pub type Ip6Words = [u32; 4];

/// The third word of an IPv4-mapped IPv6 address (`0000:ffff` in network order).
pub const V4_MAPPED_PREFIX_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// `127.0.0.1` as the kernel holds it in `user_ip4` / `remote_ip4` (network order).
pub const LOOPBACK4_WORD: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

/// `::1` as the kernel holds it in `user_ip6` / `remote_ip6`.
pub const LOOPBACK6_WORDS: Ip6Words = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

/// An IPv4 address (network order, as in `user_ip4`) in its IPv4-mapped IPv6 form.
pub const fn v4_mapped(ip4: u32) -> Ip6Words {
    [0, 0, V4_MAPPED_PREFIX_WORD, ip4]
}

/// Whether `words` is an IPv4-mapped IPv6 address.
pub const fn is_v4_mapped(words: &Ip6Words) -> bool {
    words[0] == 0 && words[1] == 0 && words[2] == V4_MAPPED_PREFIX_WORD
}

/// Whether an IPv4 address (network order) is in `127.0.0.0/8`.
pub const fn is_loopback4(ip4: u32) -> bool {
    ip4.to_ne_bytes()[0] == 127
}

/// The destination a pod asked for before connect4/connect6 rewrote it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst {
    pub addr: Ip6Words,
    /// Host byte order.
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`]: the family the application used.
    pub family: u16,
}

/// Identifies an accepted capture connection from the agent's side: the pod's network
/// namespace (the same `127.0.0.1:X -> 127.0.0.1:15001` tuple repeats in every pod) and the
/// client's address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TupleKey {
    pub netns_cookie: u64,
    pub addr: Ip6Words,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
    pub _pad2: u32,
}

/// What a capture program did with a socket. Append-only: the numbers are shared by kernel
/// counters, agent metrics and dashboards, so a value is never renumbered or reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Rewritten to the agent's outbound listener.
    Redirected = 0,
    /// Not TCP: passed through.
    PassNotTcp = 1,
    /// Destination is loopback (the pod talking to itself): passed through.
    PassLoopback = 2,
    /// Destination is the HBONE port: passed through.
    PassHbone = 3,
    /// Socket carries the agent's mark: passed through.
    PassAgentSocket = 4,
    /// The original-destination map was full or refused the entry: passed through (fail open,
    /// the connection goes direct rather than failing).
    PassMapFull = 5,
    /// sockops moved an original destination from the cookie map to the tuple map.
    SockopsRecorded = 6,
    /// sockops saw a connection to the outbound listener without a cookie entry.
    SockopsMissing = 7,
    /// sk_lookup assigned a connection arriving at a pod to the agent's inbound plaintext
    /// listener (15006).
    InboundSteered = 8,
    /// sk_lookup: the connection comes from inside the pod itself (the agent talking to the
    /// application over loopback, or the pod to its own address): passed.
    InboundPassLocal = 9,
    /// sk_lookup: the local port is one of the mesh's own (15001, 15006, 15008): passed.
    InboundPassMeshPort = 10,
    /// sk_lookup: no inbound listener for the destination address (pod not enrolled, or an
    /// address that is not the pod's): passed.
    InboundPassNoListener = 11,
    /// sk_lookup: not TCP: passed.
    InboundPassNotTcp = 12,
    /// sk_lookup: `bpf_sk_assign` refused the listener (wrong family, not listening, another
    /// program already chose a socket): passed, fail open.
    InboundAssignFailed = 13,
    /// A connect (TCP or UDP) or an unconnected UDP send to port 53 was rewritten to the
    /// agent's DNS proxy (15053).
    DnsRedirected = 14,
    /// The DNS map refused a UDP socket's original server: passed to that server (fail open).
    DnsPassMapFull = 15,
    /// recvmsg gave a DNS proxy reply the source address the pod sent its query to.
    DnsReplyRestored = 16,
    /// Service connect: a VIP and declared port rewritten to one of its endpoints.
    ServiceTranslated = 17,
    /// Service connect: a VIP on a port its service does not declare: refused (EPERM).
    ServiceRefusedPort = 18,
    /// Service connect: a VIP and port with no ready endpoint: refused (EPERM).
    ServiceRefusedNoBackend = 19,
    /// Service connect: the destination is no VIP: passed.
    ServicePassNotService = 20,
    /// Service connect: loopback destination (a capture program of an enrolled pod has already
    /// sent it to the agent, or the pod talks to itself): passed.
    ServicePassLoopback = 21,
    /// Service connect: the socket carries the agent's mark: passed.
    ServicePassAgentSocket = 22,
    /// Service connect: not TCP: passed.
    ServicePassNotTcp = 23,
    /// Service connect: the chosen slot was missing (the agent was rewriting the VIP's
    /// backends) and so was slot 0: refused (EPERM), the client retries.
    ServiceBackendMissing = 24,
    /// Service connect: translated, but the VIP could not be remembered for getpeername.
    ServicePeerMapFull = 25,
    /// getpeername: a translated socket's peer shown as the VIP it dialled.
    ServicePeerRestored = 26,
}

impl Verdict {
    /// Number of verdicts, the length of the `VERDICTS` array. Bump with every new variant.
    pub const COUNT: u32 = 27;

    pub const ALL: [Verdict; Self::COUNT as usize] = [
        Verdict::Redirected,
        Verdict::PassNotTcp,
        Verdict::PassLoopback,
        Verdict::PassHbone,
        Verdict::PassAgentSocket,
        Verdict::PassMapFull,
        Verdict::SockopsRecorded,
        Verdict::SockopsMissing,
        Verdict::InboundSteered,
        Verdict::InboundPassLocal,
        Verdict::InboundPassMeshPort,
        Verdict::InboundPassNoListener,
        Verdict::InboundPassNotTcp,
        Verdict::InboundAssignFailed,
        Verdict::DnsRedirected,
        Verdict::DnsPassMapFull,
        Verdict::DnsReplyRestored,
        Verdict::ServiceTranslated,
        Verdict::ServiceRefusedPort,
        Verdict::ServiceRefusedNoBackend,
        Verdict::ServicePassNotService,
        Verdict::ServicePassLoopback,
        Verdict::ServicePassAgentSocket,
        Verdict::ServicePassNotTcp,
        Verdict::ServiceBackendMissing,
        Verdict::ServicePeerMapFull,
        Verdict::ServicePeerRestored,
    ];

    /// Label used for this verdict in metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Redirected => "redirected",
            Verdict::PassNotTcp => "pass_not_tcp",
            Verdict::PassLoopback => "pass_loopback",
            Verdict::PassHbone => "pass_hbone",
            Verdict::PassAgentSocket => "pass_agent_socket",
            Verdict::PassMapFull => "pass_map_full",
            Verdict::SockopsRecorded => "sockops_recorded",
            Verdict::SockopsMissing => "sockops_missing",
            Verdict::InboundSteered => "inbound_steered",
            Verdict::InboundPassLocal => "inbound_pass_local",
            Verdict::InboundPassMeshPort => "inbound_pass_mesh_port",
            Verdict::InboundPassNoListener => "inbound_pass_no_listener",
            Verdict::InboundPassNotTcp => "inbound_pass_not_tcp",
            Verdict::InboundAssignFailed => "inbound_assign_failed",
            Verdict::DnsRedirected => "dns_redirected",
            Verdict::DnsPassMapFull => "dns_pass_map_full",
            Verdict::DnsReplyRestored => "dns_reply_restored",
            Verdict::ServiceTranslated => "service_translated",
            Verdict::ServiceRefusedPort => "service_refused_port",
            Verdict::ServiceRefusedNoBackend => "service_refused_no_backend",
            Verdict::ServicePassNotService => "service_pass_not_service",
            Verdict::ServicePassLoopback => "service_pass_loopback",
            Verdict::ServicePassAgentSocket => "service_pass_agent_socket",
            Verdict::ServicePassNotTcp => "service_pass_not_tcp",
            Verdict::ServiceBackendMissing => "service_backend_missing",
            Verdict::ServicePeerMapFull => "service_peer_map_full",
            Verdict::ServicePeerRestored => "service_peer_restored",
        }
    }
}

// === impl OrigDst / TupleKey (conversions for user space) ===

impl OrigDst {
    /// The destination as a socket address, in the family the application used.
    pub fn socket_addr(&self) -> core::net::SocketAddr {
        let ip = words_to_ip6(&self.addr);
        match (self.family, ip.to_ipv4_mapped()) {
            (AF_INET, Some(v4)) => core::net::SocketAddr::new(v4.into(), self.port),
            _ => core::net::SocketAddr::new(ip.into(), self.port),
        }
    }
}

impl TupleKey {
    /// The key sockops wrote for a connection the agent accepted from `peer` in the network
    /// namespace with cookie `netns_cookie`.
    pub fn for_peer(netns_cookie: u64, peer: core::net::SocketAddr) -> Self {
        let addr = match peer.ip() {
            core::net::IpAddr::V4(v4) => ip6_to_words(&v4.to_ipv6_mapped()),
            core::net::IpAddr::V6(v6) => ip6_to_words(&v6),
        };
        TupleKey {
            netns_cookie,
            addr,
            port: peer.port(),
            _pad: 0,
            _pad2: 0,
        }
    }
}

/// IPv6 address to the kernel's word layout (each word four bytes in network order).
pub fn ip6_to_words(ip: &core::net::Ipv6Addr) -> Ip6Words {
    let o = ip.octets();
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// The kernel's word layout back to an IPv6 address.
pub fn words_to_ip6(words: &Ip6Words) -> core::net::Ipv6Addr {
    let mut o = [0u8; 16];
    for (chunk, w) in o.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    core::net::Ipv6Addr::from(o)
}

/// Capacity of the inbound listener map: one entry per pod IP on this node. Kubernetes nodes
/// run at most a few hundred pods (110 by default), each with at most one IPv4 and one IPv6
/// address, so this leaves an order of magnitude of headroom at about 100 bytes an entry.
pub const INBOUND_LISTENER_ENTRIES: u32 = 4_096;

/// Key of the inbound listener map: a pod's IP address (the packet's local, i.e. destination,
/// address as sk_lookup sees it), IPv4 in its IPv4-mapped form like [`TupleKey`].
///
/// Pod IPs are unique on a node, so the address alone is enough; sk_lookup only runs for
/// addresses local to the namespace it is attached to, so a lookup in one pod's namespace can
/// only match that pod's own addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InboundKey {
    pub addr: Ip6Words,
}

impl InboundKey {
    /// The key for a pod IP.
    pub fn for_ip(ip: core::net::IpAddr) -> Self {
        let addr = match ip {
            core::net::IpAddr::V4(v4) => ip6_to_words(&v4.to_ipv6_mapped()),
            core::net::IpAddr::V6(v6) => ip6_to_words(&v6),
        };
        InboundKey { addr }
    }
}

// === Kernel service translation (see `weft-ebpf/src/service.rs`) ===

/// Capacity of `SERVICES`: one entry per (VIP, declared port) plus one per VIP. 10,000
/// dual-stack services with three ports each take 80,000. Allocated as used (no prealloc).
pub const SERVICE_MAP_ENTRIES: u32 = 131_072;
/// Capacity of `SERVICE_BACKENDS`: one entry per (VIP, port, endpoint); 10,000 dual-stack
/// services with three ports of four endpoints take 240,000. Allocated as used.
pub const BACKEND_MAP_ENTRIES: u32 = 262_144;
/// Endpoints one (VIP, port) gets in the kernel; a larger service gets this many of them
/// (the agent logs it). Kubernetes' own EndpointSlice guidance caps a slice at 1,000.
pub const MAX_BACKENDS_PER_PORT: u32 = 4_096;
/// Capacity of `SERVICE_PEERS`: translated sockets open at once whose VIP getpeername can
/// show. A socket's entry leaves with it (`sock_release`); past this many, a new socket's
/// getpeername shows the endpoint (counted as `service_peer_map_full`). Preallocated (about
/// 5 MiB), so an insert takes a free element without allocating.
pub const SERVICE_PEER_ENTRIES: u32 = 65_536;

/// Key of `SERVICES`: a VIP (IPv4 in its IPv4-mapped form, so a dual-stack socket dialling
/// `::ffff:10.96.0.10` finds the IPv4 VIP) and a port in host order. Port 0 is the VIP's own
/// entry: it says "this address is a VIP", so that a port the service does not declare is
/// refused instead of passed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: Ip6Words,
    pub port: u16,
    pub _pad: u16,
}

/// Endpoints of a (VIP, port) held in its `SERVICES` value itself: a service this small (most
/// are) costs a connect one map lookup, not two.
pub const INLINE_BACKENDS: usize = 4;

/// Value of `SERVICES`: how many endpoints the (VIP, port) has (`count` 0 refuses the
/// connection), the first [`INLINE_BACKENDS`] of them, and its id in `SERVICE_BACKENDS`,
/// which holds slots `INLINE_BACKENDS..count`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    pub id: u32,
    pub count: u32,
    /// Slots `0..min(count, INLINE_BACKENDS)`; the rest are zero.
    pub inline: [Backend; INLINE_BACKENDS],
}

/// Key of `SERVICE_BACKENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub service: u32,
    pub slot: u32,
}

/// Value of `SERVICE_BACKENDS`: an endpoint's address (the VIP's family; IPv4 mapped) and
/// target port in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: Ip6Words,
    pub port: u16,
    pub _pad: u16,
}

/// Value of `SERVICE_PEERS`: what a translated socket dialled and where it went. getpeername
/// shows the VIP only while the socket's peer is still that endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServicePeer {
    pub vip: Ip6Words,
    pub backend: Ip6Words,
    /// Host byte order.
    pub vip_port: u16,
    /// Host byte order.
    pub backend_port: u16,
}

/// An address in the form the service maps use: IPv4 as IPv4-mapped IPv6.
pub fn ip_to_words(ip: core::net::IpAddr) -> Ip6Words {
    match ip.to_canonical() {
        core::net::IpAddr::V4(v4) => ip6_to_words(&v4.to_ipv6_mapped()),
        core::net::IpAddr::V6(v6) => ip6_to_words(&v6),
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, every byte is part of a named field.
    unsafe impl aya::Pod for super::OrigDst {}
    // SAFETY: as above; padding is spelled out as `_pad` fields.
    unsafe impl aya::Pod for super::TupleKey {}
    // SAFETY: as above; four u32 words, no padding.
    unsafe impl aya::Pod for super::InboundKey {}
    // SAFETY: as above; padding is spelled out as `_pad` fields.
    unsafe impl aya::Pod for super::ServiceKey {}
    // SAFETY: as above; two u32 and an array of `Backend` (itself without hidden padding).
    unsafe impl aya::Pod for super::ServiceValue {}
    // SAFETY: as above; two u32, no padding.
    unsafe impl aya::Pod for super::BackendKey {}
    // SAFETY: as above; padding is spelled out as `_pad` fields.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above; eight u32 words and two u16, no padding.
    unsafe impl aya::Pod for super::ServicePeer {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_sizes_have_no_hidden_padding() {
        assert_eq!(core::mem::size_of::<OrigDst>(), 20);
        assert_eq!(core::mem::size_of::<TupleKey>(), 32);
        assert_eq!(core::mem::size_of::<InboundKey>(), 16);
        assert_eq!(core::mem::size_of::<ServiceKey>(), 20);
        assert_eq!(
            core::mem::size_of::<ServiceValue>(),
            8 + INLINE_BACKENDS * 20
        );
        assert_eq!(core::mem::size_of::<BackendKey>(), 8);
        assert_eq!(core::mem::size_of::<Backend>(), 20);
        assert_eq!(core::mem::size_of::<ServicePeer>(), 36);
    }

    #[test]
    fn v4_destinations_round_trip_through_the_mapped_form() {
        let ip4 = u32::from_ne_bytes([10, 78, 2, 11]);
        let orig = OrigDst {
            addr: v4_mapped(ip4),
            port: 8000,
            family: AF_INET,
        };
        assert!(is_v4_mapped(&orig.addr));
        assert_eq!(orig.socket_addr().to_string(), "10.78.2.11:8000");
        assert!(is_loopback4(LOOPBACK4_WORD));
        assert!(!is_loopback4(ip4));
    }

    #[test]
    fn v6_destinations_keep_their_family() {
        let ip: core::net::Ipv6Addr = "fd78:2::11".parse().unwrap();
        let orig = OrigDst {
            addr: ip6_to_words(&ip),
            port: 80,
            family: AF_INET6,
        };
        assert_eq!(orig.socket_addr().to_string(), "[fd78:2::11]:80");
        assert_eq!(
            ip6_to_words(&core::net::Ipv6Addr::LOCALHOST),
            LOOPBACK6_WORDS
        );
    }

    #[test]
    fn peer_keys_match_what_sockops_writes() {
        // sockops on an AF_INET socket writes the IPv4-mapped form of `local_ip4`.
        let key = TupleKey::for_peer(7, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(key.addr, v4_mapped(LOOPBACK4_WORD));
        assert_eq!(key.port, 40000);
        let key6 = TupleKey::for_peer(7, "[::1]:40001".parse().unwrap());
        assert_eq!(key6.addr, LOOPBACK6_WORDS);
    }

    #[test]
    fn inbound_keys_match_what_sk_lookup_reads() {
        // sk_lookup builds the IPv4 key from `local_ip4` (network order) with `v4_mapped`.
        let key = InboundKey::for_ip("10.78.2.11".parse().unwrap());
        assert_eq!(key.addr, v4_mapped(u32::from_ne_bytes([10, 78, 2, 11])));
        let key6 = InboundKey::for_ip("::1".parse().unwrap());
        assert_eq!(key6.addr, LOOPBACK6_WORDS);
    }

    #[test]
    fn verdicts_are_dense_and_in_order() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*v as u32, i as u32, "{v:?} out of place");
        }
    }
}
