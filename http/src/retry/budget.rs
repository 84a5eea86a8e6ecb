//! The retry budget: retries allowed up to a share of recent requests plus a floor per
//! second, over a sliding window (the token-bucket budget of Finagle and Linkerd).
//!
//! Lock-free: one ring of per-second buckets of atomic counters, shared by every task. A
//! retry checks the window's sums and then counts itself; two tasks racing past the check
//! may overshoot the budget by one retry each, which is harmless for a budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Default share of requests that may be retries (Linkerd's default retry ratio).
pub const DEFAULT_RETRY_RATIO: f64 = 0.2;
/// Default retries per second always allowed, so low-traffic routes can still retry.
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;
/// Default window over which requests and retries are counted.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// Longest window, so the ring stays small (one bucket per second).
pub const MAX_WINDOW_SECONDS: u64 = 300;

/// Retry budget settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed per request in the window (0.2: one retry per five requests).
    pub ratio: f64,
    /// Retries per second allowed on top of the ratio.
    pub min_per_second: u32,
    /// The sliding window, whole seconds (1 s to `MAX_WINDOW_SECONDS`).
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: DEFAULT_RETRY_RATIO,
            min_per_second: DEFAULT_MIN_RETRIES_PER_SECOND,
            window: DEFAULT_WINDOW,
        }
    }
}

/// One second of counts. `second` is the bucket's second since the budget's start, plus
/// one (0 = never used).
#[derive(Debug, Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// A retry budget shared by many tasks (wrap it in an `Arc`).
#[derive(Debug)]
pub struct RetryBudget {
    start: Instant,
    ratio: f64,
    /// The floor over the whole window (min_per_second * window seconds).
    floor: u64,
    buckets: Box<[Bucket]>,
}

impl RetryBudget {
    /// A budget counting from `now`.
    pub fn new(config: BudgetConfig, now: Instant) -> Self {
        let seconds = config.window.as_secs().clamp(1, MAX_WINDOW_SECONDS);
        let ratio = if config.ratio.is_finite() {
            config.ratio.max(0.0)
        } else {
            0.0
        };
        Self {
            start: now,
            ratio,
            floor: u64::from(config.min_per_second) * seconds,
            buckets: (0..seconds).map(|_| Bucket::default()).collect(),
        }
    }

    /// The bucket of `now`, emptied first if it last counted an older second.
    fn bucket(&self, now: Instant) -> (u64, &Bucket) {
        let second = now.saturating_duration_since(self.start).as_secs() + 1;
        let len = self.buckets.len() as u64;
        // In range: second % len < len = buckets.len().
        let bucket = &self.buckets[usize::try_from(second % len).unwrap_or(0)];
        let seen = bucket.second.load(Ordering::Acquire);
        if seen != second
            && bucket
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // The winner of the swap resets; counts another task adds between the swap and
            // these stores are lost, at most a few per second boundary.
            bucket.requests.store(0, Ordering::Release);
            bucket.retries.store(0, Ordering::Release);
        }
        (second, bucket)
    }

    /// Counts a request (a first attempt; retries are counted by `try_withdraw`).
    pub fn deposit(&self, now: Instant) {
        self.bucket(now).1.requests.fetch_add(1, Ordering::AcqRel);
    }

    /// Requests and retries counted in the window ending at `now`.
    pub fn window_counts(&self, now: Instant) -> (u64, u64) {
        let second = now.saturating_duration_since(self.start).as_secs() + 1;
        let len = self.buckets.len() as u64;
        let oldest = second.saturating_sub(len - 1).max(1);
        self.buckets
            .iter()
            .filter(|b| (oldest..=second).contains(&b.second.load(Ordering::Acquire)))
            .fold((0, 0), |(req, ret), b| {
                (
                    req + b.requests.load(Ordering::Acquire),
                    ret + b.retries.load(Ordering::Acquire),
                )
            })
    }

    /// Whether one more retry is allowed now; if so it is counted.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let (requests, retries) = self.window_counts(now);
        // Non-negative and far below u64::MAX; precision is lost only above 2^53 requests.
        let allowed = self.floor + (requests as f64 * self.ratio) as u64;
        if retries >= allowed {
            return false;
        }
        self.bucket(now).1.retries.fetch_add(1, Ordering::AcqRel);
        true
    }
}
