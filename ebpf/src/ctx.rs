//! Loads from program contexts. The verifier wants each context field read with its own
//! constant-offset 4-byte load; LLVM otherwise merges or sinks loads of different branches
//! into one load through a computed address ("dereference of modified ctx ptr"), so every
//! load is volatile.

use core::ptr::read_volatile;

use weft_ebpf_common::Ip6Words;

/// A 4-byte context load the compiler may not merge with another.
#[inline(always)]
pub fn load(field: *const u32) -> u32 {
    // SAFETY: `field` points into the context the kernel passed in, valid for the whole run.
    unsafe { read_volatile(field) }
}

/// An IPv6 address field, as four separate 4-byte loads.
#[inline(always)]
pub fn load6(field: *const [u32; 4]) -> Ip6Words {
    let first = field.cast::<u32>();
    // SAFETY: as in `load`; the four words are consecutive fields of the context.
    unsafe {
        [
            load(first),
            load(first.add(1)),
            load(first.add(2)),
            load(first.add(3)),
        ]
    }
}
