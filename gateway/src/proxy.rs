//! The request pipeline: the gateway's implementation of `weft-http`'s phases.
//!
//! Per request: one snapshot load; route selection on the listener of the request's port and
//! host; path sanity; redirect; authentication and limits; request filters; the consumer and
//! forwarding headers; a weighted backend pick; a mesh endpoint over HBONE or a URL backend;
//! the route's timeouts and retries; mirrors; response filters; the access log. Errors are
//! answered as Envoy answers them: 404 no route, 400 bad path, 500 no backend weight,
//! 502 upstream connect failure, 503 no ready endpoint, 504 timeout.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
    uri::Scheme,
};
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Incoming};
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::{debug, warn};
use weft_http::{
    client::{ClientError, Target, UpstreamClient, UpstreamProtocol},
    phase::{self, Phases, Session},
    server::{self, Body, BodyError},
};
use weft_link::{hbone::HBONE_PORT, identity::TrustDomain};
use weft_mesh::workload::TunnelProtocol;
use weft_proto::discovery::v1::{self as pb, route_filter::Filter};

use crate::{path, snapshot::Snapshot};

/// The header the gateway sets to the authenticated consumer (`namespace/name`); a client's
/// copy is always removed.
pub const CONSUMER_HEADER: &str = "x-weft-consumer";
/// The W3C baggage member that carries the consumer.
pub const CONSUMER_BAGGAGE_KEY: &str = "weft-consumer";
/// Mirrored requests in flight at once; more are dropped (a mirror must never slow or
/// starve the real traffic).
const MAX_MIRRORS_IN_FLIGHT: usize = 64;

/// Shared by every request.
pub struct Proxy {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub client: UpstreamClient,
    pub trust_domain: TrustDomain,
    pub max_body_bytes: u64,
    pub body_timeout: Duration,
    round_robin: AtomicUsize,
    mirrors: Arc<Semaphore>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

/// One request's state through the phases.
pub struct Ctx {
    start: Instant,
    session: Session,
    snapshot: Arc<Snapshot>,
    method: Method,
    host: String,
    path: String,
    listener: Option<String>,
    route: Option<Arc<pb::ApiRoute>>,
    rule: usize,
    /// The matched path prefix (for ReplacePrefixMatch).
    matched_prefix: Option<String>,
    consumer: Option<String>,
    upstream: Option<String>,
    attempts: u32,
    error: Option<String>,
    backend_filters: Vec<pb::RouteFilter>,
}

impl Ctx {
    fn rule(&self) -> Option<&pb::RouteRule> {
        self.route.as_ref().and_then(|r| r.rules.get(self.rule))
    }
}

impl Proxy {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        client: UpstreamClient,
        trust_domain: TrustDomain,
        max_body_bytes: u64,
        body_timeout: Duration,
    ) -> Self {
        Proxy {
            snapshot,
            client,
            trust_domain,
            max_body_bytes,
            body_timeout,
            round_robin: AtomicUsize::new(0),
            mirrors: Arc::new(Semaphore::new(MAX_MIRRORS_IN_FLIGHT)),
            next_id: AtomicU64::new(1),
        }
    }

