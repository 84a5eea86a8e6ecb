//! Weft's network-namespace testbed and the helpers its end-to-end scenarios use.
//!
//! A testbed is a small mesh on one machine: every node and every pod is a network
//! namespace, every pod has its own cgroup, and one `weft-agent` runs per node (see
//! [`testbed`]). [`http`] speaks just enough HTTP/1.0 to scrape an agent from inside a
//! namespace, and [`prom`] parses what it returns.
//!
//! This library must build with the stable toolchain alone, before the eBPF toolchain is
//! installed: `cargo xtask` uses it to install that toolchain. It therefore never depends
//! on `weft-agent`; it runs the agent binary it is given.

pub mod bench;
pub mod edge;
pub mod http;
pub mod prom;
pub mod scenario;
pub mod testbed;

pub use testbed::{AgentConfig, Config, Error, Testbed, TestbedGuard};

/// Whether this process runs with uid 0, which the testbed needs (namespaces, cgroups,
/// bpffs, eBPF).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
