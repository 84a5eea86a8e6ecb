//! The Redis limits store against a real `redis-server` that each test starts on a free
//! loopback port (Debian package redis-server; `cargo xtask setup` installs it): exact
//! counts across tasks and across limiters, and the fallback to local counters while Redis
//! is gone or stalled, visible in the metrics.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use weft_gateway::limits::{DEFAULT_REDIS_TIMEOUT, Limits, Window};

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