    /// Serves one request from a client connection.
    pub async fn handle(&self, req: Request<Incoming>, session: &Session) -> Response<Body> {
        if server::declared_too_large(&req, self.max_body_bytes) {
            return error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        let req = req.map(|b| server::guard_body(b, self.max_body_bytes, self.body_timeout));
        phase::run(self, session, req).await
    }

    fn pick_backend<'a>(&self, rule: &'a pb::RouteRule) -> Result<&'a pb::BackendRef, Refuse> {
        if rule.backends.is_empty() {
            return Err(Refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the route has no backends",
            ));
        }
        let total: u64 = rule.backends.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return Err(Refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "every backend of the route has weight 0",
            ));
        }
        // Smooth enough and lock-free: a counter walked through the weights.
        let n = self
            .next_id
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut point = n % total;
        for b in &rule.backends {
            let w = u64::from(b.weight);
            if point < w {
                return Ok(b);
            }
            point -= w;
        }
        Err(Refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no backend picked",
        ))
    }

    /// Where a backend reference goes now.
    fn target(
        &self,
        snap: &Snapshot,
        route_ns: &str,
        b: &pb::BackendRef,
    ) -> Result<Target, Refuse> {
        if !b.url.is_empty() {
            let uri: Uri = b
                .url
                .parse()
                .map_err(|_| Refuse(StatusCode::INTERNAL_SERVER_ERROR, "backend URL is invalid"))?;
            let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
            else {
                return Err(Refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "backend URL needs a scheme and host",
                ));
            };
            return Ok(Target::Url {
                scheme,
                authority,
                ca_pem: (!b.ca_pem.is_empty()).then(|| Arc::from(b.ca_pem.as_str())),
            });
        }
        let ns = if b.namespace.is_empty() {
            route_ns
        } else {
            &b.namespace
        };
        let Some(service) = snap.services.get(&(ns.to_string(), b.name.clone())) else {
            return Err(Refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
            ));
        };
        let port = u16::try_from(b.port).unwrap_or(0);
        let target_port = service.target_port(port).unwrap_or(port);
        let endpoints: Vec<_> = service
            .endpoints
            .iter()
            .filter_map(|uid| snap.workloads.by_uid(uid))
            .filter(|w| !w.ips.is_empty())
            .collect();
        if endpoints.is_empty() || target_port == 0 {
            return Err(Refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
            ));
        }
        let w = endpoints[self.round_robin.fetch_add(1, Ordering::Relaxed) % endpoints.len()];
        let ip = w.ips[0];
        match w.protocol {
            TunnelProtocol::Tcp => Ok(Target::Url {
                scheme: Scheme::HTTP,
                authority: SocketAddr::new(ip, target_port)
                    .to_string()
                    .parse()
                    .map_err(|_| Refuse(StatusCode::INTERNAL_SERVER_ERROR, "bad endpoint"))?,
                ca_pem: None,
            }),
            TunnelProtocol::Hbone => {
                let expected = w.identity(&self.trust_domain).ok_or(Refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "endpoint has no identity",
                ))?;
                Ok(Target::Hbone {
                    dst: SocketAddr::new(ip, HBONE_PORT),
                    authority: SocketAddr::new(ip, target_port),
                    expected,
                })
            }
        }
    }

    /// Sends a copy of a bodiless request to a mirror backend and forgets it.
    fn mirror(
        &self,
        snap: &Snapshot,
        route_ns: &str,
        m: &pb::RequestMirror,
        parts: &http::request::Parts,
    ) {
        let Some(backend) = &m.backend else { return };
        if m.percent < 100
            && (self.next_id.fetch_add(1, Ordering::Relaxed) % 100) >= u64::from(m.percent)
        {
            return;
        }
        let Ok(permit) = self.mirrors.clone().try_acquire_owned() else {
            debug!("mirror dropped: too many in flight");
            return;
        };
        let Ok(target) = self.target(snap, route_ns, backend) else {
            return;
        };
        let mut req = Request::builder()
            .method(parts.method.clone())
            .uri(parts.uri.clone())
            .body(server::empty());
        if let Ok(r) = &mut req {
            *r.headers_mut() = parts.headers.clone();
        }
        let Ok(req) = req else { return };
        let client = self.client.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(
                Duration::from_secs(10),
                client.send(&target, UpstreamProtocol::Http1, req),
            )
            .await
            {
                Ok(Ok(resp)) => {
                    let _ = resp.into_body().collect().await;
                }
                Ok(Err(e)) => debug!(error = %e, "mirror failed"),
                Err(_) => debug!("mirror timed out"),
            }
        });
    }
}

impl Phases for Proxy {
    type Ctx = Ctx;

    fn new_ctx(&self, session: &Session) -> Ctx {
        Ctx {
            start: Instant::now(),
            session: session.clone(),
            snapshot: self.snapshot.load_full(),
            method: Method::GET,
            host: String::new(),
            path: String::new(),
            listener: None,
            route: None,
            rule: 0,
            matched_prefix: None,
            consumer: None,
            upstream: None,
            attempts: 0,
            error: None,
            backend_filters: Vec::new(),
        }
    }

