//! Retries: whether a failed attempt is tried again and after how long (`RetryPolicy`),
//! and how many retries the whole process allows itself (`RetryBudget`), so retries cannot
//! multiply the load on a backend that is already failing.
//!
//! Pure: callers pass the random numbers and the clock.

mod budget;

pub use budget::{BudgetConfig, RetryBudget};

use std::time::Duration;

/// Base delay when the route gives none (Envoy's default retry back-off base).
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
/// The back-off grows up to this many times the base (Envoy caps at 10x as well), so a
/// long retry chain does not sleep past any sensible request deadline.
pub const MAX_BACKOFF_FACTOR: u32 = 10;

/// A rule's retry policy (Gateway API HTTPRoute `retry`, GEP-1731).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Statuses that are retried; connection failures and attempt timeouts always are.
    pub codes: Vec<u16>,
    /// Base delay; doubles each retry, up to `MAX_BACKOFF_FACTOR` times.
    pub backoff: Duration,
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No connection (refused, reset before a response, TLS failure).
    ConnectFailure,
    /// The backend answered with this status.
    Status(u16),
    /// The attempt's deadline (`backendRequest` timeout) passed.
    Timeout,
}

/// What to do after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this delay.
    Retry {
        /// The jittered back-off.
        after: Duration,
    },
    /// The outcome stands.
    Done(DoneReason),
}

/// Why there is no retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoneReason {
    /// The attempt succeeded, or failed in a way the policy does not retry.
    NotRetryable,
    /// Every allowed retry has been made.
    AttemptsExhausted,
}

impl RetryPolicy {
    /// A policy; `backoff` `None` means `DEFAULT_BACKOFF`.
    pub fn new(attempts: u32, codes: Vec<u16>, backoff: Option<Duration>) -> Self {
        Self {
            attempts,
            codes,
            backoff: backoff.unwrap_or(DEFAULT_BACKOFF),
        }
    }

    /// Whether the outcome is retryable by this policy. Connection failures and attempt
    /// timeouts are: GEP-1731 has implementations retry on connection errors whenever a
    /// retry stanza is configured; statuses only when listed.
    pub fn retryable(&self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::ConnectFailure | Outcome::Timeout => true,
            Outcome::Status(code) => self.codes.contains(&code),
        }
    }

    /// The decision after attempt number `retries_done + 1` ended with `outcome`. `rand` is
    /// a uniform random number for the jitter. The budget is the caller's separate check
    /// (`RetryBudget::try_withdraw`), made only when this says `Retry`.
    pub fn decide(&self, retries_done: u32, outcome: Outcome, rand: u32) -> RetryDecision {
        if !self.retryable(outcome) {
            return RetryDecision::Done(DoneReason::NotRetryable);
        }
        if retries_done >= self.attempts {
            return RetryDecision::Done(DoneReason::AttemptsExhausted);
        }
        RetryDecision::Retry {
            after: self.backoff(retries_done, rand),
        }
    }

    /// Exponential back-off with "equal jitter": the delay for retry `n` (0-based) is
    /// uniform in [d/2, d] where d = base * 2^n capped at base * `MAX_BACKOFF_FACTOR`, so
    /// concurrent clients spread out but never retry immediately.
    pub fn backoff(&self, retries_done: u32, rand: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retries_done.min(31))
            .unwrap_or(u32::MAX)
            .min(MAX_BACKOFF_FACTOR);
        let full = self.backoff.saturating_mul(factor);
        let nanos = u64::try_from(full.as_nanos()).unwrap_or(u64::MAX);
        let half = nanos / 2;
        // half + (nanos - half) * rand / 2^32, in u128 to avoid overflow.
        let jitter = (u128::from(nanos - half) * u128::from(rand)) >> 32;
        Duration::from_nanos(half.saturating_add(u64::try_from(jitter).unwrap_or(u64::MAX)))
    }
}

#[cfg(test)]
mod tests;
