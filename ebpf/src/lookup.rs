//! `sk_lookup`: steer plaintext TCP arriving at an enrolled pod to the agent's inbound listener
//! (port 15006) inside that pod's network namespace, where policy decides (PERMISSIVE vs
//! STRICT). The program is attached to each enrolled pod's network namespace; it runs when the
//! kernel looks for a listener for a SYN to a local address, before the ordinary socket lookup.
//!
//! The listener comes from `INBOUND_LISTENERS`, keyed by the packet's local (destination)
//! address, and is chosen with `bpf_sk_assign`; the accepted socket's `getsockname()` is then
//! the original destination (pod IP and application port), so no map entry is needed for it.
//!
//! Passed untouched (SK_PASS without a socket, so the ordinary lookup runs):
//! - connections from inside the pod itself: the agent reaches the application that way, and
//!   the pod talking to itself is not ours to capture. Two tests, because `ingress_ifindex`
//!   is the loopback device (ifindex 1 in every namespace) only for loopback *addresses*: a
//!   pod connecting to its own pod IP also goes over `lo`, but the kernel reports the device
//!   that owns the address (the pod's eth0) as ingress (`inet_iif()` returns the route's
//!   `rt_iif`, which `ip_route_output_key_hash_rcu()` sets to the FIB result device for local
//!   routes). Such a connection has the destination address as its source (the kernel picks
//!   the destination itself as source for a local route), so "source == destination" is the
//!   second test. Verified on 6.18 by `agent/tests/inbound_steering.rs`;
//! - the mesh's own ports: HBONE 15008 (the agent's mTLS listener answers it), 15001, 15006;
//! - addresses without a listener (pod not enrolled, or an address that is not the pod's);
//! - everything that is not TCP.
//!
//! Fails open: when `bpf_sk_assign` refuses the listener the packet goes to whatever listens
//! on the original port (counted as `InboundAssignFailed`, logged at warn). STRICT mode, which
//! must not let plaintext reach the application, will have to drop explicitly instead.
//!
//! Verifier notes: every context field is read up front with a volatile 4-byte load at a
//! constant offset, as in sockops: left alone, LLVM merges the IPv4 and IPv6 branches' loads
//! into one load through a computed context pointer, which the verifier rejects ("dereference
//! of modified ctx ptr"). Reading the other family's address is allowed and yields zeros.
//! `local_port` is host order in a full u32 (unlike `remote_port`, a __be16).

use core::ptr::addr_of;

use aya_ebpf::{bindings::bpf_sk_lookup, macros::sk_lookup, programs::SkLookupContext};
use aya_log_ebpf::{debug, warn};
use weft_ebpf_common::{
    AF_INET, AF_INET6, HBONE_PORT, INBOUND_PLAINTEXT_PORT, InboundKey, OUTBOUND_PORT, Verdict,
    v4_mapped,
};

use crate::ctx::{load, load6};
use crate::maps::{INBOUND_LISTENERS, count};

/// Use the socket the program assigned, or continue with the ordinary lookup if none.
const SK_PASS: u32 = 1;
const IPPROTO_TCP: u32 = 6;
/// The loopback device is always ifindex 1 (`LOOPBACK_IFINDEX`) in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;
/// What the map lookup inside `redirect_sk_lookup` returns on a miss; `bpf_sk_assign`'s own
/// errors are EEXIST, ESOCKTNOSUPPORT, EPROTOTYPE and EAFNOSUPPORT, never ENOENT.
const ENOENT: i32 = 2;

#[sk_lookup]
pub fn weft_inbound_lookup(ctx: SkLookupContext) -> u32 {
    count(steer(&ctx));
    // Always SK_PASS: with a socket assigned the kernel uses it, without one the ordinary
    // lookup runs. SK_DROP is for policy, which this program does not enforce yet.
    SK_PASS
}

#[inline(always)]
fn steer(ctx: &SkLookupContext) -> Verdict {
    let lk: *const bpf_sk_lookup = ctx.lookup;
    // SAFETY (all `addr_of!` below): field addresses of the live context, no reads.
    let family = load(unsafe { addr_of!((*lk).family) });
    let protocol = load(unsafe { addr_of!((*lk).protocol) });
    let remote_ip4 = load(unsafe { addr_of!((*lk).remote_ip4) });
    let remote_ip6 = load6(unsafe { addr_of!((*lk).remote_ip6) });
    let local_ip4 = load(unsafe { addr_of!((*lk).local_ip4) });
    let local_ip6 = load6(unsafe { addr_of!((*lk).local_ip6) });
    let local_port = load(unsafe { addr_of!((*lk).local_port) });
    let ifindex = load(unsafe { addr_of!((*lk).ingress_ifindex) });

    if protocol != IPPROTO_TCP {
        return Verdict::InboundPassNotTcp;
    }
    if ifindex == LOOPBACK_IFINDEX {
        return Verdict::InboundPassLocal;
    }
    let port = local_port as u16;
    if port == HBONE_PORT || port == OUTBOUND_PORT || port == INBOUND_PLAINTEXT_PORT {
        return Verdict::InboundPassMeshPort;
    }
    let (addr, remote) = match family as u16 {
        AF_INET => (v4_mapped(local_ip4), v4_mapped(remote_ip4)),
        AF_INET6 => (local_ip6, remote_ip6),
        _ => return Verdict::InboundPassNoListener,
    };
    if remote == addr {
        return Verdict::InboundPassLocal;
    }
    match INBOUND_LISTENERS.redirect_sk_lookup(ctx, InboundKey { addr }, 0) {
        Ok(()) => {
            debug!(
                ctx,
                "weft: inbound to port {} (family {}) steered to the agent", port, family
            );
            Verdict::InboundSteered
        }
        Err(err) if err == -ENOENT => Verdict::InboundPassNoListener,
        Err(err) => {
            warn!(
                ctx,
                "weft: sk_assign of the inbound listener failed ({}) for port {} family {}; \
                 passed to the original port",
                err,
                port,
                family
            );
            Verdict::InboundAssignFailed
        }
    }
}
