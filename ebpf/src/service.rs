//! Service VIPs translated in the kernel, at connect time (socket-level load balancing, as
//! Cilium's kube-proxy replacement does it), for traffic the agent does not proxy: pods that
//! are not enrolled, and workloads marked `protocol: TCP`.
//!
//! `cgroup/connect4` and `cgroup/connect6`, attached once at a cgroup holding every pod of the
//! node (the kubepods cgroup), look the destination (VIP, port) up in `SERVICES` and rewrite it
//! to one endpoint, a random slot: one of the first `INLINE_BACKENDS` held in the `SERVICES`
//! value itself, or of `SERVICE_BACKENDS` beyond them. The socket then simply connects to
//! the endpoint: no per-packet NAT, no conntrack. `cgroup/getpeername4` and
//! `cgroup/getpeername6` give the application the VIP it dialled back, from `SERVICE_PEERS`
//! (socket cookie -> VIP and endpoint, written at connect time).
//!
//! A VIP on a port its service does not declare, or with no endpoint, is refused at once: the
//! program returns 0 and `connect()` fails with EPERM, instead of a SYN to an address nothing
//! routes. Sockets with the agent's mark and loopback destinations are passed, so an enrolled
//! pod's connection, which its own capture program (attached below, so run first) has already
//! rewritten to the agent's listener on 127.0.0.1:15001, is left to the agent.
//!
//! Verifier notes as in `connect.rs`: 4-byte context stores only; return exactly 0 or 1.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_get_prandom_u32, bpf_get_socket_cookie},
    macros::{cgroup_sock, cgroup_sock_addr, map},
    maps::HashMap,
    programs::{SockAddrContext, SockContext},
};
use weft_ebpf_common::{
    AGENT_SOCKET_MARK, BACKEND_MAP_ENTRIES, Backend, BackendKey, Ip6Words, LOOPBACK6_WORDS,
    SERVICE_MAP_ENTRIES, SERVICE_PEER_ENTRIES, ServiceKey, ServicePeer, ServiceValue, Verdict,
    is_loopback4, is_v4_mapped, v4_mapped,
};

use crate::ctx::{load, load6};
use crate::maps::count;

const ALLOW: i32 = 1;
/// `connect()` fails with EPERM.
const REFUSE: i32 = 0;
const SOCK_STREAM: u32 = 1;
/// Hash map entries are allocated when inserted, so a node with few services pays for few.
const BPF_F_NO_PREALLOC: u32 = 1;

/// (VIP, port) -> id and endpoint count; (VIP, 0) marks the address as a VIP.
#[map(name = "SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(SERVICE_MAP_ENTRIES, BPF_F_NO_PREALLOC);

/// (id, slot) -> endpoint address and target port.
#[map(name = "SERVICE_BACKENDS")]
static SERVICE_BACKENDS: HashMap<BackendKey, Backend> =
    HashMap::with_max_entries(BACKEND_MAP_ENTRIES, BPF_F_NO_PREALLOC);

/// Socket cookie -> the VIP it dialled and the endpoint it got, for the sockets open now:
/// `sock_release` removes a socket's entry. A plain preallocated hash, cheaper to insert into
/// than an LRU one; its entries cannot outlive their sockets, since the programs that write and
/// remove them are attached and detached together.
#[map(name = "SERVICE_PEERS")]
static SERVICE_PEERS: HashMap<u64, ServicePeer> =
    HashMap::with_max_entries(SERVICE_PEER_ENTRIES, 0);

#[cgroup_sock_addr(connect4)]
pub fn weft_svc_conn4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands the program a valid context for its whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    let (verdict, ret) = match pass_reason(sa) {
        Some(v) => (v, ALLOW),
        None => {
            let ip4 = load(&sa.user_ip4);
            if is_loopback4(ip4) {
                (Verdict::ServicePassLoopback, ALLOW)
            } else {
                translate(&ctx, sa, v4_mapped(ip4), false)
            }
        }
    };
    count(verdict);
    ret
}

#[cgroup_sock_addr(connect6)]
pub fn weft_svc_conn6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in connect4.
    let sa = unsafe { &mut *ctx.sock_addr };
    let (verdict, ret) = match pass_reason(sa) {
        Some(v) => (v, ALLOW),
        None => {
            let ip6 = load6(&sa.user_ip6);
            // An IPv4-mapped VIP is the IPv4 VIP: the maps key IPv4 in its mapped form.
            if (is_v4_mapped(&ip6) && is_loopback4(ip6[3])) || ip6 == LOOPBACK6_WORDS {
                (Verdict::ServicePassLoopback, ALLOW)
            } else {
                translate(&ctx, sa, ip6, true)
            }
        }
    };
    count(verdict);
    ret
}

