use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use serde_json::Value;

use super::labels::status_class;
use super::window::Window;
use super::*;

/// 2026-12-07T22:00:00Z.
const T0: u64 = 1_796_680_800;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn req<'a>(route: &'a str, consumer: Option<&'a str>, status: u16) -> RequestRecord<'a> {
    RequestRecord {
        route: Some(route),
        api: Some("demo"),
        consumer,
        method: "GET",
        path: "/demo/echo",
        status,
        duration: Duration::from_millis(20),
        upstream_duration: Some(Duration::from_millis(15)),
        upstream_addr: Some("10.0.0.9:8000".parse().unwrap()),
        request_bytes: 10,
        response_bytes: 100,
        client_addr: Some("192.0.2.1:40000".parse().unwrap()),
        error: (status >= 500).then_some(ErrorKind::UpstreamConnect),
    }
}

fn analytics() -> (Analytics, Registry) {
    let mut registry = Registry::default();
    (Analytics::new(&mut registry), registry)
}

#[test]
fn the_query_returns_what_was_recorded() {
    let (a, _r) = analytics();
    a.record_at(&req("ns/a", Some("alice"), 200), at(T0));
    a.record_at(&req("ns/a", None, 200), at(T0 + 10));
    a.record_at(&req("ns/b", Some("alice"), 503), at(T0 + 20));
    let q = a.query_at(at(T0 - 60), at(T0 + 60), at(T0 + 60));
    assert_eq!(q["totals"]["requests"], 3);
    assert_eq!(q["totals"]["errors"], 1);
    assert_eq!(q["totals"]["request_bytes"], 30);
    assert_eq!(q["totals"]["response_bytes"], 300);
    assert_eq!(q["totals"]["mean_duration_ms"], 20.0);
    assert_eq!(q["by_route"]["ns/a"]["requests"], 2);
    assert_eq!(q["by_route"]["ns/b"]["errors"], 1);
    assert_eq!(q["by_api"]["demo"]["requests"], 3);
    assert_eq!(q["by_consumer"]["alice"]["requests"], 2);
    assert_eq!(q["by_consumer"][ANONYMOUS]["requests"], 1);
    assert_eq!(q["by_status_class"]["2xx"]["requests"], 2);
    assert_eq!(q["by_status_class"]["5xx"]["requests"], 1);
    assert_eq!(q["series"].as_array().unwrap().len(), 3);
    assert_eq!(q["timeline"][0]["requests"], 3);
    assert_eq!(q["timeline"][0]["minute"], "2026-12-07T22:00:00.000Z");
}

#[test]
fn windows_are_respected() {
    let (a, _r) = analytics();
    for m in [0, 5, 10] {
        a.record_at(&req("ns/a", None, 200), at(T0 + m * 60));
    }
    let now = at(T0 + 3600);
    let count = |since: u64, until: u64| {
        a.query_at(at(since), at(until), now)["totals"]["requests"].clone()
    };
    assert_eq!(count(T0 + 300, T0 + 600), 1);
    assert_eq!(count(T0, T0 + 601), 3);
    assert_eq!(
        count(T0 + 1, T0 + 600),
        2,
        "since is rounded down to its minute"
    );
    assert_eq!(count(T0 + 660, T0 + 3600), 0);
    assert_eq!(count(T0 + 600, T0), 0, "until before since");
    // 24 hours and a minute later the first minute is gone; its slot is reused.
    let day = 24 * 3600;
    let later = at(T0 + day + 60);
    assert_eq!(a.query_at(at(T0), later, later)["totals"]["requests"], 2);
    a.record_at(&req("ns/b", None, 200), at(T0 + day));
    let q = a.query_at(at(T0), later, later);
    assert_eq!(q["totals"]["requests"], 3);
    assert_eq!(q["by_route"]["ns/b"]["requests"], 1);
    assert_eq!(q["by_route"]["ns/a"]["requests"], 2);
    // A write older than the retention before the newest is dropped, not mixed in.
    a.record_at(&req("ns/c", None, 200), at(T0));
    assert_eq!(
        a.stored_series(),
        3,
        "ns/a at +5 and +10 min, ns/b at +24 h"
    );
}

#[test]
fn memory_is_bounded_by_the_series_cap() {
    let mut w = Window::with_caps(10, 1000);
    for i in 0..500 {
        let consumer = format!("c{i}");
        let r = req("ns/a", Some(&consumer), 200);
        let key = w.key("ns/a", "demo", &consumer, status_class(200));
        w.add(at(T0 + (i % 5) * 60), key, &r);
    }
    // 10 series plus one `other` per minute that overflowed.
    assert!(w.len() <= 15, "{}", w.len());
    let q = w.query(at(T0), at(T0 + 3600), at(T0 + 3600));
    assert_eq!(q["totals"]["requests"], 500);
    assert!(q["by_consumer"][OTHER]["requests"].as_u64().unwrap() >= 490);
}

