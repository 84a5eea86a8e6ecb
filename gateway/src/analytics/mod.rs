//! What the gateway served, three ways from one record per request
//! ([`Analytics::record`]):
//!
//! - Prometheus series per route, API, consumer and status class (`metrics`);
//! - one JSON access-log line, tracing target `access` (`access_log`);
//! - per-minute counts kept for 24 hours, for the admin endpoint `GET /analytics` (`window`).
//!
//! Every label value is bounded: route and API names come from the configuration,
//! consumers are those the configuration names (see [`Analytics::set_consumers`]) or
//! `anonymous`/`unknown`, and past [`MAX_LABEL_VALUES`] distinct values per dimension the
//! rest count as `other`. A client cannot create series.

mod access_log;
mod labels;
mod metrics;
mod time;
mod window;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use prometheus_client::registry::Registry;

pub use access_log::access_log_line;
pub use labels::{ANONYMOUS, MAX_LABEL_VALUES, OTHER, StatusClass, UNKNOWN, status_class};
pub use metrics::GatewayMetrics;
pub use time::{TimeError, parse_time};
pub use window::{BUCKET, MAX_SERIES, RETENTION};

use labels::SeriesKey;
use window::Window;

/// Why a request failed, for `weft_gateway_errors_total{kind}` and the access log. An
/// append-only list: dashboards key on the names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No route matched (404).
    NoRoute,
    /// No or a bad credential (401).
    Unauthenticated,
    /// Authenticated but not allowed: scopes, plan (403).
    Forbidden,
    /// A rate limit or quota refused it (429).
    RateLimited,
    /// The rule has no usable backend (500).
    NoBackend,
    /// The backend could not be reached.
    UpstreamConnect,
    /// The backend did not answer in time.
    UpstreamTimeout,
    /// The backend answered with something that is not HTTP, or reset the stream.
    UpstreamProtocol,
    /// The client went away before the response was sent.
    ClientClosed,
    /// A bug or an internal limit.
    Internal,
}

impl ErrorKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::NoBackend => "no_backend",
            Self::UpstreamConnect => "upstream_connect",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamProtocol => "upstream_protocol",
            Self::ClientClosed => "client_closed",
            Self::Internal => "internal",
        }
    }
}

/// One served request, as the gateway's logging phase knows it.
#[derive(Clone, Debug, Default)]
pub struct RequestRecord<'a> {
    /// The route (`namespace/name`); `None` when none matched.
    pub route: Option<&'a str>,
    /// The API (the ApiPolicy's `api`); `None` when the route has no policy.
    pub api: Option<&'a str>,
    /// The authenticated consumer (`namespace/name` or name, as configured); `None` for an
    /// anonymous request.
    pub consumer: Option<&'a str>,
    /// The request method.
    pub method: &'a str,
    /// The request path, without the query (which may carry an API key).
    pub path: &'a str,
    /// The status sent to the client; 0 when none was (the client went away).
    pub status: u16,
    /// From the request's arrival to the response's end.
    pub duration: Duration,
    /// Time spent waiting for the backend, all attempts; `None` when none was asked.
    pub upstream_duration: Option<Duration>,
    /// The backend address that answered.
    pub upstream_addr: Option<SocketAddr>,
    /// Request body bytes received from the client.
    pub request_bytes: u64,
    /// Response body bytes sent to the client.
    pub response_bytes: u64,
    /// The client's address.
    pub client_addr: Option<SocketAddr>,
    /// Why it failed, if it did.
    pub error: Option<ErrorKind>,
}

/// The gateway's analytics: metrics, access log and the windowed store. Shared by every
/// request task (`Arc<Analytics>`).
pub struct Analytics {
    metrics: GatewayMetrics,
    /// Consumer names the configuration declares; `None` until the gateway sets them, and
    /// then any name the caller passes counts (it comes from the configuration anyway).
    consumers: RwLock<Option<HashSet<String>>>,
    window: Mutex<Window>,
}