#[cgroup_sock_addr(getpeername4)]
pub fn weft_svc_peer4(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in connect4.
    let sa = unsafe { &mut *ctx.sock_addr };
    if let Some(peer) = peer_of(&ctx, sa, v4_mapped(load(&sa.user_ip4))) {
        sa.user_ip4 = peer.vip[3];
        sa.user_port = u32::from(peer.vip_port.to_be());
        count(Verdict::ServicePeerRestored);
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn weft_svc_peer6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in connect4.
    let sa = unsafe { &mut *ctx.sock_addr };
    if let Some(peer) = peer_of(&ctx, sa, load6(&sa.user_ip6)) {
        sa.user_ip6[0] = peer.vip[0];
        sa.user_ip6[1] = peer.vip[1];
        sa.user_ip6[2] = peer.vip[2];
        sa.user_ip6[3] = peer.vip[3];
        sa.user_port = u32::from(peer.vip_port.to_be());
        count(Verdict::ServicePeerRestored);
    }
    ALLOW
}

/// A socket of the node's pods is released: its VIP record, if it had one, goes with it, so
/// `SERVICE_PEERS` holds open sockets only.
#[cgroup_sock(sock_release)]
pub fn weft_svc_rel(ctx: SockContext) -> i32 {
    // SAFETY: the helper only reads the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Most sockets were never translated: nothing to remove is the common case.
    let _ = SERVICE_PEERS.remove(&cookie);
    ALLOW
}

/// Reasons to leave a socket alone that do not depend on its address family.
#[inline(always)]
fn pass_reason(sa: &bpf_sock_addr) -> Option<Verdict> {
    if load(&sa.type_) != SOCK_STREAM {
        return Some(Verdict::ServicePassNotTcp);
    }
    // SAFETY: `sk` is always set for connect hooks (the kernel types it PTR_TO_SOCKET).
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    if !sk.is_null() && unsafe { (*sk).mark } == AGENT_SOCKET_MARK {
        return Some(Verdict::ServicePassAgentSocket);
    }
    None
}

/// Looks `(vip, port)` up and rewrites the socket's destination to one endpoint.
#[inline(always)]
fn translate(
    ctx: &SockAddrContext,
    sa: &mut bpf_sock_addr,
    vip: Ip6Words,
    v6_socket: bool,
) -> (Verdict, i32) {
    let port = u16::from_be(load(&sa.user_port) as u16);
    let key = ServiceKey {
        addr: vip,
        port,
        _pad: 0,
    };
    // SAFETY: the value is read through the pointer at once (the map is written by the agent
    // only, each value replaced whole, so a reader sees the old or the new value).
    let Some(service) = SERVICES.get_ptr(&key) else {
        let vip_only = ServiceKey {
            addr: vip,
            port: 0,
            _pad: 0,
        };
        // SAFETY: as above.
        return if unsafe { SERVICES.get(&vip_only) }.is_some() {
            (Verdict::ServiceRefusedPort, REFUSE)
        } else {
            (Verdict::ServicePassNotService, ALLOW)
        };
    };
    // SAFETY: a pointer to a live value of the map, valid for this run of the program.
    let count = unsafe { (*service).count };
    if count == 0 {
        return (Verdict::ServiceRefusedNoBackend, REFUSE);
    }
    // SAFETY: the helper has no preconditions.
    let slot = unsafe { bpf_get_prandom_u32() } % count;
    // Most services' endpoints are all in the value: no second lookup.
    // SAFETY: as above.
    let inline = unsafe { &(*service).inline };
    let backend = match inline.get(slot as usize) {
        Some(b) => *b,
        // SAFETY: as above.
        None => match backend(unsafe { (*service).id }, slot) {
            Some(b) => b,
            // Only while the agent rewrites the VIP's slots: slot 0 is in the value.
            None => inline[0],
        },
    };
    if backend.port == 0 {
        return (Verdict::ServiceBackendMissing, REFUSE);
    }
    if v6_socket {
        sa.user_ip6[0] = backend.addr[0];
        sa.user_ip6[1] = backend.addr[1];
        sa.user_ip6[2] = backend.addr[2];
        sa.user_ip6[3] = backend.addr[3];
    } else if is_v4_mapped(&backend.addr) {
        sa.user_ip4 = backend.addr[3];
    } else {
        // An IPv4 VIP's endpoints are IPv4 (the agent writes them so); anything else is a
        // map being rewritten under us.
        return (Verdict::ServiceBackendMissing, REFUSE);
    }
    sa.user_port = u32::from(backend.port.to_be());
    // SAFETY: the helper only reads the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let peer = ServicePeer {
        vip,
        backend: backend.addr,
        vip_port: port,
        backend_port: backend.port,
    };
    if SERVICE_PEERS.insert(cookie, peer, 0).is_err() {
        return (Verdict::ServicePeerMapFull, ALLOW);
    }
    (Verdict::ServiceTranslated, ALLOW)
}

#[inline(always)]
fn backend(service: u32, slot: u32) -> Option<Backend> {
    // SAFETY: the value is copied out at once.
    unsafe { SERVICE_BACKENDS.get(&BackendKey { service, slot }) }.copied()
}

/// The VIP a translated socket dialled, if its peer (`peer_addr` and the context's port) is
/// still the endpoint it was translated to.
#[inline(always)]
fn peer_of(ctx: &SockAddrContext, sa: &bpf_sock_addr, peer_addr: Ip6Words) -> Option<ServicePeer> {
    // SAFETY: the helper only reads the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    let peer = unsafe { SERVICE_PEERS.get(&cookie) }.copied()?;
    let port = u16::from_be(load(&sa.user_port) as u16);
    (peer.backend == peer_addr && peer.backend_port == port).then_some(peer)
}
