//! The Redis limits store's log: one warning per outage, one line when Redis is back. In a
//! test binary of its own, so the process-wide subscriber sees this test's lines only.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use weft_gateway::limits::{Limits, Window};

/// Captured log output.
#[derive(Clone, Default)]
struct Captured(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines_with(&self, level: &str, text: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock())
            .lines()
            .filter(|l| l.contains(level) && l.contains(text))
            .count()
    }
}

#[tokio::test]
async fn outage_logged_once_and_recovery_logged() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let mut server = RedisServer::start();
    let (l, registry) = redis_limiter(&server);
    let limits = Limits::new([(Window::Hour, 1000)]);
    assert!(l.check(&alice(), &limits, at(T0)).await.allowed);
    assert_eq!(log.lines_with("INFO", "Redis limits store reachable"), 1);

    server.kill();
    // Several retries fail during the outage (one per 100 ms): one warning for all.
    for _ in 0..8 {
        assert!(l.check(&alice(), &limits, at(T0)).await.allowed);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(metric(&registry, UP), Some(0.0));
    assert_eq!(log.lines_with("WARN", "Redis limits store unavailable"), 1);

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&registry, UP) != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "Redis not used again after it came back"
        );
        l.check(&alice(), &limits, at(T0)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = String::from_utf8_lossy(&log.0.lock()).into_owned();
    assert_eq!(log.lines_with("INFO", "reachable again"), 1, "{text}");
    assert_eq!(log.lines_with("WARN", "Redis limits store unavailable"), 1);
}
