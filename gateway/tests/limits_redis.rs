//! The Redis limits store against a real `redis-server` that each test starts on a free
//! loopback port (Debian package redis-server; `cargo xtask setup` installs it): exact
//! counts across tasks and across limiters, and the fallback to local counters while Redis
//! is gone or stalled, visible in the metrics.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions; a failure is a test failure"
)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;
use weft_gateway::limits::{
    DEFAULT_REDIS_TIMEOUT, Decision, LimitKey, Limiter, LimiterConfig, Limits, LimitsStore, Scope,
    Window,
};

/// 2026-12-07T22:00:00Z.
const T0: u64 = 1_796_680_800;

/// A `redis-server` of the test's own, killed when dropped.
struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        s.restart();
        s
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, with empty data.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); install it: apt-get install redis-server")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A limiter on the server's Redis. The tests of counting allow Redis a generous time per
/// check, so that a loaded test machine does not turn them into fallback tests; the stall
/// test keeps the default bound.
fn redis_limiter(server: &RedisServer) -> (Limiter, Registry) {
    redis_limiter_bounded(server, Duration::from_secs(2))
}

fn redis_limiter_bounded(server: &RedisServer, timeout: Duration) -> (Limiter, Registry) {
    let mut registry = Registry::default();
    let config = LimiterConfig {
        store: server.url().parse::<LimitsStore>().unwrap(),
        redis_timeout: timeout,
        redis_retry_interval: Duration::from_millis(100),
        ..LimiterConfig::default()
    };
    let l = Limiter::new(config, &mut registry).unwrap();
    (l, registry)
}

/// The value of one sample line of the registry's text exposition.
fn metric(registry: &Registry, sample: &str) -> Option<f64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

const UP: &str = r#"weft_gateway_limits_store_up{store="redis"}"#;
const FALLBACK: &str = "weft_gateway_limits_fallback_total";

fn remaining(d: &Decision) -> u64 {
    let v = d
        .headers
        .iter()
        .find(|(n, _)| n.as_str() == "ratelimit")
        .unwrap()
        .1
        .to_str()
        .unwrap();
    let r = v.split(";r=").nth(1).unwrap();
    r.split(';').next().unwrap().parse().unwrap()
}

fn alice() -> LimitKey {
    LimitKey::consumer("demo", "alice", Scope::Api("demo".into()))
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_exact_count_with_64_parallel_tasks() {
    let server = RedisServer::start();
    let (l, registry) = redis_limiter(&server);
    let l = Arc::new(l);
    let limits = Arc::new(Limits::new([(Window::Hour, 1000), (Window::Month, 5000)]));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (l, limits) = (Arc::clone(&l), Arc::clone(&limits));
            tokio::spawn(async move {
                let mut allowed = 0u32;
                for _ in 0..50 {
                    if l.check(&alice(), &limits, at(T0)).await.allowed {
                        allowed += 1;
                    }
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
    assert_eq!(metric(&registry, UP), Some(1.0));
    assert_eq!(
        metric(&registry, FALLBACK),
        Some(0.0),
        "every request was decided by Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_limiters_share_counts_in_redis() {
    let server = RedisServer::start();
    let (a, _ra) = redis_limiter(&server);
    let (b, _rb) = redis_limiter(&server);
    let limits = Limits::new([(Window::Minute, 10)]);
    let mut allowed = 0;
    for i in 0..20 {
        let l = if i % 2 == 0 { &a } else { &b };
        let d = l.check(&alice(), &limits, at(T0)).await;
        if d.allowed {
            allowed += 1;
            assert_eq!(
                remaining(&d),
                10 - (i + 1),
                "replica {} sees both replicas' count",
                i % 2
            );
        } else {
            assert_eq!(remaining(&d), 0);
        }
    }
    assert_eq!(allowed, 10);
    // A third limiter started later sees the same count.
    let (c, _rc) = redis_limiter(&server);
    assert!(!c.check(&alice(), &limits, at(T0 + 30)).await.allowed);
    assert!(c.check(&alice(), &limits, at(T0 + 60)).await.allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_falls_back_to_local_then_recovers() {
    let mut server = RedisServer::start();
    let (l, registry) = redis_limiter(&server);
    let limits = Limits::new([(Window::Hour, 100)]);
    for i in 0..3 {
        let d = l.check(&alice(), &limits, at(T0)).await;
        assert_eq!(remaining(&d), 100 - (i + 1));
    }
    assert_eq!(metric(&registry, UP), Some(1.0));

    server.kill();
    // Decided by the local store, which recorded this replica's 3 admitted requests.
    let d = l.check(&alice(), &limits, at(T0)).await;
    assert!(d.allowed);
    assert_eq!(remaining(&d), 96);
    assert_eq!(metric(&registry, UP), Some(0.0));
    assert!(metric(&registry, FALLBACK).unwrap() >= 1.0);
    for _ in 0..5 {
        assert!(l.check(&alice(), &limits, at(T0)).await.allowed);
    }
    let during = metric(&registry, FALLBACK).unwrap();
    assert!(during >= 6.0, "{during}");

    // Back (empty, as a restarted Redis without persistence is): used again within the
    // retry interval; its fresh count shows it is Redis deciding.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = l.check(&alice(), &limits, at(T0)).await;
        if metric(&registry, UP) == Some(1.0) {
            assert_eq!(remaining(&d), 99);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Redis not used again after it came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = metric(&registry, FALLBACK).unwrap();
    let d = l.check(&alice(), &limits, at(T0)).await;
    assert_eq!(remaining(&d), 98);
    assert_eq!(metric(&registry, FALLBACK), Some(after));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_redis_costs_at_most_the_timeout() {
    let server = RedisServer::start();
    let (l, registry) = redis_limiter_bounded(&server, DEFAULT_REDIS_TIMEOUT);
    let limits = Limits::new([(Window::Second, 1000)]);
    // Connected and the script loaded (the first check may take longer than the bound on a
    // loaded machine, and is then decided locally).
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&registry, UP) != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "Redis never answered within the bound"
        );
        assert!(l.check(&alice(), &limits, at(T0)).await.allowed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fallbacks = metric(&registry, FALLBACK).unwrap();

    server.signal("-STOP");
    let started = Instant::now();
    let d = l.check(&alice(), &limits, at(T0)).await;
    let took = started.elapsed();
    assert!(d.allowed);
    assert!(
        took < Duration::from_millis(500),
        "a stalled Redis held the request {took:?}"
    );
    assert_eq!(metric(&registry, UP), Some(0.0));
    assert_eq!(metric(&registry, FALLBACK), Some(fallbacks + 1.0));
    // Until the retry interval passes, requests do not wait for Redis at all (20 waits
    // would be a second).
    let started = Instant::now();
    for _ in 0..20 {
        l.check(&alice(), &limits, at(T0)).await;
    }
    assert!(started.elapsed() < Duration::from_millis(500));
    server.signal("-CONT");

    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&registry, UP) != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "Redis not used again after it resumed"
        );
        l.check(&alice(), &limits, at(T0)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn redis_down_at_start_serves_locally() {
    let mut server = RedisServer::start();
    server.kill();
    let (l, registry) = redis_limiter(&server);
    assert_eq!(metric(&registry, UP), Some(0.0));
    let limits = Limits::new([(Window::Second, 2)]);
    assert!(l.check(&alice(), &limits, at(T0)).await.allowed);
    assert!(l.check(&alice(), &limits, at(T0)).await.allowed);
    assert!(!l.check(&alice(), &limits, at(T0)).await.allowed);
    assert!(metric(&registry, FALLBACK).unwrap() >= 3.0);
}
