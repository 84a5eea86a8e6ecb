//! The access-log line: one JSON object per request.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use super::RequestRecord;
use super::labels::UNKNOWN;
use super::time::format_rfc3339;

/// Longest path written; a client chooses the path, so the line stays bounded.
pub const MAX_LOGGED_PATH: usize = 1024;

fn millis(d: Duration) -> f64 {
    // Microsecond precision is enough for a log line and keeps the number short.
    (d.as_micros() as f64) / 1000.0
}

/// The JSON line for `r`, finished at `at`. `consumer` is the label the metrics use (the
/// consumer, `anonymous` or `unknown`). The query string is never written: API keys may
/// travel in it.
pub fn access_log_line(r: &RequestRecord<'_>, consumer: &str, at: SystemTime) -> String {
    let mut o = Map::new();
    o.insert("time".into(), json!(format_rfc3339(at)));
    o.insert("consumer".into(), json!(consumer));
    o.insert("route".into(), json!(r.route.unwrap_or(UNKNOWN)));
    o.insert("api".into(), json!(r.api.unwrap_or(UNKNOWN)));
    o.insert("method".into(), json!(r.method));
    o.insert("path".into(), json!(truncate(r.path, MAX_LOGGED_PATH)));
    o.insert("status".into(), json!(r.status));
    o.insert("duration_ms".into(), json!(millis(r.duration)));
    o.insert(
        "upstream_duration_ms".into(),
        r.upstream_duration
            .map_or(Value::Null, |d| json!(millis(d))),
    );
    o.insert(
        "upstream_addr".into(),
        r.upstream_addr
            .map_or(Value::Null, |a| json!(a.to_string())),
    );
    o.insert("request_bytes".into(), json!(r.request_bytes));
    o.insert("response_bytes".into(), json!(r.response_bytes));
    o.insert(
        "client_addr".into(),
        r.client_addr.map_or(Value::Null, |a| json!(a.to_string())),
    );
    o.insert(
        "error".into(),
        r.error.map_or(Value::Null, |e| json!(e.as_str())),
    );
    Value::Object(o).to_string()
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
