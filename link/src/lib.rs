//! Joining the mesh, shared by the agent and the gateway: SPIFFE identities, the certificate
//! manager, rustls configurations, HBONE client and server, and the control-plane client.
//!
//! - [`control`]: the control-plane client (discovery subscription, reconnects, ACK/NACK);
//! - [`identity`], [`tls`], [`hbone`]: SPIFFE identities, rustls configurations and
//!   verifiers, and the HBONE tunnel;
//! - [`copy`]: the byte copy between a tunnel or socket and its other end, both ways;
//! - [`runtime`], [`flags`], [`logging`]: what the mesh binaries start the same way: their
//!   two runtimes, the shutdown signal, durations and counts on the command line, logging.

pub mod certs;
pub mod control;
pub mod copy;
pub mod date;
pub mod flags;
pub mod hbone;
pub mod identity;
pub mod logging;
pub mod runtime;
pub mod tls;

/// An error and its causes on one line, each cause once: messages that already embed their
/// source (`"...: {source}"`) are not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer: {inner}")]
    struct Embeds {
        #[source]
        inner: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Hides {
        #[source]
        inner: std::io::Error,
    }

    #[test]
    fn each_cause_appears_once() {
        let io = || std::io::Error::other("disk on fire");
        assert_eq!(
            super::error_chain(&Embeds { inner: io() }),
            "outer: disk on fire"
        );
        assert_eq!(
            super::error_chain(&Hides { inner: io() }),
            "outer: disk on fire"
        );
    }
}
