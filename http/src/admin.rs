//! The admin, metrics and readiness endpoints that the agent and the gateway both serve on
//! their small admin runtime: binding the three ports up front, the accept loop, and the
//! responses every one of them builds the same way. Each binary keeps its own routes and
//! what they report; connections are served by [`HttpServer`] within its limits (the
//! `--http-*` timeouts), since metrics and readiness are reachable by whoever can reach the
//! host.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use prometheus_client::registry::Registry;
use serde_json::json;
use tracing::{Instrument as _, debug_span, warn};
use weft_link::control::ConnectionStatus;

use crate::server::{self, Body, HttpServer, ServerLimits};

/// Admin API (configuration, log level): localhost only, it can change the binary's behaviour.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:15000";
/// Prometheus scrape endpoint, reachable from the node network.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:15020";
/// Readiness probe for the kubelet.
pub const DEFAULT_READINESS_ADDR: &str = "0.0.0.0:15021";
/// Admin, metrics and readiness clients (Prometheus, the kubelet, an operator's curl) send
/// their request headers at once; one that trickles them (slowloris) only holds a socket.
pub const DEFAULT_HTTP_HEADER_TIMEOUT: &str = "10s";
/// An admin, metrics or readiness connection that moves no byte either way for this long is
/// closed: longer than any scrape or probe takes, shorter than a stalled reader should hold
/// a socket. Clients that keep connections alive between scrapes reconnect.
pub const DEFAULT_HTTP_IDLE_TIMEOUT: &str = "60s";

pub use weft_link::logging::SetLogLevel;

/// After `accept` fails (e.g. EMFILE), wait before the next try instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Which set of routes a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Admin,
    Metrics,
    Readiness,
}

impl Endpoint {
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Admin => "admin",
            Endpoint::Metrics => "metrics",
            Endpoint::Readiness => "readiness",
        }
    }
}

/// An endpoint's port that could not be bound; `hint` says what usually holds it.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the {what} endpoint: {source} ({hint})")]
pub struct BindError {
    pub addr: SocketAddr,
    pub what: &'static str,
    pub hint: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// The three endpoints' listeners, bound and not yet served.
#[derive(Debug)]
pub struct Endpoints {
    listeners: Vec<(std::net::TcpListener, Endpoint)>,
}

impl Endpoints {
    /// Binds all three now, so a port conflict fails start-up; they are served later, on the
    /// admin runtime. `hint` ends a bind error, e.g. "is another agent running on this node?".
    pub fn bind(
        admin: SocketAddr,
        metrics: SocketAddr,
        readiness: SocketAddr,
        hint: &'static str,
    ) -> Result<Self, BindError> {
        let mut listeners = Vec::with_capacity(3);
        for (addr, endpoint) in [
            (admin, Endpoint::Admin),
            (metrics, Endpoint::Metrics),
            (readiness, Endpoint::Readiness),
        ] {
            let err = |source| BindError {
                addr,
                what: endpoint.name(),
                hint,
                source,
            };
            let listener = std::net::TcpListener::bind(addr).map_err(err)?;
            listener.set_nonblocking(true).map_err(err)?;
            listeners.push((listener, endpoint));
        }
        Ok(Endpoints { listeners })
    }

    /// Spawns the accept loop of each endpoint on the current runtime; `route` answers every
    /// request of every endpoint. A client gets `header_timeout` to send a request's headers
    /// (also while a kept-alive connection waits for its next request); a connection that
    /// moves no byte either way for `idle_timeout` is closed.
    pub fn spawn<R>(self, header_timeout: Duration, idle_timeout: Duration, route: R)
    where
        R: Fn(Endpoint, Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
    {
        let server = Arc::new(HttpServer::new(ServerLimits {
            header_read_timeout: header_timeout,
            idle_timeout,
            ..Default::default()
        }));
        let route = Arc::new(route);
        for (listener, endpoint) in self.listeners {
            tokio::spawn(serve(listener, endpoint, server.clone(), route.clone()));
        }
    }
}

async fn serve<R>(
    listener: std::net::TcpListener,
    endpoint: Endpoint,
    server: Arc<HttpServer>,
    route: Arc<R>,
) where
    R: Fn(Endpoint, Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
{
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(err) => {
            warn!(%err, endpoint = endpoint.name(), "cannot serve");
            return;
        }
    };
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(%err, endpoint = endpoint.name(), "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let route = route.clone();
        let service = service_fn(move |req| {
            let route = route.clone();
            async move { Ok::<_, Infallible>(route(endpoint, req)) }
        });
        let server = server.clone();
        let span = debug_span!("http_conn", endpoint = endpoint.name(), %remote);
        tokio::spawn(
            async move { server.serve(stream, service, std::future::pending()).await }
                .instrument(span),
        );
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(server::full(body));
    *resp.status_mut() = status;
    resp
}

/// `v` as indented JSON.
pub fn json_response(v: &serde_json::Value) -> Response<Body> {
    match serde_json::to_string_pretty(v) {
        Ok(body) => Response::builder()
            .header("content-type", "application/json")
            .body(server::full(Bytes::from(body + "\n")))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, String::new())),
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
    }
}

/// The registry in the OpenMetrics text format, for `/metrics`.
pub fn metrics(registry: &Registry) -> Response<Body> {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, registry) {
        Ok(()) => Response::builder()
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(server::full(out))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, String::new())),
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
    }
}

/// `/logging?level=<filter>`: switches the log filter. `examples` completes the message of a
/// request without a level, e.g. "?level=debug".
pub fn logging(set_log_level: &SetLogLevel, query: Option<&str>, examples: &str) -> Response<Body> {
    let level = query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("level="));
    match level {
        None => text(
            StatusCode::BAD_REQUEST,
            format!("give the new filter as ?level=<filter>, e.g. {examples}\n"),
        ),
        Some(level) => match set_log_level(level) {
            Ok(()) => text(StatusCode::OK, format!("log level is now {level}\n")),
            Err(err) => text(StatusCode::BAD_REQUEST, format!("{err}\n")),
        },
    }
}

/// The discovery stream's state as the admin endpoints show it.
pub fn control_status(s: &ConnectionStatus) -> serde_json::Value {
    json!({
        "connected": s.connected,
        "synced": s.synced,
        "versions": s.versions.iter().map(|(t, v)| (t.as_str_name(), v)).collect::<std::collections::BTreeMap<_, _>>(),
        "last_error": s.last_error,
        "last_rejections": s.last_rejections.iter().map(|(t, (v, r))| json!({
            "type": t.as_str_name(), "version": v, "resource": r.resource_name, "reason": r.reason,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
#[path = "admin_tests.rs"]
mod tests;
