//! `sockops`: once a captured connection to the agent's outbound listener is established, move
//! its original destination from the cookie map (connect4/6 cannot know the source port) to
//! the tuple map keyed by (netns cookie, client address, client port), which is all the agent
//! sees of the socket it accepts.
//!
//! `BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB` runs before the client's final ACK, so the entry exists
//! before the agent's `accept()` returns. The netns cookie is part of the key because
//! `127.0.0.1:X -> 127.0.0.1:15001` repeats in every pod.
//!
//! Fails open: without an entry the agent refuses the connection and counts it; the program
//! itself never changes the socket.
//!
//! Context loads: `local_port` is host order; `remote_port` holds the big-endian port in its
//! upper 16 bits. Every field is loaded up front, unconditionally, with volatile 4-byte reads at
//! constant offsets: left to itself LLVM sinks the IPv4 and IPv6 branches' loads into one load
//! through a phi of two context addresses, which the verifier rejects ("dereference of
//! modified ctx ptr"). Reading the other family's fields is allowed and harmless.

use core::ptr::addr_of;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, bpf_sock_ops},
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use aya_log_ebpf::warn;
use weft_ebpf_common::{
    AF_INET, AF_INET6, Ip6Words, LOOPBACK4_WORD, LOOPBACK6_WORDS, OUTBOUND_PORT, TupleKey, Verdict,
    v4_mapped,
};

use crate::ctx::{load, load6};
use crate::maps::{ORIG_DST_BY_COOKIE, ORIG_DST_BY_TUPLE, count};

#[sock_ops]
pub fn weft_sockops(ctx: SockOpsContext) -> u32 {
    // SAFETY: field address of the live context.
    if load(unsafe { addr_of!((*ctx.ops).op) }) == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        on_active_established(&ctx);
    }
    1
}

#[inline(always)]
fn on_active_established(ctx: &SockOpsContext) {
    let ops: *const bpf_sock_ops = ctx.ops;
    // SAFETY (all `addr_of!` below): field addresses of the live context, no reads.
    let remote_port = u16::from_be((load(unsafe { addr_of!((*ops).remote_port) }) >> 16) as u16);
    if remote_port != OUTBOUND_PORT {
        return;
    }
    let family = load(unsafe { addr_of!((*ops).family) }) as u16;
    let remote_ip4 = load(unsafe { addr_of!((*ops).remote_ip4) });
    let local_ip4 = load(unsafe { addr_of!((*ops).local_ip4) });
    let remote_ip6 = load6(unsafe { addr_of!((*ops).remote_ip6) });
    let local_ip6 = load6(unsafe { addr_of!((*ops).local_ip6) });
    let local: Ip6Words = match family {
        AF_INET if remote_ip4 == LOOPBACK4_WORD => v4_mapped(local_ip4),
        AF_INET6 if remote_ip6 == LOOPBACK6_WORDS || remote_ip6 == v4_mapped(LOOPBACK4_WORD) => {
            local_ip6
        }
        _ => return,
    };
    let local_port = load(unsafe { addr_of!((*ops).local_port) }) as u16;
    // SAFETY: both helpers only read the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(orig) = (unsafe { ORIG_DST_BY_COOKIE.get(cookie) }).copied() else {
        // Something in the pod dialled 127.0.0.1:15001 itself; not a captured connection.
        count(Verdict::SockopsMissing);
        return;
    };
    let key = TupleKey {
        // SAFETY: reads the socket's network namespace, no side effects.
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        addr: local,
        port: local_port,
        _pad: 0,
        _pad2: 0,
    };
    if ORIG_DST_BY_TUPLE.insert(key, orig, 0).is_err() {
        warn!(ctx, "weft: orig-dst tuple map refused cookie {}", cookie);
        count(Verdict::PassMapFull);
        return;
    }
    let _ = ORIG_DST_BY_COOKIE.remove(cookie);
    count(Verdict::SockopsRecorded);
}