    async fn request_filter(
        &self,
        req: &mut Request<Body>,
        ctx: &mut Ctx,
    ) -> Result<(), Response<Body>> {
        ctx.method = req.method().clone();
        let host = request_host(req).unwrap_or_default();
        ctx.host = host.clone();
        ctx.path = req.uri().path().to_string();
        let normalized = path::normalize(req.uri().path()).map_err(|e| {
            ctx.error = Some(e.to_string());
            error_response(StatusCode::BAD_REQUEST, &format!("bad path: {e}"))
        })?;
        if normalized != req.uri().path() {
            set_path(req, &normalized)
                .map_err(|_| error_response(StatusCode::BAD_REQUEST, "bad path"))?;
        }
        let snap = ctx.snapshot.clone();
        let Some(port) = snap.ports.get(&ctx.session.local_port) else {
            return Err(error_response(StatusCode::NOT_FOUND, "no listener"));
        };
        let Some(listener) = port.listener_for(&host) else {
            return Err(error_response(StatusCode::NOT_FOUND, "no route"));
        };
        ctx.listener = Some(listener.key.clone());
        let selected = listener.routes.select(
            &host,
            req.method(),
            req.uri().path(),
            req.uri().query(),
            req.headers(),
        );
        let Some(selected) = selected else {
            return Err(error_response(StatusCode::NOT_FOUND, "no route"));
        };
        ctx.route = Some(selected.route.clone());
        ctx.rule = selected
            .route
            .rules
            .iter()
            .position(|r| std::ptr::eq(r, selected.rule))
            .unwrap_or(0);
        ctx.matched_prefix = selected
            .path
            .filter(|p| p.r#type() == pb::MatchType::PathPrefix)
            .map(|p| p.value.clone());
        let rule = selected.rule;

        // Filters that answer or rewrite before anything else runs.
        for f in &rule.filters {
            match &f.filter {
                Some(Filter::RequestRedirect(r)) => {
                    return Err(redirect(
                        req,
                        r,
                        ctx.matched_prefix.as_deref(),
                        ctx.session.tls,
                    ));
                }
                Some(Filter::RequestHeaderModifier(m)) => modify_headers(req.headers_mut(), m),
                Some(Filter::UrlRewrite(u)) => rewrite(req, u, ctx.matched_prefix.as_deref()),
                Some(Filter::RequestMirror(m)) if req.body().is_end_stream() => {
                    let (parts, body) =
                        std::mem::replace(req, Request::new(server::empty())).into_parts();
                    self.mirror(&snap, &selected.route.namespace, m, &parts);
                    *req = Request::from_parts(parts, body);
                }
                _ => {}
            }
        }

        // The consumer header is the gateway's alone.
        req.headers_mut().remove(CONSUMER_HEADER);
        strip_consumer_baggage(req.headers_mut());
        if let Some(consumer) = &ctx.consumer
            && let Ok(v) = HeaderValue::from_str(consumer)
        {
            req.headers_mut().insert(CONSUMER_HEADER, v);
            append_baggage(req.headers_mut(), consumer);
        }
        forwarding_headers(req, &ctx.session, &host);
        Ok(())
    }

    async fn upstream(&self, req: Request<Body>, ctx: &mut Ctx) -> Response<Body> {
        let snap = ctx.snapshot.clone();
        let Some(route) = ctx.route.clone() else {
            return error_response(StatusCode::NOT_FOUND, "no route");
        };
        let Some(rule) = route.rules.get(ctx.rule) else {
            return error_response(StatusCode::NOT_FOUND, "no route");
        };
        let protocol = if route.kind() == pb::ApiRouteKind::Grpc {
            UpstreamProtocol::Http2
        } else {
            UpstreamProtocol::Http1
        };
        let request_timeout =
            (rule.request_timeout_ms > 0).then(|| Duration::from_millis(rule.request_timeout_ms));
        let backend_timeout = (rule.backend_request_timeout_ms > 0)
            .then(|| Duration::from_millis(rule.backend_request_timeout_ms));
        let retry = rule.retry.clone().unwrap_or_default();
        // Only a request without a body can be sent again.
        let replayable = req.body().is_end_stream();
        let (parts, body) = req.into_parts();
        let mut body = Some(body);
        let attempts = if replayable { 1 + retry.attempts } else { 1 };
        let backoff = Duration::from_millis(if retry.backoff_ms == 0 {
            25
        } else {
            retry.backoff_ms
        });
        let work = async {
            let mut last: Option<Response<Body>> = None;
            for attempt in 0..attempts {
                if attempt > 0 {
                    tokio::time::sleep(backoff.saturating_mul(1 << (attempt - 1).min(6))).await;
                }
                ctx.attempts = attempt + 1;
                let backend = match self.pick_backend(rule) {
                    Ok(b) => b,
                    Err(refuse) => return refuse.response(),
                };
                let target = match self.target(&snap, &route.namespace, backend) {
                    Ok(t) => t,
                    Err(refuse) => {
                        ctx.error = Some(refuse.1.to_string());
                        last = Some(refuse.response());
                        continue;
                    }
                };
                ctx.upstream = Some(target.to_string());
                ctx.backend_filters = backend.filters.clone();
                let mut req =
                    Request::from_parts(parts.clone(), body.take().unwrap_or_else(server::empty));
                for f in &backend.filters {
                    if let Some(Filter::RequestHeaderModifier(m)) = &f.filter {
                        modify_headers(req.headers_mut(), m);
                    }
                }
                let sent = self.client.send(&target, protocol, req);
                let result = match backend_timeout {
                    Some(t) => match tokio::time::timeout(t, sent).await {
                        Ok(r) => r,
                        Err(_) => {
                            ctx.error = Some("backend request timeout".into());
                            last = Some(error_response(
                                StatusCode::GATEWAY_TIMEOUT,
                                "upstream request timeout",
                            ));
                            continue;
                        }
                    },
                    None => sent.await,
                };
                match result {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let resp = resp.map(|b| {
                            b.map_err(|e| Box::new(e) as server::BoxError)
                                .boxed_unsync()
                        });
                        if attempt + 1 < attempts && retry.codes.contains(&u32::from(status)) {
                            last = Some(resp);
                            continue;
                        }
                        return resp;
                    }
                    Err(e) => {
                        ctx.error = Some(e.to_string());
                        let resp = client_error_response(&e);
                        if e.is_connect() {
                            last = Some(resp);
                            continue;
                        }
                        return resp;
                    }
                }
            }
            last.unwrap_or_else(|| {
                error_response(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream")
            })
        };
        match request_timeout {
            Some(t) => match tokio::time::timeout(t, work).await {
                Ok(r) => r,
                Err(_) => error_response(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
            },
            None => work.await,
        }
    }

    fn response_filter(&self, resp: &mut Response<Body>, ctx: &mut Ctx) {
        let rule_filters = ctx.rule().map(|r| r.filters.as_slice()).unwrap_or_default();
        for f in rule_filters.iter().chain(ctx.backend_filters.iter()) {
            if let Some(Filter::ResponseHeaderModifier(m)) = &f.filter {
                modify_headers(resp.headers_mut(), m);
            }
        }
    }

    fn logging(&self, resp: &Response<Body>, ctx: &mut Ctx) {
        let line = json!({
            "time": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            "client": ctx.session.remote.to_string(),
            "method": ctx.method.as_str(),
            "host": ctx.host,
            "path": ctx.path,
            "listener": ctx.listener,
            "route": ctx.route.as_ref().map(|r| format!("{}/{}", r.namespace, r.name)),
            "consumer": ctx.consumer,
            "upstream": ctx.upstream,
            "attempts": ctx.attempts,
            "status": resp.status().as_u16(),
            "duration_ms": ctx.start.elapsed().as_secs_f64() * 1000.0,
            "error": ctx.error,
        });
        tracing::info!(target: "access", "{line}");
    }
}

/// Host of the request, lower case, without port: `:authority` (HTTP/2) or `Host`.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            let authority: http::uri::Authority = h.parse().ok()?;
            Some(authority.host().to_string())
        })?;
    Some(raw.to_ascii_lowercase())
}

