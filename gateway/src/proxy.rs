//! The request pipeline: the gateway's implementation of `weft-http`'s phases.
//!
//! Per request: one snapshot load; route selection on the listener of the request's port and
//! host (`weft_http::route`); path sanity; redirect; authentication (`auth`) and limits
//! (`limits`); request filters; the consumer and forwarding headers; a weighted backend pick;
//! a mesh endpoint over HBONE or a URL backend; the route's timeouts and retries within the
//! retry budget; mirrors; response filters; analytics and the access log. Errors are
//! answered as Envoy answers them: 404 no route, 400 bad path, 500 no backend weight,
//! 502 upstream connect failure, 503 no ready endpoint, 504 timeout.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Request, Response, StatusCode, header, request::Parts, uri::Scheme,
};
use http_body_util::BodyExt as _;
use hyper::body::{Body as _, Incoming};
use tokio::sync::Semaphore;
use tracing::debug;
use weft_http::{
    client::{ClientError, Target, UpstreamClient, UpstreamProtocol},
    phase::{self, Phases, Session},
    retry::{Outcome, RetryBudget, RetryDecision, RetryPolicy},
    route::{self, Backend, BackendKind, RedirectContext, RequestOutcome, RouteKind, Selected},
    server::{self, Body, BodyError},
};
use weft_link::{hbone::HBONE_PORT, identity::TrustDomain};
use weft_mesh::{
    lb::{Active, Balancer},
    service::{Client, ServicePort, TargetPort},
    workload::{Locality, TunnelProtocol},
};

use crate::{
    analytics::{Analytics, ErrorKind, RequestRecord},
    limits::{Decision, LimitKey, Limiter},
    path,
    snapshot::{RoutePolicy, Snapshot, policy_key},
};

/// The header the gateway sets to the authenticated consumer (`namespace/name`); a client's
/// copy is always removed.
pub const CONSUMER_HEADER: &str = "x-weft-consumer";
/// The W3C baggage member that carries the consumer.
pub const CONSUMER_BAGGAGE_KEY: &str = "weft-consumer";
/// Mirrored requests in flight at once; more are dropped (a mirror must never slow or
/// starve the real traffic).
const MAX_MIRRORS_IN_FLIGHT: usize = 64;
/// A mirrored request gets this long before it is abandoned.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared by every request.
pub struct Proxy {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub client: UpstreamClient,
    pub trust_domain: TrustDomain,
    pub max_body_bytes: u64,
    pub body_timeout: Duration,
    pub analytics: Arc<Analytics>,
    pub limiter: Option<Arc<Limiter>>,
    pub retry_budget: RetryBudget,
    /// Which endpoint of a mesh Service a request goes to (the agents' load balancer: power
    /// of two choices on requests in flight, passive health on connect failures).
    lb: Balancer,
    mirrors: Arc<Semaphore>,
    rand: AtomicU64,
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
    method: http::Method,
    path: String,
    selected: Option<Selected>,
    policy: Option<Arc<RoutePolicy>>,
    consumer: Option<String>,
    upstream: Option<SocketAddr>,
    upstream_time: Option<Duration>,
    backend: Option<Backend>,
    limits: Option<Decision>,
    error: Option<ErrorKind>,
    /// The Service endpoint of the current attempt, counted in flight while it lives.
    endpoint: Option<Active>,
    /// Service endpoints whose connect failed in an earlier attempt: a retry goes elsewhere.
    tried: Vec<SocketAddr>,
}

