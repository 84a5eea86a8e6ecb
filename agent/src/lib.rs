//! The Weft node agent: loads the eBPF capture programs, enrols this node's pods (listeners
//! inside their network namespaces, programs on their cgroups), learns the mesh's workloads
//! from the control plane, proxies pod connections to their original destinations, and serves
//! admin, metrics and readiness endpoints.
//!
//! One module per concern; `app` wires them together.

pub mod admin;
pub mod app;
pub mod capture;
pub mod config;
pub mod discovery;
pub mod dns;
pub mod drain;
pub mod identity;
pub mod inpod;
pub mod metrics;
pub mod pods;
pub mod policy;
pub mod preflight;
pub mod proxy;
pub mod rlimit;
pub mod services_kernel;
pub mod state;
