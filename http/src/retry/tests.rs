use std::time::{Duration, Instant};

use super::*;

#[test]
fn statuses_retry_only_when_listed_and_attempts_are_bounded() {
    let p = RetryPolicy::new(2, vec![503], Some(Duration::from_millis(100)));
    assert!(matches!(
        p.decide(0, Outcome::Status(503), 0),
        RetryDecision::Retry { .. }
    ));
    assert_eq!(
        p.decide(0, Outcome::Status(500), 0),
        RetryDecision::Done(DoneReason::NotRetryable)
    );
    assert_eq!(
        p.decide(0, Outcome::Status(200), 0),
        RetryDecision::Done(DoneReason::NotRetryable)
    );
    assert!(matches!(
        p.decide(1, Outcome::ConnectFailure, 0),
        RetryDecision::Retry { .. }
    ));
    assert!(matches!(
        p.decide(1, Outcome::Timeout, 0),
        RetryDecision::Retry { .. }
    ));
    assert_eq!(
        p.decide(2, Outcome::Status(503), 0),
        RetryDecision::Done(DoneReason::AttemptsExhausted)
    );
    let none = RetryPolicy::new(0, vec![503], None);
    assert_eq!(
        none.decide(0, Outcome::ConnectFailure, 0),
        RetryDecision::Done(DoneReason::AttemptsExhausted)
    );
}

#[test]
fn backoff_doubles_with_equal_jitter_and_is_capped() {
    let p = RetryPolicy::new(10, vec![], Some(Duration::from_millis(100)));
    assert_eq!(p.backoff(0, 0), Duration::from_millis(50));
    assert!(p.backoff(0, u32::MAX) <= Duration::from_millis(100));
    assert!(p.backoff(0, u32::MAX) > Duration::from_millis(99));
    assert_eq!(p.backoff(1, 0), Duration::from_millis(100));
    assert_eq!(p.backoff(2, 0), Duration::from_millis(200));
    // 2^3 = 8, 2^4 = 16 capped at 10.
    assert_eq!(p.backoff(3, 0), Duration::from_millis(400));
    assert_eq!(p.backoff(4, 0), Duration::from_millis(500));
    assert_eq!(p.backoff(40, u32::MAX / 2), p.backoff(5, u32::MAX / 2));
    assert_eq!(RetryPolicy::new(1, vec![], None).backoff, DEFAULT_BACKOFF);
}

#[test]
fn budget_allows_the_floor_then_the_ratio() {
    let t0 = Instant::now();
    let cfg = BudgetConfig {
        ratio: 0.2,
        min_per_second: 1,
        window: Duration::from_secs(10),
    };
    let budget = RetryBudget::new(cfg, t0);
    // Floor: 1/s over 10 s = 10 retries with no requests at all.
    let granted = (0..20).filter(|_| budget.try_withdraw(t0)).count();
    assert_eq!(granted, 10);
    // 100 requests add 20 more.
    for _ in 0..100 {
        budget.deposit(t0);
    }
    let granted = (0..50).filter(|_| budget.try_withdraw(t0)).count();
    assert_eq!(granted, 20);
    assert_eq!(budget.window_counts(t0), (100, 30));
}

#[test]
fn budget_window_slides() {
    let t0 = Instant::now();
    let cfg = BudgetConfig {
        ratio: 0.5,
        min_per_second: 0,
        window: Duration::from_secs(10),
    };
    let budget = RetryBudget::new(cfg, t0);
    for _ in 0..10 {
        budget.deposit(t0);
    }
    assert_eq!((0..10).filter(|_| budget.try_withdraw(t0)).count(), 5);
    // Still inside the window 9 s later: nothing more.
    assert!(!budget.try_withdraw(t0 + Duration::from_secs(9)));
    // 10 s later the first second has left the window: budget and spend are gone.
    let later = t0 + Duration::from_secs(10);
    assert_eq!(budget.window_counts(later), (0, 0));
    assert!(!budget.try_withdraw(later));
    budget.deposit(later);
    budget.deposit(later);
    assert!(budget.try_withdraw(later));
    assert!(!budget.try_withdraw(later));
    // A bucket reused after a full turn of the ring starts from zero.
    assert_eq!(budget.window_counts(t0 + Duration::from_secs(20)), (0, 0));
}

#[test]
fn budget_is_shared_between_threads() {
    let t0 = Instant::now();
    let cfg = BudgetConfig {
        ratio: 0.0,
        min_per_second: 10,
        window: Duration::from_secs(10),
    };
    let budget = std::sync::Arc::new(RetryBudget::new(cfg, t0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let b = budget.clone();
            std::thread::spawn(move || (0..100).filter(|_| b.try_withdraw(t0)).count())
        })
        .collect();
    let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    // 100 allowed; a race may let each thread overshoot by one.
    assert!((100..=104).contains(&granted), "{granted}");
}