impl Proxy {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        client: UpstreamClient,
        trust_domain: TrustDomain,
        max_body_bytes: u64,
        body_timeout: Duration,
        analytics: Arc<Analytics>,
        limiter: Option<Arc<Limiter>>,
    ) -> Self {
        Proxy {
            snapshot,
            client,
            trust_domain,
            max_body_bytes,
            body_timeout,
            analytics,
            limiter,
            retry_budget: RetryBudget::new(Default::default(), Instant::now()),
            lb: Balancer::new(),
            mirrors: Arc::new(Semaphore::new(MAX_MIRRORS_IN_FLIGHT)),
            rand: AtomicU64::new(0x853c_49e6_748f_ea9b),
        }
    }

    /// A cheap uniform random number (splitmix64 over a shared counter): weights, mirrors
    /// and jitter need spread, not secrecy.
    fn rand(&self) -> u32 {
        let mut z = self
            .rand
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 32) as u32
    }

    /// Serves one request from a client connection.
    pub async fn handle(&self, req: Request<Incoming>, session: &Session) -> Response<Body> {
        if server::declared_too_large(&req, self.max_body_bytes) {
            return error_response(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        let req = req.map(|b| server::guard_body(b, self.max_body_bytes, self.body_timeout));
        phase::run(self, session, req).await
    }

    /// Where a backend goes now; for a mesh Service, the endpoint chosen (avoiding `tried`
    /// while another is left), counted in flight while the returned guard lives.
    fn target(
        &self,
        snap: &Snapshot,
        b: &Backend,
        tried: &[SocketAddr],
    ) -> Result<(Target, Option<Active>), Refuse> {
        match &b.kind {
            BackendKind::Url { url, ca_pem } => {
                let (Some(scheme), Some(authority)) =
                    (url.scheme().cloned(), url.authority().cloned())
                else {
                    return Err(Refuse(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "backend URL needs a scheme and host",
                    ));
                };
                Ok((
                    Target::Url {
                        scheme,
                        authority,
                        ca_pem: ca_pem.as_deref().map(Arc::from),
                    },
                    None,
                ))
            }
            BackendKind::Service {
                namespace,
                name,
                port,
            } => {
                let no_upstream = Refuse(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
                let service = snap
                    .services
                    .get(&(namespace.clone(), name.clone()))
                    .ok_or(no_upstream)?;
                // A port the Service does not declare goes to the same port on its endpoints.
                let undeclared;
                let service_port = match service.port(*port) {
                    Some(p) => p,
                    None => {
                        undeclared = ServicePort {
                            port: *port,
                            target: TargetPort::Number(*port),
                        };
                        &undeclared
                    }
                };
                // The gateway runs on no node: every endpoint is as close as any other.
                let nowhere = Locality::default();
                let client = Client {
                    node: "",
                    locality: &nowhere,
                };
                let mut endpoints =
                    service.endpoints_of(service_port, true, &snap.workloads, &client);
                if endpoints.is_empty() {
                    endpoints = service.endpoints_of(service_port, false, &snap.workloads, &client);
                }
                let random = || (u64::from(self.rand()) << 32) | u64::from(self.rand());
                let now = Instant::now();
                // Every endpoint tried already: the route's retry goes to any of them again.
                let (endpoint, active) = self
                    .lb
                    .pick(&endpoints, tried, now, random)
                    .or_else(|| self.lb.pick(&endpoints, &[], now, random))
                    .ok_or(no_upstream)?;
                let (w, ip, target_port) =
                    (&endpoint.workload, endpoint.addr.ip(), endpoint.addr.port());
                let target = match w.protocol {
                    TunnelProtocol::Tcp => Target::Url {
                        scheme: Scheme::HTTP,
                        authority: SocketAddr::new(ip, target_port)
                            .to_string()
                            .parse()
                            .map_err(|_| {
                                Refuse(StatusCode::INTERNAL_SERVER_ERROR, "bad endpoint")
                            })?,
                        ca_pem: None,
                    },
                    TunnelProtocol::Hbone => Target::Hbone {
                        dst: SocketAddr::new(ip, HBONE_PORT),
                        authority: SocketAddr::new(ip, target_port),
                        expected: w.identity(&self.trust_domain).ok_or(Refuse(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "endpoint has no identity",
                        ))?,
                    },
                };
                Ok((target, Some(active)))
            }
        }
    }

    /// Sends a copy of a bodiless request to a mirror backend and forgets it.
    fn mirror(
        &self,
        snap: &Snapshot,
        backend: &Backend,
        parts: &Parts,
        protocol: UpstreamProtocol,
    ) {
        let Ok(permit) = self.mirrors.clone().try_acquire_owned() else {
            debug!("mirror dropped: too many in flight");
            return;
        };
        // The mirror's endpoint is not counted in flight: it must not steer real traffic.
        let Ok((target, _)) = self.target(snap, backend, &[]) else {
            return;
        };
        let mut req = Request::new(server::empty());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.headers_mut() = parts.headers.clone();
        let client = self.client.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(MIRROR_TIMEOUT, client.send(&target, protocol, req)).await {
                Ok(Ok(resp)) => {
                    let _ = resp.into_body().collect().await;
                }
                Ok(Err(e)) => debug!(error = %e, "mirror failed"),
                Err(_) => debug!("mirror timed out"),
            }
        });
    }

    /// Authentication and limits of the route's policy; `Err` is the answer.
    async fn admit(&self, parts: &mut Parts, ctx: &mut Ctx) -> Result<(), Response<Body>> {
        let Some(policy) = ctx.policy.clone() else {
            return Ok(());
        };
        let Some(auth) = ctx.snapshot.authenticator.clone() else {
            return Ok(());
        };
        let authenticated = match auth
            .authenticate(&policy.auth, parts, ctx.session.remote)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                ctx.error = Some(if e.status() == StatusCode::FORBIDDEN {
                    ErrorKind::Forbidden
                } else {
                    ErrorKind::Unauthenticated
                });
                return Err(e.into_response().map(server::full));
            }
        };
        authenticated.apply_headers(&mut parts.headers);
        let route = ctx
            .selected
            .as_ref()
            .map(|s| s.route.key.to_string())
            .unwrap_or_default();
        let scope = policy.scope(&route);
        let (key, limits) = match &authenticated.consumer {
            Some(c) => {
                ctx.consumer = Some(c.to_string());
                let limits = c
                    .plan
                    .as_deref()
                    .and_then(|p| ctx.snapshot.plans.get(p))
                    .cloned()
                    .unwrap_or_default();
                (LimitKey::consumer(&*c.namespace, &*c.name, scope), limits)
            }
            None => (
                LimitKey::anonymous(ctx.session.remote.ip(), scope),
                policy.anonymous.clone(),
            ),
        };
        if let Some(limiter) = &self.limiter
            && !limits.is_unlimited()
        {
            let decision = limiter.check(&key, &limits, SystemTime::now()).await;
            if !decision.allowed {
                ctx.error = Some(ErrorKind::RateLimited);
                let mut resp = error_response(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
                decision.apply_to(resp.headers_mut());
                return Err(resp);
            }
            ctx.limits = Some(decision);
        }
        Ok(())
    }

    /// One attempt at one backend.
    async fn attempt(
        &self,
        ctx: &mut Ctx,
        parts: &Parts,
        body: Body,
        protocol: UpstreamProtocol,
        timeout: Option<Duration>,
    ) -> Result<Response<Body>, (Outcome, Response<Body>)> {
        let Some(selected) = ctx.selected.clone() else {
            return Err((
                Outcome::ConnectFailure,
                error_response(StatusCode::NOT_FOUND, "no route"),
            ));
        };
        let Some(rule) = selected.rule() else {
            return Err((
                Outcome::ConnectFailure,
                error_response(StatusCode::NOT_FOUND, "no route"),
            ));
        };
        let Some(backend) = route::pick(rule, self.rand()).cloned() else {
            ctx.error = Some(ErrorKind::NoBackend);
            // Not retryable: the configuration will not change between attempts.
            return Ok(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no backend with weight",
            ));
        };
        // The previous attempt's endpoint is no longer in flight.
        ctx.endpoint = None;
        let target = match self.target(&ctx.snapshot, &backend, &ctx.tried) {
            Ok((t, endpoint)) => {
                ctx.endpoint = endpoint;
                t
            }
            Err(refuse) => {
                ctx.error = Some(ErrorKind::NoBackend);
                return Err((Outcome::ConnectFailure, refuse.response()));
            }
        };
        let mut parts = parts.clone();
        if !backend.filters.is_empty()
            && let Some(matched) = selected.matched()
        {
            let cx = RedirectContext {
                https: ctx.session.tls,
                listener_port: ctx.session.local_port,
            };
            match route::apply_request_filters(&backend.filters, &mut parts, matched, cx) {
                Ok(RequestOutcome::Forward) => {}
                Ok(RequestOutcome::Redirect { status, location }) => {
                    let mut resp = Response::new(server::empty());
                    *resp.status_mut() = status;
                    resp.headers_mut().insert(header::LOCATION, location);
                    return Ok(resp);
                }
                Err(_) => {
                    return Ok(error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "filter failed",
                    ));
                }
            }
        }
        ctx.upstream = match &target {
            Target::Hbone { authority, .. } => Some(*authority),
            Target::Url { authority, .. } => authority.as_str().parse().ok(),
        };
        ctx.backend = Some(backend);
        let started = Instant::now();
        let sent = self
            .client
            .send(&target, protocol, Request::from_parts(parts, body));
        let result = match timeout {
            Some(t) => tokio::time::timeout(t, sent).await,
            None => Ok(sent.await),
        };
        *ctx.upstream_time.get_or_insert(Duration::ZERO) += started.elapsed();
        match result {
            Err(_) => {
                ctx.error = Some(ErrorKind::UpstreamTimeout);
                Err((
                    Outcome::Timeout,
                    error_response(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                ))
            }
            Ok(Ok(resp)) => {
                if let Some(endpoint) = &ctx.endpoint {
                    self.lb.success(endpoint.addr());
                }
                let status = resp.status().as_u16();
                let resp = resp.map(|b| {
                    b.map_err(|e| Box::new(e) as server::BoxError)
                        .boxed_unsync()
                });
                if status >= 500 {
                    Err((Outcome::Status(status), resp))
                } else {
                    Ok(resp)
                }
            }
            Ok(Err(e)) => {
                let resp = client_error_response(&e);
                if e.is_connect() {
                    if let Some(endpoint) = &ctx.endpoint {
                        // Counted against its health; a retry goes to another endpoint.
                        self.lb.failure(endpoint.addr(), Instant::now());
                        ctx.tried.push(endpoint.addr());
                    }
                    ctx.error = Some(ErrorKind::UpstreamConnect);
                    Err((Outcome::ConnectFailure, resp))
                } else {
                    ctx.error = Some(ErrorKind::UpstreamProtocol);
                    // The request reached the backend (or its body failed): never retried.
                    Ok(resp)
                }
            }
        }
    }
}

