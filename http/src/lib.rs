//! The one HTTP engine of Weft, shared by the edge gateway and the agents' L7: Gateway API
//! route matching and filters (`route`), serving connections (`server`) and forwarding
//! requests upstream (`client`).

pub mod client;
pub mod route;
pub mod server;
