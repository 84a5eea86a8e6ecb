//! The embedded limits store: exact counts under concurrency, fixed windows, the IETF
//! header fields, the state file across restarts, and the bound on keys.

#![expect(clippy::unwrap_used, reason = "test helpers fail the test on error")]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;
use weft_gateway::limits::{
    BAD_STATE_FILE, Decision, LimitKey, Limiter, LimiterConfig, Limits, LimitsStore, STATE_FILE,
    Scope, Window,
};

/// 2026-12-07T22:00:00Z.
const T0: u64 = 1_796_680_800;
/// 2027-01-01T00:00:00Z, the end of T0's month.
const JAN1: u64 = 1_798_761_600;

fn at(secs: u64, millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
}

fn header<'a>(d: &'a Decision, name: &str) -> Option<&'a str> {
    d.headers
        .iter()
        .find(|(n, _)| n.as_str() == name)
        .and_then(|(_, v)| v.to_str().ok())
}

/// The real time, away from the end of an hour (and so of a day and a month): tests that
/// restart a limiter need the window they counted in to still be running when it reloads,
/// which is judged by the real clock.
async fn settled_now() -> SystemTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let left = 3600 - secs % 3600;
    if left < 5 {
        tokio::time::sleep(Duration::from_secs(left + 1)).await;
    }
    SystemTime::now()
}

fn alice() -> LimitKey {
    LimitKey::consumer("demo", "alice", Scope::Route("demo/demo/0".into()))
}

fn limiter(config: LimiterConfig) -> (Limiter, Registry) {
    let mut registry = Registry::default();
    let l = Limiter::new(config, &mut registry).unwrap();
    (l, registry)
}

