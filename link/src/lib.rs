//! Joining the mesh, shared by the agent and the gateway: SPIFFE identities, the certificate
//! manager, rustls configurations, HBONE client and server, and the control-plane client.
