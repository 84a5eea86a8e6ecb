//! The access-log line: one JSON object per request.

use std::time::{Duration, SystemTime};

use std::net::SocketAddr;

use serde::Serialize;

use super::RequestRecord;
use super::labels::UNKNOWN;
use super::time::format_rfc3339;

/// Longest path written; a client chooses the path, so the line stays bounded.
pub const MAX_LOGGED_PATH: usize = 1024;

fn millis(d: Duration) -> f64 {
    // Microsecond precision is enough for a log line and keeps the number short.
    (d.as_micros() as f64) / 1000.0
}

/// The line's fields. Declared in alphabetical order: the line has always had its keys
/// sorted (it was a `serde_json::Map`), and a log pipeline may rely on the layout. One
/// struct serialized in one pass costs one allocation instead of a map of owned values.
#[derive(Serialize)]
struct Line<'a> {
    api: &'a str,
    client_addr: Option<SocketAddr>,
    consumer: &'a str,
    duration_ms: f64,
    error: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    request_bytes: u64,
    response_bytes: u64,
    route: &'a str,
    status: u16,
    time: String,
    upstream_addr: Option<SocketAddr>,
    upstream_duration_ms: Option<f64>,
}

/// The JSON line for `r`, finished at `at`. `consumer` is the label the metrics use (the
/// consumer, `anonymous` or `unknown`). The query string is never written: API keys may
/// travel in it.
pub fn access_log_line(r: &RequestRecord<'_>, consumer: &str, at: SystemTime) -> String {
    let line = Line {
        api: r.api.unwrap_or(UNKNOWN),
        client_addr: r.client_addr,
        consumer,
        duration_ms: millis(r.duration),
        error: r.error.map(|e| e.as_str()),
        method: r.method,
        path: truncate(r.path, MAX_LOGGED_PATH),
        request_bytes: r.request_bytes,
        response_bytes: r.response_bytes,
        route: r.route.unwrap_or(UNKNOWN),
        status: r.status,
        time: format_rfc3339(at),
        upstream_addr: r.upstream_addr,
        upstream_duration_ms: r.upstream_duration.map(millis),
    };
    // Strings, numbers and addresses only: serializing cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

/// At most `max` bytes of `s`, cut on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
