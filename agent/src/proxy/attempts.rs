//! The attempts of one outbound connection: why one failed and whose fault it was, which
//! endpoints of a service it tried, whether another may be tried, and the load balancer's
//! bookkeeping of an endpoint that failed (ejections and retries counted per service).

use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    time::Instant,
};

use tracing::warn;
use weft_mesh::{lb::FailureOutcome, service::Endpoint};

use super::{ProxyContext, connect_hint};
use crate::metrics::ServiceLabels;

/// The most endpoints one connection to a service tries: the first pick and two retries on
/// others, so a dead endpoint costs a client nothing while a service whose endpoints all
/// refuse is still answered at once.
pub const ATTEMPTS: usize = 3;

/// The endpoints a connection tried; an array, so the common case of one attempt allocates
/// nothing.
pub struct Attempts {
    tried: [SocketAddr; ATTEMPTS],
    failed: usize,
}

impl Default for Attempts {
    fn default() -> Self {
        Self::new()
    }
}

impl Attempts {
    pub fn new() -> Self {
        Attempts {
            tried: [SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)); ATTEMPTS],
            failed: 0,
        }
    }

    /// The endpoints that failed so far.
    pub fn tried(&self) -> &[SocketAddr] {
        &self.tried[..self.failed]
    }

    /// The current attempt, from 1.
    pub fn number(&self) -> usize {
        self.failed + 1
    }

    /// Whether, with `dst` failing now, another of `endpoints` may be tried.
    pub fn can_retry(&self, endpoints: &[Endpoint], dst: SocketAddr) -> bool {
        self.failed + 1 < ATTEMPTS
            && endpoints
                .iter()
                .any(|e| e.addr != dst && !self.tried().contains(&e.addr))
    }

    /// `dst` failed: the next attempt goes elsewhere.
    pub fn failed(&mut self, dst: SocketAddr) {
        if let Some(slot) = self.tried.get_mut(self.failed) {
            *slot = dst;
            self.failed += 1;
        }
    }
}

/// Why an attempt opened no upstream: Envoy's response flags, what to log (policy denials
/// are logged where they are decided), and whether it is the endpoint's fault.
pub struct Failure {
    pub flags: &'static str,
    pub log: Option<(String, &'static str)>,
    /// The endpoint did not take the connection (no answer, refused, nothing listening):
    /// counted against its health, and a service connection tries another endpoint. Not so
    /// for a policy denial, or a source with no identity, which any endpoint would meet.
    pub endpoint: bool,
}

impl Failure {
    /// A tunnel not opened; `status` is the destination agent's answer, if it gave one.
    pub fn tunnel(error: String, status: Option<http::StatusCode>) -> Self {
        Failure {
            flags: "UF",
            log: Some((error, "opening an HBONE tunnel failed")),
            // The destination agent answers 400 to a malformed request and 401 to one its
            // policy denies (see the inbound side); anything else means the endpoint did
            // not take the connection.
            endpoint: !matches!(
                status,
                Some(http::StatusCode::BAD_REQUEST | http::StatusCode::UNAUTHORIZED)
            ),
        }
    }

    pub fn connect(err: &io::Error) -> Self {
        Failure {
            flags: "UF",
            log: Some((
                format!("{err} ({})", connect_hint(err)),
                "connecting to the original destination failed",
            )),
            endpoint: true,
        }
    }
}

impl ProxyContext {
    /// A connect to the endpoint `dst` of `service` failed: counted against its health, and
    /// its ejection counted and logged.
    pub fn endpoint_failed(&self, service: &str, dst: SocketAddr) {
        if let FailureOutcome::Ejected(backoff) = self.lb.failure(dst, Instant::now()) {
            self.metrics
                .service_ejections
                .get_or_create(&ServiceLabels {
                    service: service.to_string(),
                })
                .inc();
            warn!(
                dst.addr = %dst,
                dst.service = service,
                backoff_ms = backoff.as_millis() as u64,
                "service endpoint ejected after failed connects; it is tried again after the \
                 back-off"
            );
        }
    }

    /// Counts a connection to `service` sent to another endpoint after a failed connect.
    pub fn retried(&self, service: &str) {
        self.metrics
            .service_retries
            .get_or_create(&ServiceLabels {
                service: service.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use weft_mesh::workload::Workload;

    fn endpoint(n: u8) -> Endpoint {
        Endpoint {
            workload: Arc::new(Workload::default()),
            addr: SocketAddr::from(([10, 0, 0, n], 80)),
        }
    }

    #[test]
    fn retries_go_to_untried_endpoints_and_stop_after_three_attempts() {
        let endpoints: Vec<_> = (1..=4).map(endpoint).collect();
        let mut a = Attempts::new();
        assert!(a.can_retry(&endpoints, endpoints[0].addr));
        a.failed(endpoints[0].addr);
        assert_eq!(a.number(), 2);
        assert!(a.can_retry(&endpoints, endpoints[1].addr));
        a.failed(endpoints[1].addr);
        assert!(
            !a.can_retry(&endpoints, endpoints[2].addr),
            "the third attempt is the last"
        );
        assert_eq!(a.tried(), [endpoints[0].addr, endpoints[1].addr]);
        // One endpoint: nothing else to try.
        let one = [endpoint(1)];
        assert!(!Attempts::new().can_retry(&one, one[0].addr));
    }
}
