//! The edge gateway: listeners, routes, authentication, plans and quotas, transforms,
//! caching, REST to gRPC, analytics and the developer portal. It joins the mesh through
//! `weft-link`, never through the agent crate.