impl Phases for Proxy {
    type Ctx = Ctx;

    fn new_ctx(&self, session: &Session) -> Ctx {
        Ctx {
            start: Instant::now(),
            session: session.clone(),
            snapshot: self.snapshot.load_full(),
            method: http::Method::GET,
            path: String::new(),
            selected: None,
            policy: None,
            consumer: None,
            upstream: None,
            upstream_time: None,
            backend: None,
            limits: None,
            error: None,
            endpoint: None,
            tried: Vec::new(),
        }
    }

    async fn request_filter(
        &self,
        req: &mut Request<Body>,
        ctx: &mut Ctx,
    ) -> Result<(), Response<Body>> {
        ctx.method = req.method().clone();
        ctx.path = req.uri().path().to_string();
        let normalized = path::normalize(req.uri().path())
            .map_err(|e| error_response(StatusCode::BAD_REQUEST, &format!("bad path: {e}")))?;
        if normalized != req.uri().path() {
            set_path(req, &normalized)
                .map_err(|_| error_response(StatusCode::BAD_REQUEST, "bad path"))?;
        }
        let snap = ctx.snapshot.clone();
        let host = route::request_host(req.uri(), req.headers())
            .map(|h| h.into_owned())
            .unwrap_or_default();
        let listener = snap
            .ports
            .get(&ctx.session.local_port)
            .and_then(|p| p.listener_for(&host));
        let selected =
            listener.and_then(|l| l.routes.select(req.method(), req.uri(), req.headers()));
        let Some(selected) = selected else {
            ctx.error = Some(ErrorKind::NoRoute);
            return Err(error_response(StatusCode::NOT_FOUND, "no route"));
        };
        ctx.policy = snap.policies.get(&policy_key(&selected.route)).cloned();
        ctx.selected = Some(selected.clone());
        let (Some(rule), Some(matched)) = (selected.rule(), selected.matched()) else {
            return Err(error_response(StatusCode::NOT_FOUND, "no route"));
        };

        let (mut parts, body) = std::mem::replace(req, Request::new(server::empty())).into_parts();
        let bodiless = body.is_end_stream();
        let result = async {
            // Authentication first: a redirect or a mirror must not leak to a caller that
            // may not use the route.
            self.admit(&mut parts, ctx).await?;
            let cx = RedirectContext {
                https: ctx.session.tls,
                listener_port: ctx.session.local_port,
            };
            match route::apply_request_filters(&rule.filters, &mut parts, matched, cx) {
                Ok(RequestOutcome::Forward) => {}
                Ok(RequestOutcome::Redirect { status, location }) => {
                    let mut resp = Response::new(server::empty());
                    *resp.status_mut() = status;
                    resp.headers_mut().insert(header::LOCATION, location);
                    return Err(resp);
                }
                Err(e) => {
                    debug!(error = %e, "request filter failed");
                    return Err(error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "request filter failed",
                    ));
                }
            }
            // The consumer header is the gateway's alone.
            parts.headers.remove(CONSUMER_HEADER);
            strip_consumer_baggage(&mut parts.headers);
            if let Some(consumer) = &ctx.consumer
                && let Ok(v) = HeaderValue::from_str(consumer)
            {
                parts.headers.insert(CONSUMER_HEADER, v);
                append_baggage(&mut parts.headers, consumer);
            }
            forwarding_headers(&mut parts.headers, &ctx.session, &host);
            // An HTTP/2 client names the host in `:authority` only; the backend gets it as
            // `Host` (the URI's authority becomes the backend's address upstream).
            if !parts.headers.contains_key(header::HOST)
                && let Some(authority) = parts.uri.authority()
                && let Ok(v) = HeaderValue::from_str(authority.as_str())
            {
                parts.headers.insert(header::HOST, v);
            }
            if bodiless {
                let protocol = protocol_of(&selected);
                for m in route::mirror_targets(&rule.filters, self.rand()) {
                    self.mirror(&snap, m, &parts, protocol);
                }
            }
            Ok(())
        }
        .await;
        *req = Request::from_parts(parts, body);
        result
    }

    async fn upstream(&self, req: Request<Body>, ctx: &mut Ctx) -> Response<Body> {
        let Some(selected) = ctx.selected.clone() else {
            return error_response(StatusCode::NOT_FOUND, "no route");
        };
        let Some(rule) = selected.rule() else {
            return error_response(StatusCode::NOT_FOUND, "no route");
        };
        let protocol = protocol_of(&selected);
        let retry: Option<RetryPolicy> = rule.retry.clone();
        let request_timeout = rule.request_timeout;
        let backend_timeout = rule.backend_request_timeout;
        // Only a request without a body can be sent again.
        let replayable = req.body().is_end_stream();
        let (parts, body) = req.into_parts();
        let mut body = Some(body);
        self.retry_budget.deposit(Instant::now());
        let work = async {
            let mut retries = 0u32;
            loop {
                let b = body.take().unwrap_or_else(server::empty);
                let (outcome, resp) = match self
                    .attempt(ctx, &parts, b, protocol, backend_timeout)
                    .await
                {
                    Ok(resp) => return resp,
                    Err(failed) => failed,
                };
                let Some(policy) = retry.as_ref().filter(|_| replayable) else {
                    return resp;
                };
                match policy.decide(retries, outcome, self.rand()) {
                    RetryDecision::Retry { after }
                        if self.retry_budget.try_withdraw(Instant::now()) =>
                    {
                        drop(resp);
                        retries += 1;
                        tokio::time::sleep(after).await;
                    }
                    _ => return resp,
                }
            }
        };
        match request_timeout {
            Some(t) => match tokio::time::timeout(t, work).await {
                Ok(r) => r,
                Err(_) => {
                    ctx.error = Some(ErrorKind::UpstreamTimeout);
                    error_response(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
                }
            },
            None => work.await,
        }
    }

    fn response_filter(&self, resp: &mut Response<Body>, ctx: &mut Ctx) {
        let rule = ctx.selected.as_ref().and_then(Selected::rule);
        let rule_filters = rule.map(|r| r.filters.as_slice()).unwrap_or_default();
        let backend_filters = ctx
            .backend
            .as_ref()
            .map(|b| b.filters.as_slice())
            .unwrap_or_default();
        if !rule_filters.is_empty() || !backend_filters.is_empty() {
            let (mut parts, body) =
                std::mem::replace(resp, Response::new(server::empty())).into_parts();
            route::apply_response_filters(rule_filters, &mut parts);
            route::apply_response_filters(backend_filters, &mut parts);
            *resp = Response::from_parts(parts, body);
        }
        if let Some(d) = &ctx.limits {
            d.apply_to(resp.headers_mut());
        }
    }

    fn logging(&self, resp: &Response<Body>, ctx: &mut Ctx) {
        let route = ctx.selected.as_ref().map(|s| s.route.key.to_string());
        let length = |h: &HeaderMap| {
            h.get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        self.analytics.record(&RequestRecord {
            route: route.as_deref(),
            api: ctx.policy.as_ref().map(|p| p.api.as_str()),
            consumer: ctx.consumer.as_deref(),
            method: ctx.method.as_str(),
            path: &ctx.path,
            status: resp.status().as_u16(),
            // To the response head: the body streams on after this phase.
            duration: ctx.start.elapsed(),
            upstream_duration: ctx.upstream_time,
            upstream_addr: ctx.upstream,
            request_bytes: 0,
            response_bytes: length(resp.headers()),
            client_addr: Some(ctx.session.remote),
            error: ctx.error,
        });
    }
}

fn protocol_of(selected: &Selected) -> UpstreamProtocol {
    if selected.route.kind == RouteKind::Grpc {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    }
}

fn set_path<B>(req: &mut Request<B>, new_path: &str) -> Result<(), http::Error> {
    let pq = match req.uri().query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq.parse()?);
    *req.uri_mut() = http::Uri::from_parts(parts)?;
    Ok(())
}

fn strip_consumer_baggage(headers: &mut HeaderMap) {
    if !headers.contains_key("baggage") {
        return;
    }
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

/// `x-forwarded-for` appended with the client's address and `x-forwarded-proto` set to the
/// client connection's scheme, as Envoy at the edge (`use_remote_address: true`); an RFC 7239
/// `forwarded` element appended.
fn forwarding_headers(headers: &mut HeaderMap, session: &Session, host: &str) {
    let ip = session.remote.ip().to_canonical();
    let proto = if session.tls { "https" } else { "http" };
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.trim().is_empty() => format!("{existing}, {ip}"),
        _ => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
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
        element.push_str(";host=");
        element.push_str(host);
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
            match source.as_deref().and_then(|e| BodyError::find(e)) {
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
