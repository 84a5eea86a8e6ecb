//! The phases every proxied request goes through, in the manner of pingora's `ProxyHttp`:
//! the engine ([`run`]) calls them in order and the proxy (the gateway; later the agents'
//! L7) implements them. One context value travels through the phases of one request.
//!
//! 1. [`Phases::request_filter`]: checks and rewrites the request (route, path, auth, limits,
//!    filters); may answer it directly (a redirect, a 401, a 429);
//! 2. [`Phases::upstream`]: picks the backend and forwards the request, with the route's
//!    timeouts and retries, answering errors as Envoy does (502/503/504);
//! 3. [`Phases::response_filter`]: rewrites the response head on its way back;
//! 4. [`Phases::logging`]: records the outcome (metrics, access log, analytics), once, after
//!    the response head is sent on its way.

use std::{future::Future, net::SocketAddr};

use http::{Request, Response};

use crate::server::Body;

/// The connection a request arrived on.
#[derive(Debug, Clone)]
pub struct Session {
    /// The client's address.
    pub remote: SocketAddr,
    /// The port it connected to.
    pub local_port: u16,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// A proxy's request phases.
pub trait Phases: Send + Sync + 'static {
    /// Per-request state, from the first phase to the last.
    type Ctx: Send;

    fn new_ctx(&self, session: &Session) -> Self::Ctx;

    /// `Err` answers the request directly with that response.
    fn request_filter(
        &self,
        req: &mut Request<Body>,
        ctx: &mut Self::Ctx,
    ) -> impl Future<Output = Result<(), Response<Body>>> + Send;

    /// Selects the upstream and forwards; every failure is already a response here.
    fn upstream(
        &self,
        req: Request<Body>,
        ctx: &mut Self::Ctx,
    ) -> impl Future<Output = Response<Body>> + Send;

    fn response_filter(&self, resp: &mut Response<Body>, ctx: &mut Self::Ctx);

    fn logging(&self, resp: &Response<Body>, ctx: &mut Self::Ctx);
}

/// Runs one request through `phases`.
pub async fn run<P: Phases>(
    phases: &P,
    session: &Session,
    mut req: Request<Body>,
) -> Response<Body> {
    let mut ctx = phases.new_ctx(session);
    let mut resp = match phases.request_filter(&mut req, &mut ctx).await {
        Ok(()) => phases.upstream(req, &mut ctx).await,
        Err(resp) => resp,
    };
    phases.response_filter(&mut resp, &mut ctx);
    phases.logging(&resp, &mut ctx);
    resp
}
