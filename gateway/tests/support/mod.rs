//! A `redis-server` of a test's own, and helpers shared by the Redis limits tests.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;
use weft_gateway::limits::{Decision, LimitKey, Limiter, LimiterConfig, LimitsStore, Scope};

/// 2026-12-07T22:00:00Z.
pub const T0: u64 = 1_796_680_800;

/// A `redis-server` of the test's own, killed when dropped.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
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

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, with empty data.
    pub fn restart(&mut self) {
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

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: &str) {
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
pub fn redis_limiter(server: &RedisServer) -> (Limiter, Registry) {
    redis_limiter_bounded(server, Duration::from_secs(2))
}

pub fn redis_limiter_bounded(server: &RedisServer, timeout: Duration) -> (Limiter, Registry) {
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
pub fn metric(registry: &Registry, sample: &str) -> Option<f64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

pub const UP: &str = r#"weft_gateway_limits_store_up{store="redis"}"#;
pub const FALLBACK: &str = "weft_gateway_limits_fallback_total";

pub fn remaining(d: &Decision) -> u64 {
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

pub fn alice() -> LimitKey {
    LimitKey::consumer("demo", "alice", Scope::Api("demo".into()))
}

pub fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}
