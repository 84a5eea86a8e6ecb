//! HBONE: TCP tunnelled through HTTP/2 `CONNECT` over mutual TLS, agent to agent on port
//! 15008, as Istio ambient's ztunnel does it.
//!
//! One TLS connection per (source identity, destination identities, destination address)
//! carries many tunnels, one h2 stream each. A `CONNECT` request's `:authority` is the original
//! destination `ip:port`; `200` opens the tunnel, any other status refuses it. Requests carry
//! W3C `traceparent` and `baggage` headers. A client may send before the answer and ask for
//! the `200` to come with the first bytes back ([`DEFER_RESPONSE_HEADER`]).
//!
//! - [`HboneClient`] opens tunnels over a pool of multiplexed connections;
//! - [`HboneServer`] accepts them and hands each to a [`ConnectHandler`];
//! - [`HboneStream`] is one tunnel as an `AsyncRead + AsyncWrite` byte stream.

mod client;
mod pool;
mod server;
mod stream;
mod trace;
mod transport;

use std::io;
use std::net::SocketAddr;

use http::StatusCode;

pub use client::{ClientOptions, ConnectRequest, HboneClient, PlainSocketFactory, SocketFactory};
pub use server::{
    ConnectHandler, HboneServer, InboundConnect, PeerConnections, Refusal, ServerOptions,
    TunnelSummary,
};
pub use stream::HboneStream;
pub use trace::{TraceParent, TraceParentError};

use crate::tls::{TlsError, VerifyError};

/// The port HBONE listens on in every pod's network namespace.
pub const HBONE_PORT: u16 = 15008;

/// W3C trace context, <https://www.w3.org/TR/trace-context/>.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// W3C baggage, <https://www.w3.org/TR/baggage/>; ztunnel puts workload metadata there.
pub const BAGGAGE_HEADER: &str = "baggage";

/// Sent by a client that does not wait for the `200` before it sends (`?1`, a structured
/// boolean, RFC 8941): the server may then hold the `200` back and send it with the first
/// bytes from upstream. A client without it gets the `200` as soon as the upstream is
/// connected, as ztunnel does.
pub const DEFER_RESPONSE_HEADER: &str = "weft-defer-response";
pub(crate) const DEFER_RESPONSE_YES: &str = "?1";

// HTTP/2 settings of both ends. The windows are sized for one tunnel to fill a fast link: the
// h2 default of 64 KiB would cap a stream at 64 KiB per round trip. Same values as ztunnel.
/// Per-stream receive window.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Connection receive window, shared by all tunnels of a connection.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest DATA frame accepted: fewer frames per megabyte than the 16 KiB default.
const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// CONNECT requests carry a few small headers; the 16 MiB default only invites abuse.
const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// Bytes a stream may queue in h2 beyond the peer's window before writes wait (hyper's value).
const MAX_SEND_BUFFER: usize = 400 * 1024;

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("creating a socket for {dst} failed: {source}")]
    Socket {
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },

    #[error("connecting to {dst} failed: {source}; maybe a NetworkPolicy blocks port 15008")]
    Connect {
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },

    #[error("connecting to {dst} timed out; maybe a firewall drops traffic to port 15008")]
    ConnectTimeout { dst: SocketAddr },

    #[error("mTLS handshake with {dst} failed: {cause}")]
    Tls {
        dst: SocketAddr,
        cause: String,
        #[source]
        source: io::Error,
    },

    #[error("HTTP/2 with {dst} failed: {cause}")]
    H2 {
        dst: SocketAddr,
        cause: String,
        #[source]
        source: h2::Error,
    },

    #[error("TLS and HTTP/2 handshake with {dst} timed out; is an HBONE server listening there?")]
    HandshakeTimeout { dst: SocketAddr },

    #[error("{dst} refused CONNECT {authority}: HTTP {status}")]
    Refused {
        dst: SocketAddr,
        authority: SocketAddr,
        status: StatusCode,
    },

    #[error("{dst} allows no concurrent streams (SETTINGS_MAX_CONCURRENT_STREAMS is 0)")]
    NoStreams { dst: SocketAddr },

    #[error("cannot build the TLS client config: {source}")]
    Config {
        #[source]
        source: TlsError,
    },

    #[error("cannot build the CONNECT request for {authority}: {source}")]
    Request {
        authority: SocketAddr,
        #[source]
        source: http::Error,
    },
}

impl HboneError {
    /// The failure to open a tunnel behind an I/O error of an optimistic [`HboneStream`]:
    /// the refusal, or why the request got no answer.
    pub fn of_io(err: &io::Error) -> Option<&HboneError> {
        err.get_ref()?.downcast_ref::<HboneError>()
    }

    /// The HTTP status of a refused `CONNECT`.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(crate) fn tls(dst: SocketAddr, source: io::Error) -> Self {
        let cause = io_cause(&source);
        Self::Tls { dst, cause, source }
    }

    pub(crate) fn h2(dst: SocketAddr, source: h2::Error) -> Self {
        let cause = match source.get_io() {
            Some(io) => io_cause(io),
            None => source.to_string(),
        };
        Self::H2 { dst, cause, source }
    }

    /// An HTTP/2 failure right after the TLS handshake. In TLS 1.3 the client finishes its
    /// handshake before the server has checked the client's certificate, so a refusal shows
    /// up here: as the server's alert, or, when the server's close overtook our first write
    /// and the alert was lost to the reset, as a broken or reset connection.
    pub(crate) fn h2_handshake(dst: SocketAddr, source: h2::Error) -> Self {
        let refused = source.get_io().is_some_and(|io| {
            is_alert(io)
                || matches!(
                    io.kind(),
                    io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::UnexpectedEof
                )
        });
        let mut err = Self::h2(dst, source);
        if refused && let Self::H2 { cause, .. } = &mut err {
            cause.push_str(
                "; the server closed the connection during the handshake: it probably \
                 refused this client's certificate or identity, or this identity already \
                 holds the most connections it allows (its log says why)",
            );
        }
        err
    }
}

/// The most precise message inside a TLS I/O error: our verifier's, else rustls'.
fn io_cause(err: &io::Error) -> String {
    let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return err.to_string();
    };
    match VerifyError::from_rustls(tls) {
        Some(verify) => verify.to_string(),
        None => tls.to_string(),
    }
}

fn is_alert(err: &io::Error) -> bool {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| matches!(tls, rustls::Error::AlertReceived(_)))
}

/// h2 errors as I/O errors, keeping the kind where there is one.
pub(crate) fn h2_to_io(err: h2::Error) -> io::Error {
    if err.is_io() {
        match err.into_io() {
            Some(io) => io,
            None => io::Error::other("HTTP/2 I/O error"),
        }
    } else if err.is_reset() {
        io::Error::new(io::ErrorKind::ConnectionReset, err)
    } else {
        io::Error::other(err)
    }
}
