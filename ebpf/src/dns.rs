//! DNS capture: a pod's queries to port 53 go to the agent's DNS proxy on port 15053 inside the
//! pod's own network namespace (`127.0.0.1`, or `[::1]` for IPv6 servers), as ztunnel's DNS
//! capture does with iptables.
//!
//! - connect4/connect6 call [`connect`] first: a TCP or UDP connect to port 53 is rewritten
//!   to the proxy (TCP does not go to the outbound listener 15001);
//! - `sendmsg4`/`sendmsg6`: an unconnected UDP send (`sendto`/`sendmsg` with an address) to
//!   port 53 is rewritten the same way;
//! - `recvmsg4`/`recvmsg6`: a datagram from the proxy to a socket whose query was rewritten
//!   gets back the source address the application sent to. Resolvers (glibc, musl, dig)
//!   drop an answer whose source is not the server they asked.
//!
//! The server a UDP socket asked is kept by socket cookie (`DNS_ORIG_BY_COOKIE`, LRU, so a
//! socket that closes leaves an entry that ages out). One entry per socket: a socket that asks
//! two servers at once gets both answers labelled with the later one, which resolvers that
//! send to one server at a time never see.
//!
//! Passed through: the agent's own sockets (its mark), loopback servers (a resolver the pod
//! runs itself), and every other port. Fails open, as the rest of the capture: when the map
//! refuses an entry, the query goes to the server the application chose.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock_addr, map},
    maps::LruHashMap,
    programs::SockAddrContext,
};
use weft_ebpf_common::{
    AF_INET, AF_INET6, AGENT_SOCKET_MARK, DNS_PORT, DNS_PROXY_PORT, Ip6Words, LOOPBACK4_WORD,
    LOOPBACK6_WORDS, ORIG_DST_MAP_ENTRIES, OrigDst, Verdict, is_loopback4, is_v4_mapped, v4_mapped,
};

use crate::maps::count;

const ALLOW: i32 = 1;
const SOCK_DGRAM: u32 = 2;

/// The DNS server each redirected UDP socket asked, by socket cookie.
#[map(name = "DNS_ORIG_BY_COOKIE")]
pub static DNS_ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> =
    LruHashMap::with_max_entries(ORIG_DST_MAP_ENTRIES, 0);

/// For connect4 (`v6_socket` false) and connect6: `Some(verdict)` when this connect was DNS
/// and is settled here, `None` to let the outbound capture decide.
#[inline(always)]
pub fn connect(ctx: &SockAddrContext, v6_socket: bool) -> Option<Verdict> {
    // SAFETY: the kernel hands the program a valid context for its whole run.
    let sa = unsafe { &mut *ctx.sock_addr };
    redirect(ctx, sa, v6_socket)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn weft_dns_sendmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in `connect`.
    let sa = unsafe { &mut *ctx.sock_addr };
    if let Some(verdict) = redirect(&ctx, sa, false) {
        count(verdict);
    }
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn weft_dns_sendmsg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in `connect`.
    let sa = unsafe { &mut *ctx.sock_addr };
    if let Some(verdict) = redirect(&ctx, sa, true) {
        count(verdict);
    }
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn weft_dns_recvmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in `connect`.
    let sa = unsafe { &mut *ctx.sock_addr };
    if u16::from_be(sa.user_port as u16) != DNS_PROXY_PORT || sa.user_ip4 != LOOPBACK4_WORD {
        return ALLOW;
    }
    if let Some(orig) = asked(&ctx)
        && is_v4_mapped(&orig.addr)
    {
        sa.user_ip4 = orig.addr[3];
        sa.user_port = u32::from(orig.port.to_be());
        count(Verdict::DnsReplyRestored);
    }
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn weft_dns_recvmsg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as in `connect`.
    let sa = unsafe { &mut *ctx.sock_addr };
    let from: Ip6Words = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    // A dual-stack socket sees the IPv4 proxy as `::ffff:127.0.0.1`.
    if u16::from_be(sa.user_port as u16) != DNS_PROXY_PORT
        || (from != LOOPBACK6_WORDS && from != v4_mapped(LOOPBACK4_WORD))
    {
        return ALLOW;
    }
    if let Some(orig) = asked(&ctx) {
        sa.user_ip6[0] = orig.addr[0];
        sa.user_ip6[1] = orig.addr[1];
        sa.user_ip6[2] = orig.addr[2];
        sa.user_ip6[3] = orig.addr[3];
        sa.user_port = u32::from(orig.port.to_be());
        count(Verdict::DnsReplyRestored);
    }
    ALLOW
}

/// The server this socket's query was rewritten from, if it was.
#[inline(always)]
fn asked(ctx: &SockAddrContext) -> Option<OrigDst> {
    // SAFETY: the helper only reads the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    unsafe { DNS_ORIG_BY_COOKIE.get(cookie) }.copied()
}

/// Rewrites a destination on port 53 to the DNS proxy; `None` when it is not DNS for the
/// proxy (another port, the agent's socket, a loopback server).
#[inline(always)]
fn redirect(ctx: &SockAddrContext, sa: &mut bpf_sock_addr, v6_socket: bool) -> Option<Verdict> {
    if u16::from_be(sa.user_port as u16) != DNS_PORT {
        return None;
    }
    // SAFETY: `sk` is set for connect and sendmsg hooks (the kernel types it PTR_TO_SOCKET).
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    if !sk.is_null() && unsafe { (*sk).mark } == AGENT_SOCKET_MARK {
        return None;
    }
    let (addr, family) = if v6_socket {
        let ip6: Ip6Words = [
            sa.user_ip6[0],
            sa.user_ip6[1],
            sa.user_ip6[2],
            sa.user_ip6[3],
        ];
        let mapped = is_v4_mapped(&ip6);
        if (mapped && is_loopback4(ip6[3])) || ip6 == LOOPBACK6_WORDS {
            return None;
        }
        (ip6, if mapped { AF_INET } else { AF_INET6 })
    } else {
        let ip4 = sa.user_ip4;
        if is_loopback4(ip4) {
            return None;
        }
        (v4_mapped(ip4), AF_INET)
    };
    // Only UDP needs the server back (recvmsg); a TCP peer address is never checked.
    if sa.type_ == SOCK_DGRAM {
        // SAFETY: the helper only reads the context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        let orig = OrigDst {
            addr,
            port: DNS_PORT,
            family,
        };
        if DNS_ORIG_BY_COOKIE.insert(cookie, orig, 0).is_err() {
            return Some(Verdict::DnsPassMapFull);
        }
    }
    crate::connect::to_loopback(sa, family, v6_socket, DNS_PROXY_PORT);
    Some(Verdict::DnsRedirected)
}
