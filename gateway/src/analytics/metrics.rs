//! The gateway's Prometheus series, Istio-style names under `weft_gateway_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::{RequestRecord, ResolvedLabels};

/// Labels of request counts and bytes: every value bounded (see the module comment).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub api: String,
    pub consumer: String,
    pub status_class: &'static str,
}

/// Labels of the latency histogram: no consumer, so the bucket count does not multiply by
/// the number of consumers.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub route: String,
    pub api: String,
    pub status_class: &'static str,
}

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub route: String,
    pub api: String,
    pub kind: &'static str,
}

/// Latency buckets: 1 ms doubling to about 33 s (16 buckets).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The gateway's request metrics.
pub struct GatewayMetrics {
    /// `weft_gateway_requests_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// `weft_gateway_request_duration_seconds`.
    pub duration: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    /// `weft_gateway_request_bytes_total` (bodies received).
    pub request_bytes: Family<RequestLabels, Counter>,
    /// `weft_gateway_response_bytes_total` (bodies sent).
    pub response_bytes: Family<RequestLabels, Counter>,
    /// `weft_gateway_errors_total`.
    pub errors: Family<ErrorLabels, Counter>,
}

impl GatewayMetrics {
    /// Registers the families in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            errors: Family::default(),
        };
        registry.register(
            "weft_gateway_requests",
            "Requests served, by route, API, consumer and status class",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "weft_gateway_request_duration",
            "Time from a request's arrival to its response's end",
            Unit::Seconds,
            m.duration.clone(),
        );
        registry.register_with_unit(
            "weft_gateway_request",
            "Request body bytes received from clients",
            Unit::Bytes,
            m.request_bytes.clone(),
        );
        registry.register_with_unit(
            "weft_gateway_response",
            "Response body bytes sent to clients",
            Unit::Bytes,
            m.response_bytes.clone(),
        );
        registry.register(
            "weft_gateway_errors",
            "Failed requests, by route, API and kind of failure",
            m.errors.clone(),
        );
        registry.register(
            "weft_gateway_access_log_dropped",
            "Access-log lines dropped because stdout fell too far behind",
            crate::logging::access_log_dropped(),
        );
        m
    }

    pub(super) fn observe(&self, l: &ResolvedLabels, r: &RequestRecord<'_>) {
        let labels = RequestLabels {
            route: l.route.clone(),
            api: l.api.clone(),
            consumer: l.consumer.clone(),
            status_class: l.status_class,
        };
        self.requests.get_or_create(&labels).inc();
        if r.request_bytes > 0 {
            self.request_bytes
                .get_or_create(&labels)
                .inc_by(r.request_bytes);
        }
        if r.response_bytes > 0 {
            self.response_bytes
                .get_or_create(&labels)
                .inc_by(r.response_bytes);
        }
        self.duration
            .get_or_create(&LatencyLabels {
                route: l.route.clone(),
                api: l.api.clone(),
                status_class: l.status_class,
            })
            .observe(r.duration.as_secs_f64());
        if let Some(kind) = r.error {
            self.errors
                .get_or_create(&ErrorLabels {
                    route: l.route.clone(),
                    api: l.api.clone(),
                    kind: kind.as_str(),
                })
                .inc();
        }
    }
}