fn set_path<B>(req: &mut Request<B>, new_path: &str) -> Result<(), http::Error> {
    let pq = match req.uri().query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq.parse()?);
    *req.uri_mut() = Uri::from_parts(parts)?;
    Ok(())
}

fn modify_headers(headers: &mut HeaderMap, m: &pb::HeaderModifier) {
    for name in &m.remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(n);
        }
    }
    for hv in &m.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(hv.name.as_bytes()),
            HeaderValue::from_str(&hv.value),
        ) {
            headers.insert(n, v);
        }
    }
    for hv in &m.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(hv.name.as_bytes()),
            HeaderValue::from_str(&hv.value),
        ) {
            headers.append(n, v);
        }
    }
}

/// The path after a `PathModifier`.
fn modified_path(path: &str, m: &pb::PathModifier, prefix: Option<&str>) -> String {
    match m.r#type() {
        pb::PathModifierType::Full => m.value.clone(),
        pb::PathModifierType::Prefix => {
            let prefix = prefix.unwrap_or("/").trim_end_matches('/');
            let rest = path.strip_prefix(prefix).unwrap_or(path);
            let replacement = m.value.trim_end_matches('/');
            let joined = format!("{replacement}{rest}");
            if joined.is_empty() {
                "/".into()
            } else if joined.starts_with('/') {
                joined
            } else {
                format!("/{joined}")
            }
        }
        pb::PathModifierType::Unspecified => path.to_string(),
    }
}

