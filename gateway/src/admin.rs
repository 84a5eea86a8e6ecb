//! The gateway's own endpoints, on the small admin runtime so a busy data path never delays a
//! probe: admin (`/config`, `/analytics`, `/logging`), Prometheus (`/metrics`) and readiness
//! (`/healthz/ready`). Served by `weft-http`'s server with the `--http-*` timeouts.

use std::sync::{Arc, atomic::Ordering};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use serde_json::json;
use weft_http::{
    admin::{Endpoint, control_status, json_response, logging, text},
    server::Body,
};
use weft_link::{certs::IdentityCerts, control::ConnectionState};

pub use weft_http::admin::{BindError, Endpoints, SetLogLevel};

use crate::{analytics::Analytics, drain::Draining, source::ConfigState};

/// Ends the message of a port that cannot be bound.
pub const BIND_HINT: &str = "is another gateway running here?";

/// What the endpoints report.
pub struct AdminState {
    pub config: Arc<ConfigState>,
    pub draining: Draining,
    pub registry: Registry,
    pub analytics: Arc<Analytics>,
    pub control: Option<ConnectionState>,
    pub certs: Option<IdentityCerts>,
    pub set_log_level: SetLogLevel,
}

/// Answers a request to one of the endpoints.
pub fn route(endpoint: Endpoint, state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    match (endpoint, req.method(), path) {
        (Endpoint::Metrics, &Method::GET, "/metrics") => weft_http::admin::metrics(&state.registry),
        (Endpoint::Readiness | Endpoint::Admin, &Method::GET, "/healthz/ready") => readiness(state),
        (Endpoint::Admin, &Method::GET, "/config") => json_response(&config(state)),
        (Endpoint::Admin, &Method::GET, "/analytics") => {
            match state.analytics.query_params(req.uri().query()) {
                Ok(v) => json_response(&v),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (Endpoint::Admin, _, "/logging") => {
            logging(&state.set_log_level, req.uri().query(), "?level=debug")
        }
        (Endpoint::Admin, &Method::GET, "/") => text(
            StatusCode::OK,
            "GET /config\nGET /analytics?since=<RFC 3339 or unix seconds>\nGET /healthz/ready\nPOST /logging?level=<filter>\n"
                .into(),
        ),
        _ => text(StatusCode::NOT_FOUND, format!("no such endpoint: {path}\n")),
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
    let control = state.control.as_ref().map(|c| control_status(&c.status()));
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
