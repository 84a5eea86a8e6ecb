//! `cgroup/connect4` and `cgroup/connect6`: steer a captured pod's outbound TCP connections to
//! the agent's outbound listener on loopback port 15001 *inside the pod's own network
//! namespace*, recording the original destination under the socket cookie.
//!
//! The programs are attached to each enrolled pod's cgroup, so only pod sockets reach them.
//! On any error they fail open: the socket connects to its original destination unmeshed and
//! the reason is counted (`VERDICTS`), because losing capture is better than losing traffic.
//!
//! Verifier notes: `user_ip4`, `user_ip6[i]` and `user_port` may only be written with 4-byte
//! stores (a 2-byte store fails with `invalid bpf_context access off=24 size=2`), and the
//! program must return exactly 1 (allow) or 0 (EPERM).

use aya_ebpf::{
    EbpfContext, bindings::bpf_sock_addr, helpers::generated::bpf_get_socket_cookie,
    macros::cgroup_sock_addr, programs::SockAddrContext,
};
use aya_log_ebpf::{debug, warn};
use weft_ebpf_common::{
    AF_INET, AF_INET6, AGENT_SOCKET_MARK, HBONE_PORT, Ip6Words, LOOPBACK4_WORD, LOOPBACK6_WORDS,
    OUTBOUND_PORT, OrigDst, Verdict, is_loopback4, is_v4_mapped, v4_mapped,
};

use crate::maps::{ORIG_DST_BY_COOKIE, count};

const ALLOW: i32 = 1;
const SOCK_STREAM: u32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn weft_connect4(ctx: SockAddrContext) -> i32 {
    // DNS (port 53, TCP or UDP) goes to the DNS proxy, not the outbound listener.
    if let Some(verdict) = crate::dns::connect(&ctx, false) {
        count(verdict);
        return ALLOW;
    }
    let verdict = match pass_reason(&ctx) {
        Some(v) => v,
        None => {
            // SAFETY: the kernel hands the program a valid context for its whole run.
            let sa = unsafe { &mut *ctx.sock_addr };
            let ip4 = sa.user_ip4;
            let port = u16::from_be(sa.user_port as u16);
            if is_loopback4(ip4) {
                Verdict::PassLoopback
            } else {
                redirect(&ctx, sa, v4_mapped(ip4), port, AF_INET, false)
            }
        }
    };
    count(verdict);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn weft_connect6(ctx: SockAddrContext) -> i32 {
    // DNS (port 53, TCP or UDP) goes to the DNS proxy, not the outbound listener.
    if let Some(verdict) = crate::dns::connect(&ctx, true) {
        count(verdict);
        return ALLOW;
    }
    let verdict = match pass_reason(&ctx) {
        Some(v) => v,
        None => {
            // SAFETY: as in connect4.
            let sa = unsafe { &mut *ctx.sock_addr };
            let ip6: Ip6Words = [
                sa.user_ip6[0],
                sa.user_ip6[1],
                sa.user_ip6[2],
                sa.user_ip6[3],
            ];
            let port = u16::from_be(sa.user_port as u16);
            // A dual-stack socket reaching an IPv4 peer uses the IPv4-mapped form; it is
            // redirected to the mapped loopback so it still leaves over IPv4.
            let mapped = is_v4_mapped(&ip6);
            if (mapped && is_loopback4(ip6[3])) || ip6 == LOOPBACK6_WORDS {
                Verdict::PassLoopback
            } else {
                let family = if mapped { AF_INET } else { AF_INET6 };
                redirect(&ctx, sa, ip6, port, family, true)
            }
        }
    };
    count(verdict);
    ALLOW
}

/// Reasons to leave a socket alone that do not depend on its address family.
#[inline(always)]
fn pass_reason(ctx: &SockAddrContext) -> Option<Verdict> {
    // SAFETY: valid for the program's run.
    let sa = unsafe { &*ctx.sock_addr };
    if sa.type_ != SOCK_STREAM {
        return Some(Verdict::PassNotTcp);
    }
    // SAFETY: `sk` is always set for connect hooks (the kernel types it PTR_TO_SOCKET).
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    if !sk.is_null() && unsafe { (*sk).mark } == AGENT_SOCKET_MARK {
        return Some(Verdict::PassAgentSocket);
    }
    let port = u16::from_be(sa.user_port as u16);
    if port == HBONE_PORT {
        return Some(Verdict::PassHbone);
    }
    None
}

#[inline(always)]
fn redirect(
    ctx: &SockAddrContext,
    sa: &mut bpf_sock_addr,
    addr: Ip6Words,
    port: u16,
    family: u16,
    v6_socket: bool,
) -> Verdict {
    // SAFETY: the helper only reads the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let orig = OrigDst { addr, port, family };
    if ORIG_DST_BY_COOKIE.insert(cookie, orig, 0).is_err() {
        warn!(
            ctx,
            "weft: orig-dst map refused cookie {}; connection not captured", cookie
        );
        return Verdict::PassMapFull;
    }
    to_loopback(sa, family, v6_socket, OUTBOUND_PORT);
    debug!(
        ctx,
        "weft: cookie {} port {} redirected to the agent", cookie, port
    );
    Verdict::Redirected
}

/// Points the socket at `port` on the pod's loopback, where the agent listens: 127.0.0.1,
/// ::1, or ::ffff:127.0.0.1 for an IPv6 socket dialling IPv4 (so it still leaves over IPv4).
#[inline(always)]
pub(crate) fn to_loopback(sa: &mut bpf_sock_addr, family: u16, v6_socket: bool, port: u16) {
    if v6_socket {
        let target = if family == AF_INET {
            v4_mapped(LOOPBACK4_WORD)
        } else {
            LOOPBACK6_WORDS
        };
        sa.user_ip6[0] = target[0];
        sa.user_ip6[1] = target[1];
        sa.user_ip6[2] = target[2];
        sa.user_ip6[3] = target[3];
    } else {
        sa.user_ip4 = LOOPBACK4_WORD;
    }
    sa.user_port = u32::from(port.to_be());
}
