//! Weft's kernel programs. Each attach point has its own module; the maps they share are in
//! `maps`. Every program fails *open*: when something goes wrong the socket keeps its original
//! destination (counted as a verdict), because a capture bug must never take a pod's traffic
//! down. Enforcing programs (policy) will fail closed and say so.
#![no_std]
#![no_main]

mod connect;
mod ctx;
mod dns;
mod lookup;
mod maps;
mod service;
mod sockops;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in practice: the verifier rejects programs that could reach a panic path.
    loop {}
}