fn rewrite(req: &mut Request<Body>, u: &pb::UrlRewrite, prefix: Option<&str>) {
    if let Some(m) = &u.path {
        let new = modified_path(req.uri().path(), m, prefix);
        if let Err(e) = set_path(req, &new) {
            warn!(error = %e, "URL rewrite produced an invalid path; left as it was");
        }
    }
    if !u.hostname.is_empty()
        && let Ok(v) = HeaderValue::from_str(&u.hostname)
    {
        req.headers_mut().insert(header::HOST, v);
    }
}

fn redirect(
    req: &Request<Body>,
    r: &pb::RequestRedirect,
    prefix: Option<&str>,
    tls: bool,
) -> Response<Body> {
    let scheme = if r.scheme.is_empty() {
        if tls { "https" } else { "http" }
    } else {
        r.scheme.as_str()
    };
    let host = if r.hostname.is_empty() {
        request_host(req).unwrap_or_default()
    } else {
        r.hostname.clone()
    };
    let port = match r.port {
        0 => String::new(),
        80 if scheme == "http" => String::new(),
        443 if scheme == "https" => String::new(),
        p => format!(":{p}"),
    };
    let path = match &r.path {
        Some(m) => modified_path(req.uri().path(), m, prefix),
        None => req.uri().path().to_string(),
    };
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let location = format!("{scheme}://{host}{port}{path}{query}");
    let status = StatusCode::from_u16(if r.status_code == 0 {
        302
    } else {
        r.status_code as u16
    })
    .unwrap_or(StatusCode::FOUND);
    let mut resp = Response::new(server::empty());
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn strip_consumer_baggage(headers: &mut HeaderMap) {
    let values: Vec<String> = headers
        .get_all("baggage")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .filter(|m| {
            m.split(['=', ';'])
                .next()
                .is_none_or(|k| k.trim() != CONSUMER_BAGGAGE_KEY)
        })
        .map(str::to_string)
        .collect();
    headers.remove("baggage");
    if !values.is_empty()
        && let Ok(v) = HeaderValue::from_str(&values.join(","))
    {
        headers.insert("baggage", v);
    }
}

fn append_baggage(headers: &mut HeaderMap, consumer: &str) {
    let member = format!("{CONSUMER_BAGGAGE_KEY}={consumer}");
    let value = match headers.get("baggage").and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing},{member}"),
        _ => member,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert("baggage", v);
    }
}

/// `x-forwarded-for` appended with the client's address, `x-forwarded-proto` set to the
/// client connection's scheme (Envoy at the edge, `use_remote_address: true`), and an RFC 7239
/// `forwarded` element appended.
fn forwarding_headers(req: &mut Request<Body>, session: &Session, host: &str) {
    let ip = session.remote.ip().to_canonical();
    let proto = if session.tls { "https" } else { "http" };
    let headers = req.headers_mut();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.trim().is_empty() => format!("{existing}, {ip}"),
        _ => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if session.tls { "https" } else { "http" }),
    );
    let node = if ip.is_ipv6() {
        format!("\"[{ip}]\"")
    } else {
        ip.to_string()
    };
    let mut element = format!("for={node};proto={proto}");
    if !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        element.push_str(&format!(";host={host}"));
    }
    let fwd = match headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.trim().is_empty() => format!("{existing}, {element}"),
        _ => element,
    };
    if let Ok(v) = HeaderValue::from_str(&fwd) {
        headers.insert(header::FORWARDED, v);
    }
}

fn client_error_response(e: &ClientError) -> Response<Body> {
    match e {
        ClientError::Connect { .. } => {
            error_response(StatusCode::BAD_GATEWAY, "upstream connect error")
        }
        ClientError::NoCertificate { .. } => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, "no mesh certificate yet")
        }
        ClientError::Request { source, .. } => {
            match source.as_deref().and_then(|s| BodyError::find(s)) {
                Some(BodyError::TooLarge { .. }) => {
                    error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
                }
                Some(BodyError::Timeout { .. }) => {
                    error_response(StatusCode::REQUEST_TIMEOUT, "request body timeout")
                }
                None => error_response(StatusCode::BAD_GATEWAY, "upstream reset"),
            }
        }
        ClientError::Uri { .. } => {
            error_response(StatusCode::INTERNAL_SERVER_ERROR, "bad upstream")
        }
    }
}

/// An answer the gateway gives itself instead of forwarding.
#[derive(Debug, Clone, Copy)]
struct Refuse(StatusCode, &'static str);

impl Refuse {
    fn response(self) -> Response<Body> {
        error_response(self.0, self.1)
    }
}

/// A short plain-text answer, as Envoy gives for its own errors.
pub fn error_response(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(server::full(Bytes::from(format!("{text}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}
