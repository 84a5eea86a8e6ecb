//! The edge gateway: listeners, routes, authentication (`auth`), plans and quotas
//! (`limits`), analytics. It joins the mesh through `weft-link` and routes with `weft-http`,
//! never through the agent crate.

pub mod analytics;
pub mod auth;
pub mod limits;
