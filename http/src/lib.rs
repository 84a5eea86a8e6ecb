//! The one HTTP engine of Weft, shared by the edge gateway and the agents' L7: Gateway API
//! route matching and filters (`route`), retry decisions and budgets (`retry`), serving
//! connections (`server`), forwarding requests upstream (`client`) and the request phases a
//! proxy implements (`phase`), and the admin, metrics and readiness endpoints of the binaries
//! (`admin`).

pub mod admin;
pub mod client;
pub mod phase;
pub mod retry;
pub mod route;
pub mod server;