#[test]
fn label_values_are_bounded() {
    // Four names (r0, api, c, r1), then `other`.
    let mut w = Window::with_caps(1000, 4);
    let keys: Vec<_> = (0..10)
        .map(|i| w.key(&format!("r{i}"), "api", "c", status_class(200)))
        .collect();
    let routes: Vec<String> = keys.iter().map(|k| w.labels(*k).route).collect();
    assert_eq!(&routes[..2], ["r0", "r1"]);
    assert!(routes[2..].iter().all(|r| r == OTHER), "{routes:?}");

    // Consumers the configuration does not name are `unknown`.
    let (a, registry) = analytics();
    a.set_consumers(["alice"]);
    a.record_at(&req("ns/a", Some("mallory"), 200), at(T0));
    a.record_at(&req("ns/a", Some("alice"), 200), at(T0));
    let q = a.query_at(at(T0), at(T0 + 60), at(T0 + 60));
    assert_eq!(q["by_consumer"][UNKNOWN]["requests"], 1);
    assert_eq!(q["by_consumer"]["alice"]["requests"], 1);
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    assert!(!text.contains("mallory"));
}

#[test]
fn metrics_carry_route_api_consumer_and_class() {
    let (a, registry) = analytics();
    a.record_at(&req("ns/a", Some("alice"), 200), at(T0));
    a.record_at(&req("ns/a", Some("alice"), 503), at(T0));
    a.record_at(
        &RequestRecord {
            status: 404,
            error: Some(ErrorKind::NoRoute),
            ..Default::default()
        },
        at(T0),
    );
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    for want in [
        r#"weft_gateway_requests_total{route="ns/a",api="demo",consumer="alice",status_class="2xx"} 1"#,
        r#"weft_gateway_requests_total{route="ns/a",api="demo",consumer="alice",status_class="5xx"} 1"#,
        r#"weft_gateway_requests_total{route="unknown",api="unknown",consumer="anonymous",status_class="4xx"} 1"#,
        r#"weft_gateway_request_bytes_total{route="ns/a",api="demo",consumer="alice",status_class="2xx"} 10"#,
        r#"weft_gateway_response_bytes_total{route="ns/a",api="demo",consumer="alice",status_class="2xx"} 100"#,
        r#"weft_gateway_request_duration_seconds_count{route="ns/a",api="demo",status_class="2xx"} 1"#,
        r#"weft_gateway_errors_total{route="ns/a",api="demo",kind="upstream_connect"} 1"#,
        r#"weft_gateway_errors_total{route="unknown",api="unknown",kind="no_route"} 1"#,
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
}

#[test]
fn the_access_log_line_is_json_without_the_query() {
    let mut r = req("ns/a", Some("alice"), 200);
    let long = format!("/{}", "é".repeat(1000));
    r.path = &long;
    let line = access_log_line(&r, "alice", at(T0) + Duration::from_millis(5));
    assert!(!line.contains('\n'));
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["time"], "2026-12-07T22:00:00.005Z");
    assert_eq!(v["consumer"], "alice");
    assert_eq!(v["route"], "ns/a");
    assert_eq!(v["api"], "demo");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["status"], 200);
    assert_eq!(v["duration_ms"], 20.0);
    assert_eq!(v["upstream_duration_ms"], 15.0);
    assert_eq!(v["upstream_addr"], "10.0.0.9:8000");
    assert_eq!(v["client_addr"], "192.0.2.1:40000");
    assert_eq!(v["request_bytes"], 10);
    assert_eq!(v["response_bytes"], 100);
    assert_eq!(v["error"], Value::Null);
    assert!(v["path"].as_str().unwrap().len() <= access_log::MAX_LOGGED_PATH);

    let bare = RequestRecord {
        status: 0,
        error: Some(ErrorKind::ClientClosed),
        ..Default::default()
    };
    let v: Value = serde_json::from_str(&access_log_line(&bare, ANONYMOUS, at(T0))).unwrap();
    assert_eq!(v["route"], UNKNOWN);
    assert_eq!(v["upstream_addr"], Value::Null);
    assert_eq!(v["error"], "client_closed");
}

