//! The control plane: the mesh's certificate authority, its configuration sources (a
//! directory of YAML documents today, Kubernetes later) and the discovery server agents
//! and gateways subscribe to.
//!
//! - [`config`]: the configuration model — documents, validation, compilation into wire
//!   resources, and the watched directory source. `weftctl validate` uses it offline;
//! - [`ca`]: the root CA, generated and persisted on first start or supplied by the
//!   operator; it issues the server's own TLS certificate, node credentials and workload
//!   certificates;
//! - [`node`]: node credentials, the client certificates that scope what an agent may ask
//!   the CA and the discovery server for;
//! - [`principal`]: who may call the control plane (node, operator and gateway
//!   credentials);
//! - [`server`]: the gRPC server (`weft.discovery.v1.Discovery`,
//!   `weft.identity.v1.Certificates`) and the store that versions configurations and
//!   pushes deltas to subscribers;
//! - [`metrics`]: Prometheus metrics on `--metrics-addr`.

pub mod ca;
pub mod config;
pub mod duration;
pub mod metrics;
pub mod node;
pub mod principal;
pub mod server;