fn in_dir(dir: &std::path::Path) -> LimiterConfig {
    LimiterConfig {
        state_dir: Some(dir.to_path_buf()),
        ..LimiterConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_count_with_64_parallel_tasks() {
    let (l, _r) = limiter(LimiterConfig::default());
    let l = Arc::new(l);
    let limits = Arc::new(Limits::new([(Window::Hour, 1000)]));
    let now = at(T0, 0);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (l, limits) = (Arc::clone(&l), Arc::clone(&limits));
            tokio::spawn(async move {
                let mut allowed = 0u32;
                for _ in 0..50 {
                    if l.check(&alice(), &limits, now).await.allowed {
                        allowed += 1;
                    }
                    tokio::task::yield_now().await;
                }
                allowed
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 1000, "3200 attempts against a limit of 1000");
}

#[tokio::test]
async fn header_fields_exact_text() {
    let (l, _r) = limiter(LimiterConfig::default());
    let limits = Limits::new([(Window::Second, 5), (Window::Month, 100_000)]);
    let now = at(T0, 250);
    let d = l.check(&alice(), &limits, now).await;
    assert!(d.allowed);
    assert_eq!(d.retry_after, None);
    assert_eq!(
        header(&d, "ratelimit-policy"),
        Some(r#""month";q=100000;w=2592000, "second";q=5;w=1"#)
    );
    assert_eq!(header(&d, "ratelimit"), Some(r#""second";r=4;t=1"#));
    assert_eq!(header(&d, "retry-after"), None);
    for _ in 0..4 {
        assert!(l.check(&alice(), &limits, now).await.allowed);
    }
    let d = l.check(&alice(), &limits, now).await;
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Some(Duration::from_millis(750)));
    assert_eq!(header(&d, "ratelimit"), Some(r#""second";r=0;t=1"#));
    assert_eq!(header(&d, "retry-after"), Some("1"));
    assert_eq!(d.headers.len(), 3);
    let mut map = http::HeaderMap::new();
    map.insert("ratelimit", http::HeaderValue::from_static("from upstream"));
    d.apply_to(&mut map);
    assert_eq!(map.get_all("ratelimit").iter().count(), 1);
    assert_eq!(map["RateLimit"], r#""second";r=0;t=1"#);
    assert_eq!(map["Retry-After"], "1");

    // A full month: Retry-After runs to the first second of January, and the month is the
    // policy named in RateLimit.
    let limits = Limits::new([(Window::Second, 5), (Window::Month, 2)]);
    let bob = LimitKey::consumer("demo", "bob", Scope::Api("demo".into()));
    assert!(l.check(&bob, &limits, at(T0, 0)).await.allowed);
    assert!(l.check(&bob, &limits, at(T0 + 10, 0)).await.allowed);
    let d = l.check(&bob, &limits, at(T0 + 20, 0)).await;
    assert!(!d.allowed);
    let wait = JAN1 - (T0 + 20);
    assert_eq!(header(&d, "retry-after"), Some(wait.to_string().as_str()));
    assert_eq!(
        header(&d, "ratelimit"),
        Some(format!(r#""month";r=0;t={wait}"#).as_str())
    );

    // No limits: nothing to add.
    let d = l.check(&bob, &Limits::unlimited(), now).await;
    assert!(d.allowed && d.headers.is_empty());
}

#[tokio::test]
async fn refused_requests_do_not_use_quota() {
    let (l, _r) = limiter(LimiterConfig::default());
    let limits = Limits::new([(Window::Second, 1), (Window::Month, 3)]);
    for s in 0..3 {
        assert!(l.check(&alice(), &limits, at(T0 + s, 0)).await.allowed);
        for _ in 0..10 {
            assert!(!l.check(&alice(), &limits, at(T0 + s, 500)).await.allowed);
        }
    }
    let d = l.check(&alice(), &limits, at(T0 + 3, 0)).await;
    assert!(
        !d.allowed,
        "the month quota of 3 is used by the 3 admitted requests only"
    );
    assert!(
        header(&d, "ratelimit")
            .unwrap()
            .starts_with(r#""month";r=0;"#)
    );
}

#[tokio::test]
async fn windows_roll_over_on_the_clock() {
    let (l, _r) = limiter(LimiterConfig::default());
    let limits = Limits::new([(Window::Minute, 2)]);
    // 12:00:59.900 UTC
    let before = at(1_796_644_859, 900);
    assert!(l.check(&alice(), &limits, before).await.allowed);
    assert!(l.check(&alice(), &limits, before).await.allowed);
    let d = l.check(&alice(), &limits, before).await;
    assert!(!d.allowed);
    assert_eq!(d.retry_after, Some(Duration::from_millis(100)));
    assert_eq!(header(&d, "retry-after"), Some("1"));
    // 12:01:00.000: a new minute.
    let d = l.check(&alice(), &limits, at(1_796_644_860, 0)).await;
    assert!(d.allowed);
    assert_eq!(header(&d, "ratelimit"), Some(r#""minute";r=1;t=60"#));
    // A request stamped before the boundary but checked after it counts in the new minute
    // (it does not reset it).
    assert!(l.check(&alice(), &limits, before).await.allowed);
    assert!(
        !l.check(&alice(), &limits, at(1_796_644_860, 1))
            .await
            .allowed
    );
}

#[tokio::test]
async fn keys_are_separate() {
    let (l, _r) = limiter(LimiterConfig::default());
    let limits = Limits::new([(Window::Second, 1)]);
    let now = at(T0, 0);
    let route = |r: &str| Scope::Route(r.into());
    assert!(
        l.check(
            &LimitKey::consumer("demo", "alice", route("a")),
            &limits,
            now
        )
        .await
        .allowed
    );
    assert!(
        l.check(
            &LimitKey::consumer("demo", "alice", route("b")),
            &limits,
            now
        )
        .await
        .allowed
    );
    assert!(
        l.check(&LimitKey::consumer("demo", "bob", route("a")), &limits, now)
            .await
            .allowed
    );
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    assert!(
        l.check(&LimitKey::anonymous(ip, route("a")), &limits, now)
            .await
            .allowed
    );
    assert!(
        !l.check(&LimitKey::anonymous(ip, route("a")), &limits, now)
            .await
            .allowed
    );
    assert!(
        !l.check(
            &LimitKey::consumer("demo", "alice", route("a")),
            &limits,
            now
        )
        .await
        .allowed
    );
}

/// Counts taken with the real clock, since a restarted limiter drops windows that ended
/// by the real clock.
#[tokio::test]
async fn month_quota_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits::new([(Window::Second, 100), (Window::Month, 10)]);
    let now = settled_now().await;
    {
        let (l, _r) = limiter(in_dir(dir.path()));
        for _ in 0..3 {
            assert!(l.check(&alice(), &limits, now).await.allowed);
        }
    } // dropped: saved at shutdown
    assert!(dir.path().join(STATE_FILE).exists());
    let (l, _r) = limiter(in_dir(dir.path()));
    let d = l.check(&alice(), &limits, now).await;
    assert!(d.allowed);
    // 4 of 10 used: the month counted across the restart; the second (not persisted)
    // started over, so the month is the closest to exhaustion.
    assert!(
        header(&d, "ratelimit")
            .unwrap()
            .starts_with(r#""month";r=6;"#)
    );
}

#[tokio::test]
async fn counters_saved_every_second_without_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let copy = tempfile::tempdir().unwrap();
    let limits = Limits::new([(Window::Day, 10)]);
    let now = settled_now().await;
    let (l, _r) = limiter(in_dir(dir.path()));
    for _ in 0..2 {
        assert!(l.check(&alice(), &limits, now).await.allowed);
    }
    // The periodic save, as after a crash (the limiter is still running).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    std::fs::copy(dir.path().join(STATE_FILE), copy.path().join(STATE_FILE)).unwrap();
    let (l2, _r2) = limiter(in_dir(copy.path()));
    let d = l2.check(&alice(), &limits, now).await;
    assert!(
        header(&d, "ratelimit")
            .unwrap()
            .starts_with(r#""day";r=7;"#)
    );
    drop(l);
}

#[tokio::test]
async fn corrupt_state_file_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = b"{\"version\":1,\"counters\":[{\"key\": 12";
    std::fs::write(dir.path().join(STATE_FILE), garbage).unwrap();
    let (l, _r) = limiter(in_dir(dir.path()));
    assert_eq!(l.tracked_keys(), 0);
    assert_eq!(
        std::fs::read(dir.path().join(BAD_STATE_FILE)).unwrap(),
        garbage
    );
    let limits = Limits::new([(Window::Month, 10)]);
    let now = settled_now().await;
    let d = l.check(&alice(), &limits, now).await;
    assert!(
        header(&d, "ratelimit")
            .unwrap()
            .starts_with(r#""month";r=9;"#)
    );
    l.persist().unwrap();
    drop(l);
    // The new file is good again.
    let (l, _r) = limiter(in_dir(dir.path()));
    let d = l.check(&alice(), &limits, now).await;
    assert!(
        header(&d, "ratelimit")
            .unwrap()
            .starts_with(r#""month";r=8;"#)
    );

    // A file of another version is set aside too.
    drop(l);
    std::fs::write(
        dir.path().join(STATE_FILE),
        br#"{"version":99,"counters":[]}"#,
    )
    .unwrap();
    let (l, _r) = limiter(in_dir(dir.path()));
    assert_eq!(l.tracked_keys(), 0);
    assert!(
        std::fs::read_to_string(dir.path().join(BAD_STATE_FILE))
            .unwrap()
            .contains("99")
    );
}

#[tokio::test]
async fn keys_bounded_under_address_flood() {
    let max_keys = 1000;
    let (l, registry) = limiter(LimiterConfig {
        max_keys,
        ..LimiterConfig::default()
    });
    let plan = Limits::new([(Window::Month, 5)]);
    let anon = Limits::new([(Window::Second, 10)]);
    let now = at(T0, 0);
    for _ in 0..4 {
        assert!(l.check(&alice(), &plan, now).await.allowed);
    }
    for i in 0..50_000u32 {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        assert!(
            l.check(
                &LimitKey::anonymous(ip, Scope::Api("demo".into())),
                &anon,
                now
            )
            .await
            .allowed
        );
        assert!(l.tracked_keys() <= max_keys || i % 1000 != 0);
    }
    assert!(l.tracked_keys() <= max_keys, "{} keys", l.tracked_keys());
    // The consumer's month (the longest-lived counter) was not the one evicted.
    let d = l.check(&alice(), &plan, now).await;
    assert!(d.allowed);
    assert!(!l.check(&alice(), &plan, now).await.allowed);
    // Next second: the flood's keys have all ended and make room without evicting.
    let later = at(T0 + 1, 0);
    for i in 0..2_000u32 {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i));
        l.check(
            &LimitKey::anonymous(ip, Scope::Api("demo".into())),
            &anon,
            later,
        )
        .await;
    }
    assert!(l.tracked_keys() <= max_keys);
    assert!(!l.check(&alice(), &plan, later).await.allowed);
    // The gauge follows within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let keys: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("weft_gateway_limits_keys "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(keys > 0 && keys <= max_keys, "{keys}");
}

#[test]
fn limits_store_flag() {
    assert_eq!(
        "embedded".parse::<LimitsStore>().unwrap(),
        LimitsStore::Embedded
    );
    assert_eq!(
        "redis://127.0.0.1:6379".parse::<LimitsStore>().unwrap(),
        LimitsStore::Redis("redis://127.0.0.1:6379".into())
    );
    let e = "rediss://h:1"
        .parse::<LimitsStore>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("TLS"), "{e}");
    let e = "memcached://h:1"
        .parse::<LimitsStore>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("redis://HOST:PORT"), "{e}");
}

#[test]
fn needs_a_runtime() {
    let mut registry = Registry::default();
    let e = Limiter::new(LimiterConfig::default(), &mut registry)
        .err()
        .unwrap();
    assert!(e.to_string().contains("Tokio runtime"));
}

#[tokio::test]
async fn ended_windows_are_dropped_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let now = settled_now().await;
    let secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let this_hour = secs - secs % 3600;
    let key = |name: &str| {
        format!(
            r#"{{"subject":{{"consumer":{{"namespace":"demo","name":"{name}"}}}},"scope":{{"route":"demo/demo/0"}}}}"#
        )
    };
    // alice: this hour (kept); bob: an hour that ended (dropped); carol: a second counter
    // (never persisted, dropped); dave: a start that is no hour's start (dropped).
    let file = format!(
        r#"{{"version":1,"counters":[
            {{"key":{},"window":"hour","start":{this_hour},"count":7}},
            {{"key":{},"window":"hour","start":{},"count":7}},
            {{"key":{},"window":"second","start":{secs},"count":7}},
            {{"key":{},"window":"hour","start":{},"count":7}}]}}"#,
        key("alice"),
        key("bob"),
        this_hour - 3600,
        key("carol"),
        key("dave"),
        this_hour + 1,
    );
    std::fs::write(dir.path().join(STATE_FILE), file).unwrap();
    let (l, _r) = limiter(in_dir(dir.path()));
    assert_eq!(l.tracked_keys(), 1);
    let limits = Limits::new([(Window::Hour, 10)]);
    let d = l.check(&alice(), &limits, now).await;
    assert!(
        header(&d, "ratelimit")
            .unwrap()
            .starts_with(r#""hour";r=2;"#)
    );
    let bob = LimitKey::consumer("demo", "bob", Scope::Route("demo/demo/0".into()));
    let d = l.check(&bob, &limits, now).await;
    assert!(
        header(&d, "ratelimit")
            .unwrap()
            .starts_with(r#""hour";r=9;"#)
    );
}

#[tokio::test]
async fn state_dir_problems_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let mut registry = Registry::default();
    let e = Limiter::new(in_dir(&file.join("state")), &mut registry)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("a-file/state") && e.contains("--state-dir"),
        "{e}"
    );

    // A state directory that disappears: saving fails with the path, serving goes on.
    let state = dir.path().join("state");
    let (l, _r) = limiter(in_dir(&state));
    std::fs::remove_dir_all(&state).unwrap();
    let limits = Limits::new([(Window::Month, 10)]);
    assert!(l.check(&alice(), &limits, at(T0, 0)).await.allowed);
    let e = l.persist().unwrap_err().to_string();
    assert!(e.contains("limits.json"), "{e}");
    assert!(l.check(&alice(), &limits, at(T0, 0)).await.allowed);
}
