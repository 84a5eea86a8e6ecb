//! Maps shared by the capture programs. Names and value types come from `weft-ebpf-common`,
//! which the agent reads too.

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, SockHash},
};
use weft_ebpf_common::{
    INBOUND_LISTENER_ENTRIES, InboundKey, ORIG_DST_MAP_ENTRIES, OrigDst, TupleKey, Verdict,
};

/// Original destination by socket cookie, from `connect()` until sockops learns the source port.
#[map(name = "ORIG_DST_BY_COOKIE")]
pub static ORIG_DST_BY_COOKIE: LruHashMap<u64, OrigDst> =
    LruHashMap::with_max_entries(ORIG_DST_MAP_ENTRIES, 0);

/// Original destination by (pod netns, client address), until the agent accepts the connection.
#[map(name = "ORIG_DST_BY_TUPLE")]
pub static ORIG_DST_BY_TUPLE: LruHashMap<TupleKey, OrigDst> =
    LruHashMap::with_max_entries(ORIG_DST_MAP_ENTRIES, 0);

/// The agent's inbound plaintext listener (15006, inside the pod's network namespace) by pod
/// IP, for sk_lookup. Written by the agent when it enrols a pod; a closed listener leaves the
/// map by itself (the kernel unlinks sockets from socket maps when they close).
#[map(name = "INBOUND_LISTENERS")]
pub static INBOUND_LISTENERS: SockHash<InboundKey> =
    SockHash::with_max_entries(INBOUND_LISTENER_ENTRIES, 0);

/// One counter per verdict, per CPU, so counting never contends.
#[map(name = "VERDICTS")]
pub static VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Verdict::COUNT, 0);

#[inline(always)]
pub fn count(verdict: Verdict) {
    if let Some(slot) = VERDICTS.get_ptr_mut(verdict as u32) {
        // SAFETY: a per-CPU slot is only touched by programs running on this CPU, and a
        // program is not preempted by another on the same CPU for these hooks.
        unsafe { *slot += 1 };
    }
}