impl Analytics {
    /// Registers the metrics in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        Self {
            metrics: GatewayMetrics::new(registry),
            consumers: RwLock::new(None),
            window: Mutex::new(Window::new()),
        }
    }

    /// The consumers of the configuration in force: any other name is labelled `unknown`.
    /// Called on every configuration change.
    pub fn set_consumers<I, S>(&self, names: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        *self.consumers.write() = Some(names.into_iter().map(Into::into).collect());
    }

    /// Counts, stores and logs one request, at the current time.
    pub fn record(&self, r: &RequestRecord<'_>) {
        self.record_at(r, SystemTime::now());
    }

    /// `record` at a given time (tests, replays).
    pub fn record_at(&self, r: &RequestRecord<'_>, now: SystemTime) {
        let consumer = match r.consumer {
            None => ANONYMOUS,
            Some(c) => match &*self.consumers.read() {
                Some(known) if !known.contains(c) => UNKNOWN,
                _ => c,
            },
        };
        let class = status_class(r.status);
        // One lock: labels are interned (bounded) and the minute's counts added together.
        let key = {
            let mut window = self.window.lock();
            let key = window.key(
                r.route.unwrap_or(UNKNOWN),
                r.api.unwrap_or(UNKNOWN),
                consumer,
                class,
            );
            window.add(now, key, r);
            window.labels(key)
        };
        self.metrics.observe(&key, r);
        // The line is built only when someone reads it.
        if tracing::enabled!(target: "access", tracing::Level::INFO) {
            tracing::info!(target: "access", "{}", access_log_line(r, consumer, now));
        }
    }

    /// Counts of the minutes from `since` (rounded down to its minute) until `until`
    /// (exclusive), at most the last 24 hours, as JSON: totals, then by route, API,
    /// consumer and status class, then every series and a per-minute timeline.
    pub fn query(&self, since: SystemTime, until: SystemTime) -> serde_json::Value {
        self.query_at(since, until, SystemTime::now())
    }

    /// The admin endpoint's answer for its query string (`since=...&until=...`, each Unix
    /// seconds or RFC 3339): `since` defaults to 24 hours ago, `until` to now. An unknown
    /// parameter is ignored; a bad time is an error naming it.
    pub fn query_params(&self, query: Option<&str>) -> Result<serde_json::Value, TimeError> {
        let now = SystemTime::now();
        let (since, until) = parse_params(query, now)?;
        Ok(self.query_at(since, until, now))
    }

    /// `query` as if the time were `now` (what is older than 24 hours before it is gone).
    pub fn query_at(
        &self,
        since: SystemTime,
        until: SystemTime,
        now: SystemTime,
    ) -> serde_json::Value {
        self.window.lock().query(since, until, now)
    }

    /// Series held by the windowed store (for tests and `/config`-style introspection).
    pub fn stored_series(&self) -> usize {
        self.window.lock().len()
    }

    /// The metrics, for callers that count more than requests.
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.metrics
    }
}

/// `since` and `until` of an `/analytics` query string, defaulted against `now`.
pub fn parse_params(
    query: Option<&str>,
    now: SystemTime,
) -> Result<(SystemTime, SystemTime), TimeError> {
    let mut since = now.checked_sub(RETENTION).unwrap_or(std::time::UNIX_EPOCH);
    let mut until = now;
    for pair in query.unwrap_or_default().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        // RFC 3339 offsets are `+hh:mm`; clients may send them raw or percent-encoded, and
        // a raw `+` is taken as `+`, not as a form-encoded space.
        let value = value
            .replace("%2B", "+")
            .replace("%2b", "+")
            .replace("%3A", ":")
            .replace("%3a", ":");
        match name {
            "since" => since = parse_time(&value)?,
            "until" => until = parse_time(&value)?,
            _ => {}
        }
    }
    Ok((since, until))
}

/// The four labels of a request, resolved (owned for the metric families).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedLabels {
    /// Route label.
    pub route: String,
    /// API label.
    pub api: String,
    /// Consumer label.
    pub consumer: String,
    /// Status class label.
    pub status_class: &'static str,
}

impl From<(SeriesKey, &labels::Interner)> for ResolvedLabels {
    fn from((key, interner): (SeriesKey, &labels::Interner)) -> Self {
        Self {
            route: interner.name(key.route).to_string(),
            api: interner.name(key.api).to_string(),
            consumer: interner.name(key.consumer).to_string(),
            status_class: key.class.as_str(),
        }
    }
}
