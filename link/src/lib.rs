//! Joining the mesh, shared by the agent and the gateway: SPIFFE identities, the certificate
//! manager, rustls configurations, HBONE client and server, and the control-plane client.
//!
//! - [`control`]: the control-plane client (discovery subscription, reconnects, ACK/NACK);
//! - [`identity`], [`tls`], [`hbone`]: SPIFFE identities, rustls configurations and
//!   verifiers, and the HBONE tunnel.

pub mod control;
pub mod hbone;
pub mod identity;
pub mod tls;
