//! The agent's HTTP endpoints, on their own small runtime so a busy data path never delays a
//! probe: admin (`/config_dump`, `/logging`), Prometheus (`/metrics`) and readiness
//! (`/healthz/ready`).

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::{Mutex, RwLock};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::{Instrument, debug, debug_span, warn};

use weft_link::control::ConnectionState;
use weft_proto::discovery::v1::ResourceType;

use crate::{identity::Identities, pods::PodStatus, policy::PolicyIndex, state::WorkloadStore};

type Body = Full<Bytes>;
/// Changes the log filter; returns the error to show the operator.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

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
    /// Timeouts of every connection to these endpoints.
    pub limits: HttpLimits,
}

/// Timeouts of the admin, metrics and readiness connections: all three are reachable by
/// whoever can reach the node (metrics and readiness on every address), so none may hold a
/// socket and a task for as long as it likes.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Time a client gets to send a request's headers (also while a kept-alive connection
    /// waits for its next request).
    pub header_timeout: Duration,
    /// A connection that moves no byte either way for this long is closed, e.g. a client
    /// that stopped reading its response.
    pub idle_timeout: Duration,
}

/// After `accept` fails (e.g. EMFILE), wait before the next try instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr} for the {what} endpoint: {source} (is another agent running on this node?)"
)]
pub struct BindError {
    pub addr: SocketAddr,
    pub what: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// Which set of routes a listener serves.
#[derive(Clone, Copy, Debug)]
pub enum Endpoint {
    Admin,
    Metrics,
    Readiness,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Admin => "admin",
            Endpoint::Metrics => "metrics",
            Endpoint::Readiness => "readiness",
        }
    }
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
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(%err, endpoint = endpoint.name(), "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let state = state.clone();
        let limits = state.limits;
        let service = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(route(endpoint, &state, req)) }
        });
        let span = debug_span!("http_conn", endpoint = endpoint.name(), %remote);
        tokio::spawn(serve_connection(stream, limits, service).instrument(span));
    }
}

/// Serves HTTP/1.1 on one accepted connection within `limits`.
async fn serve_connection<S>(stream: TcpStream, limits: HttpLimits, service: S)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    let (stream, last) = Activity::new(stream);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        served = conn => if let Err(err) = served {
            debug!(%err, "connection ended");
        },
        () = idle(&last, limits.idle_timeout) => {
            debug!(timeout = ?limits.idle_timeout, "connection idle; closing it");
        }
    }
}

/// Resolves once no byte has moved for `timeout` since the last activity in `last`.
async fn idle(last: &Mutex<Instant>, timeout: Duration) {
    loop {
        let deadline = *last.lock() + timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// A stream that records when a byte last moved through it, either way.
struct Activity<T> {
    inner: T,
    last: Arc<Mutex<Instant>>,
}

impl<T> Activity<T> {
    fn new(inner: T) -> (Self, Arc<Mutex<Instant>>) {
        let last = Arc::new(Mutex::new(Instant::now()));
        let this = Activity {
            inner,
            last: last.clone(),
        };
        (this, last)
    }

    fn moved(&self, n: usize) {
        if n > 0 {
            *self.last.lock() = Instant::now();
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.moved(buf.filled().len().saturating_sub(before));
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            self.moved(n);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn route(endpoint: Endpoint, state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    match (endpoint, req.method(), path) {
        (Endpoint::Metrics, &Method::GET, "/metrics") => metrics(state),
        (Endpoint::Readiness, &Method::GET, "/healthz/ready") => readiness(state),
        (Endpoint::Admin, &Method::GET, "/config_dump") => config_dump(state),
        (Endpoint::Admin, &Method::GET, "/certs") => json_response(&certs(state)),
        (Endpoint::Admin, &Method::GET, "/healthz/ready") => readiness(state),
        (Endpoint::Admin, _, "/logging") => logging(state, req.uri().query()),
        (Endpoint::Admin, &Method::GET, "/") => text(
            StatusCode::OK,
            "GET /config_dump\nGET /certs\nGET /healthz/ready\nPOST /logging?level=<filter>\n"
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
            .body(Full::new(Bytes::from(out)))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, String::new())),
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
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
    let control = state.control.status();
    let dump = json!({
        "node": state.node,
        "control": {
            "connected": control.connected,
            "synced": control.synced,
            "connects": control.connects,
            "versions": control.versions.iter().map(|(t, v)| (t.as_str_name(), v)).collect::<std::collections::BTreeMap<_, _>>(),
            "last_error": control.last_error,
            "last_rejections": control.last_rejections.iter().map(|(t, (v, r))| json!({
                "type": t.as_str_name(), "version": v, "resource": r.resource_name, "reason": r.reason,
            })).collect::<Vec<_>>(),
        },
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

fn json_response(dump: &serde_json::Value) -> Response<Body> {
    match serde_json::to_string_pretty(dump) {
        Ok(body) => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body + "\n")))
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
            "give the new filter as ?level=<filter>, e.g. ?level=debug or \
             ?level=info,weft_agent=debug\n"
                .into(),
        ),
        Some(level) => match (state.set_log_level)(level) {
            Ok(()) => text(StatusCode::OK, format!("log level is now {level}\n")),
            Err(err) => text(StatusCode::BAD_REQUEST, format!("{err}\n")),
        },
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
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

#[cfg(test)]
#[path = "admin_tests.rs"]
mod tests;