/// The line as it was first written (a `serde_json::Map`, keys sorted): the struct that
/// replaced it must give the same bytes, since log pipelines read them.
fn map_line(r: &RequestRecord<'_>, consumer: &str, t: SystemTime) -> String {
    use serde_json::{Map, json};
    let millis = |d: Duration| (d.as_micros() as f64) / 1000.0;
    let mut o = Map::new();
    o.insert("time".into(), json!(time::format_rfc3339(t)));
    o.insert("consumer".into(), json!(consumer));
    o.insert("route".into(), json!(r.route.unwrap_or(UNKNOWN)));
    o.insert("api".into(), json!(r.api.unwrap_or(UNKNOWN)));
    o.insert("method".into(), json!(r.method));
    o.insert("path".into(), json!(r.path));
    o.insert("status".into(), json!(r.status));
    o.insert("duration_ms".into(), json!(millis(r.duration)));
    let up = r
        .upstream_duration
        .map_or(Value::Null, |d| json!(millis(d)));
    o.insert("upstream_duration_ms".into(), up);
    let addr = r
        .upstream_addr
        .map_or(Value::Null, |a| json!(a.to_string()));
    o.insert("upstream_addr".into(), addr);
    o.insert("request_bytes".into(), json!(r.request_bytes));
    o.insert("response_bytes".into(), json!(r.response_bytes));
    let client = r.client_addr.map_or(Value::Null, |a| json!(a.to_string()));
    o.insert("client_addr".into(), client);
    o.insert(
        "error".into(),
        r.error.map_or(Value::Null, |e| json!(e.as_str())),
    );
    Value::Object(o).to_string()
}

#[test]
fn the_access_log_line_keeps_its_bytes() {
    let mut r = req("ns/a", Some("alice"), 200);
    r.path = "/a \"quoted\" \\ path\u{1}é";
    r.duration = Duration::from_micros(1_234_567);
    r.client_addr = Some("[2001:db8::1]:443".parse().unwrap());
    let t = at(T0) + Duration::from_millis(7);
    assert_eq!(access_log_line(&r, "alice", t), map_line(&r, "alice", t));
    let bare = RequestRecord {
        status: 0,
        error: Some(ErrorKind::ClientClosed),
        ..Default::default()
    };
    let t = at(T0);
    assert_eq!(
        access_log_line(&bare, ANONYMOUS, t),
        map_line(&bare, ANONYMOUS, t)
    );
}

#[test]
fn query_times_parse_as_unix_seconds_or_rfc3339() {
    assert_eq!(parse_time("1796680800").unwrap(), at(T0));
    assert_eq!(parse_time("2026-12-07T22:00:00Z").unwrap(), at(T0));
    assert_eq!(parse_time("2026-12-07T23:30:00+01:30").unwrap(), at(T0));
    assert_eq!(
        parse_time("2026-12-07T22:00:00.250Z").unwrap(),
        at(T0) + Duration::from_millis(250)
    );
    assert_eq!(parse_time("1970-01-01T00:00:00Z").unwrap(), UNIX_EPOCH);
    assert_eq!(
        parse_time("2024-02-29T00:00:00Z").unwrap(),
        at(1_709_164_800)
    );
    for bad in [
        "",
        "yesterday",
        "2026-13-01T00:00:00Z",
        "2026-12-07",
        "2026-12-07T22:00:00",
        "-5",
        "2026-12-07T22:00:00.Z",
    ] {
        let err = parse_time(bad).unwrap_err().to_string();
        assert!(err.contains("RFC 3339"), "{bad}: {err}");
    }
    assert_eq!(
        time::format_rfc3339(at(1_709_164_800)),
        "2024-02-29T00:00:00.000Z"
    );
}

#[test]
fn query_strings_give_since_and_until() {
    let now = at(T0 + 7200);
    assert_eq!(
        parse_params(None, now).unwrap(),
        (at(T0 + 7200 - 24 * 3600), now)
    );
    assert_eq!(
        parse_params(Some("since=1796680800"), now).unwrap(),
        (at(T0), now)
    );
    assert_eq!(
        parse_params(
            Some("since=2026-12-07T22:00:00Z&until=2026-12-07T23:30:00%2B01:00&x=1"),
            now
        )
        .unwrap(),
        (at(T0), at(T0 + 1800))
    );
    assert_eq!(
        parse_params(Some("until=2026-12-07T23:00:00+01:00"), now)
            .unwrap()
            .1,
        at(T0)
    );
    let err = parse_params(Some("since=yesterday"), now)
        .unwrap_err()
        .to_string();
    assert!(err.contains("yesterday"), "{err}");

    let (a, _r) = analytics();
    a.record(&req("ns/a", None, 200));
    let v = a.query_params(Some("since=0")).unwrap();
    assert_eq!(v["totals"]["requests"], 1);
}
