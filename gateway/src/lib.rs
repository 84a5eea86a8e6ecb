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
pub mod app;
pub mod analytics;
pub mod auth;
pub mod config;
pub mod drain;
pub mod limits;
pub mod listener;
pub mod path;
pub mod proxy;
pub mod routes;
pub mod snapshot;
pub mod source;

/// `/analytics` on the admin port.
pub fn analytics_endpoint(_query: Option<&str>) -> http::Response<weft_http::server::Body> {
    admin::text(
        http::StatusCode::NOT_IMPLEMENTED,
        "analytics are not recorded by this build\n".into(),
    )
}
