//! The gateway's own endpoints, on the small admin runtime so a busy data path never delays a
//! probe: admin (`/config`, `/analytics`, `/logging`), Prometheus (`/metrics`) and readiness
//! (`/healthz/ready`). Served by `weft-http`'s server with the `--http-*` timeouts.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::{body::Incoming, service::service_fn};
use prometheus_client::registry::Registry;
use serde_json::json;
use tracing::{Instrument as _, debug_span, warn};
use weft_http::server::{self, Body, HttpServer};
use weft_link::{certs::IdentityCerts, control::ConnectionState};

use crate::{analytics::Analytics, drain::Draining, source::ConfigState};

/// Changes the log filter; returns the error to show the operator.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the endpoints report.
pub struct AdminState {
    pub config: Arc<ConfigState>,
    pub draining: Draining,
    pub registry: Registry,
    pub analytics: Arc<Analytics>,
    pub control: Option<ConnectionState>,
    pub certs: Option<IdentityCerts>,
    pub set_log_level: SetLogLevel,
    pub server: HttpServer,
}

/// Which routes a listener serves.
#[derive(Clone, Copy, Debug)]
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

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr} for the {what} endpoint: {source} (is another gateway running here?)"
)]
pub struct BindError {
    pub addr: SocketAddr,
    pub what: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// Binds now (so a port conflict fails start-up), serves later on the admin runtime.
pub fn bind(addr: SocketAddr, endpoint: Endpoint) -> Result<std::net::TcpListener, BindError> {
    let err = |source| BindError {
        addr,
        what: endpoint.name(),
        source,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

pub async fn serve(listener: std::net::TcpListener, endpoint: Endpoint, state: Arc<AdminState>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(err) => {
            warn!(%err, endpoint = endpoint.name(), "cannot serve");
            return;
        }
    };
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(a) => a,
            Err(err) => {
                warn!(%err, endpoint = endpoint.name(), "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let st = state.clone();
        let service = service_fn(move |req| {
            let st = st.clone();
            async move { Ok::<_, Infallible>(route(endpoint, &st, req)) }
        });
        let state = state.clone();
        let span = debug_span!("admin_conn", endpoint = endpoint.name(), %remote);
        tokio::spawn(
            async move {
                state
                    .server
                    .serve(stream, service, std::future::pending())
                    .await;
            }
            .instrument(span),
        );
    }
}

fn route(endpoint: Endpoint, state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    match (endpoint, req.method(), path) {
        (Endpoint::Metrics, &Method::GET, "/metrics") => metrics(state),
        (Endpoint::Readiness | Endpoint::Admin, &Method::GET, "/healthz/ready") => readiness(state),
        (Endpoint::Admin, &Method::GET, "/config") => json_response(&config(state)),
        (Endpoint::Admin, &Method::GET, "/analytics") => {
            match state.analytics.query_params(req.uri().query()) {
                Ok(v) => json_response(&v),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (Endpoint::Admin, _, "/logging") => logging(state, req.uri().query()),
        (Endpoint::Admin, &Method::GET, "/") => text(
            StatusCode::OK,
            "GET /config\nGET /analytics?since=<RFC 3339 or unix seconds>\nGET /healthz/ready\nPOST /logging?level=<filter>\n"
                .into(),
        ),
        _ => text(StatusCode::NOT_FOUND, format!("no such endpoint: {path}\n")),
    }
}

fn metrics(state: &AdminState) -> Response<Body> {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &state.registry) {
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

fn readiness(state: &AdminState) -> Response<Body> {
    if state.draining.is_draining() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: draining\n".into(),
        );
    }
    if !state.config.configured.load(Ordering::Acquire) {
        let why = state
            .config
            .last_error
            .lock()
            .clone()
            .or_else(|| state.control.as_ref().and_then(|c| c.status().last_error))
            .unwrap_or_else(|| "waiting for the first configuration".into());
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        );
    }
    text(StatusCode::OK, "ready\n".into())
}

fn config(state: &AdminState) -> serde_json::Value {
    let snap = state.config.snapshot.load();
    let control = state.control.as_ref().map(|c| {
        let s = c.status();
        json!({
            "connected": s.connected,
            "synced": s.synced,
            "versions": s.versions.iter().map(|(t, v)| (t.as_str_name(), v)).collect::<std::collections::BTreeMap<_, _>>(),
            "last_error": s.last_error,
            "last_rejections": s.last_rejections.iter().map(|(t, (v, r))| json!({
                "type": t.as_str_name(), "version": v, "resource": r.resource_name, "reason": r.reason,
            })).collect::<Vec<_>>(),
        })
    });
    let cert = state.certs.as_ref().map(|c| {
        let s = c.status();
        json!({"identity": s.identity.as_str(), "state": s.phase.as_str()})
    });
    json!({
        "configured": state.config.configured.load(Ordering::Acquire),
        "draining": state.draining.is_draining(),
        "last_error": *state.config.last_error.lock(),
        "control": control,
        "certificate": cert,
        "snapshot": snap.dump(),
    })
}

fn json_response(v: &serde_json::Value) -> Response<Body> {
    match serde_json::to_string_pretty(v) {
        Ok(body) => Response::builder()
            .header("content-type", "application/json")
            .body(server::full(Bytes::from(body + "\n")))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, String::new())),
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
    }
}

fn logging(state: &AdminState, query: Option<&str>) -> Response<Body> {
    let level = query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("level="));
    match level {
        None => text(
            StatusCode::BAD_REQUEST,
            "give the new filter as ?level=<filter>, e.g. ?level=debug\n".into(),
        ),
        Some(level) => match (state.set_log_level)(level) {
            Ok(()) => text(StatusCode::OK, format!("log level is now {level}\n")),
            Err(err) => text(StatusCode::BAD_REQUEST, format!("{err}\n")),
        },
    }
}

pub fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(server::full(body));
    *resp.status_mut() = status;
    resp
}
