//! The agent's HTTP endpoints, on their own small runtime so a busy data path never delays a
//! probe: admin (`/config_dump`, `/logging`), Prometheus (`/metrics`) and readiness
//! (`/healthz/ready`). Served by `weft-http`'s admin endpoints with the `--http-*` timeouts.

use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use parking_lot::RwLock;
use prometheus_client::registry::Registry;
use serde_json::json;
use weft_http::{
    admin::{Endpoint, control_status, json_response, logging, text},
    server::Body,
};
use weft_link::control::ConnectionState;
use weft_proto::discovery::v1::ResourceType;

pub use weft_http::admin::{BindError, Endpoints, SetLogLevel};

use crate::{identity::Identities, pods::PodStatus, policy::PolicyIndex, state::WorkloadStore};

/// Ends the message of a port that cannot be bound.
pub const BIND_HINT: &str = "is another agent running on this node?";

/// What the endpoints report.
pub struct AdminState {
    pub node: String,
    pub registry: Registry,
    pub workloads: Arc<ArcSwap<WorkloadStore>>,
    pub policies: Arc<ArcSwap<PolicyIndex>>,
    pub identities: Arc<Identities>,
    pub pods: RwLock<Vec<PodStatus>>,
    /// The discovery stream's state.
    pub control: ConnectionState,
    pub set_log_level: SetLogLevel,
}

/// Answers a request to one of the endpoints.
pub fn route(endpoint: Endpoint, state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    match (endpoint, req.method(), path) {
        (Endpoint::Metrics, &Method::GET, "/metrics") => weft_http::admin::metrics(&state.registry),
        (Endpoint::Readiness, &Method::GET, "/healthz/ready") => readiness(state),
        (Endpoint::Admin, &Method::GET, "/config_dump") => config_dump(state),
        (Endpoint::Admin, &Method::GET, "/certs") => json_response(&certs(state)),
        (Endpoint::Admin, &Method::GET, "/healthz/ready") => readiness(state),
        (Endpoint::Admin, _, "/logging") => logging(
            &state.set_log_level,
            req.uri().query(),
            "?level=debug or ?level=info,weft_agent=debug",
        ),
        (Endpoint::Admin, &Method::GET, "/") => text(
            StatusCode::OK,
            "GET /config_dump\nGET /certs\nGET /healthz/ready\nPOST /logging?level=<filter>\n"
                .into(),
        ),
        _ => text(StatusCode::NOT_FOUND, format!("no such endpoint: {path}\n")),
    }
}

fn readiness(state: &AdminState) -> Response<Body> {
    let pods = state.pods.read();
    let mut failing: Vec<String> = pods
        .iter()
        .filter(|p| !p.captured)
        .map(|p| {
            format!(
                "{}: {}",
                p.uid,
                p.error.as_deref().unwrap_or("not captured")
            )
        })
        .collect();
    // Workloads applied once are enough: the agent keeps serving them while the control plane
    // is away, so an outage must not make every node unready at once.
    if state.control.version(ResourceType::Workload).is_none() {
        let status = state.control.status();
        failing.push(format!(
            "no workloads from the control plane yet ({})",
            status.last_error.as_deref().unwrap_or("connecting")
        ));
    }
    // A pod whose identity has no certificate cannot take HBONE tunnels; once issued, a
    // certificate is kept through failed renewals, so a CA outage does not unready a node.
    for (identity, reason) in state.identities.without_certificate() {
        failing.push(format!("{identity}: no certificate yet ({reason})"));
    }
    if failing.is_empty() {
        text(StatusCode::OK, "ready\n".into())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{}\n", failing.join("\n")),
        )
    }
}

fn config_dump(state: &AdminState) -> Response<Body> {
    let store = state.workloads.load();
    let mut workloads: Vec<_> = store.iter().map(|w| w.as_ref()).collect();
    workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
    let status = state.control.status();
    let mut control = control_status(&status);
    if let Some(fields) = control.as_object_mut() {
        fields.insert("connects".into(), status.connects.into());
    }
    let dump = json!({
        "node": state.node,
        "control": control,
        "pods": *state.pods.read(),
        "workloads": workloads,
        "policies": state.policies.load().len(),
        "certificates": certs(state),
    });
    json_response(&dump)
}

/// The certificates of this node's identities and their renewal state.
fn certs(state: &AdminState) -> serde_json::Value {
    let statuses = state.identities.statuses();
    serde_json::Value::Array(statuses.iter().map(cert_json).collect())
}

fn cert_json(status: &weft_link::certs::CertStatus) -> serde_json::Value {
    let unix = |t: Option<std::time::SystemTime>| {
        t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    json!({
        "identity": status.identity.as_str(),
        "state": status.phase.as_str(),
        "not_before_unix": unix(status.not_before),
        "not_after_unix": unix(status.not_after),
        "next_renewal_unix": unix(status.next_renewal),
    })
}
