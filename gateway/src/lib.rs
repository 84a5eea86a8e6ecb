//! The edge gateway: listeners, routes, authentication (`auth`), plans and quotas
//! (`limits`), analytics. It joins the mesh through `weft-link` and routes with `weft-http`,
//! never through the agent crate.
//!
//! - [`config`]: the command line;
//! - [`app`]: start-up, the two runtimes, SIGTERM drain;
//! - [`source`]: the configuration from the control plane or a directory, put in force as
//!   one [`snapshot::Snapshot`];
//! - [`listener`]: the client-facing ports, TLS with SNI;
//! - [`proxy`]: the request pipeline;
//! - [`admin`]: admin, metrics and readiness endpoints.

pub mod admin;
pub mod analytics;
pub mod app;
pub mod auth;
pub mod config;
pub mod drain;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod path;
pub mod proxy;
pub mod snapshot;
pub mod source;
