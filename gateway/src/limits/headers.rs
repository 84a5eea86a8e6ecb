//! The answer to one check: allowed or not, and the header fields that say why, per
//! draft-ietf-httpapi-ratelimit-headers (-10/-11, the Structured Fields form):
//!
//! ```text
//! RateLimit-Policy: "month";q=100000;w=2592000, "second";q=5;w=1
//! RateLimit: "second";r=3;t=1
//! Retry-After: 1            (429 answers only, RFC 9110 section 10.2.3)
//! ```
//!
//! `RateLimit-Policy` lists every quota (longest window first); `RateLimit` names the one
//! policy closest to exhaustion, with `r` the requests left in its window and `t` the
//! seconds until the window resets.

use std::fmt::Write as _;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::window::{Limits, Quota, UnixTime, ceil_secs};

/// `RateLimit-Policy` (lower case, as HTTP/2 and HTTP/3 send field names).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whether a request may pass, and the fields to add to the response (the 429 or the
/// upstream's answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// True: forward the request (it was counted in every window). False: answer 429
    /// (it was not counted anywhere).
    pub allowed: bool,
    /// When refused: the time until every full window has reset.
    pub retry_after: Option<Duration>,
    /// `RateLimit-Policy` and `RateLimit`, plus `Retry-After` when refused; empty when the
    /// request has no limits.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

// === impl Decision ===

impl Decision {
    /// A request without limits: allowed, nothing to add.
    pub fn unlimited() -> Self {
        Self {
            allowed: true,
            retry_after: None,
            headers: Vec::new(),
        }
    }

    /// Adds the header fields to a response's headers (replacing any the upstream set, so a
    /// client never sees two different `RateLimit` fields).
    pub fn apply_to(&self, headers: &mut http::HeaderMap) {
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// What a store found for one request: the counts of each quota's current window (after
/// this request when admitted), in the order of `Limits::quotas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub admitted: bool,
    pub counts: [u64; 5],
}

/// Renders the `RateLimit-Policy` value of a set of quotas (once per configuration).
pub(crate) fn policy_value(quotas: &[Quota]) -> Option<HeaderValue> {
    if quotas.is_empty() {
        return None;
    }
    let mut s = String::new();
    for q in quotas.iter().rev() {
        if !s.is_empty() {
            s.push_str(", ");
        }
        let _ = write!(
            s,
            "\"{}\";q={};w={}",
            q.window.name(),
            q.limit,
            q.window.nominal_secs()
        );
    }
    HeaderValue::try_from(s).ok()
}

/// The decision and its header fields for what a store found.
pub(crate) fn decide(limits: &Limits, now: UnixTime, tally: &Tally) -> Decision {
    // The policy closest to exhaustion: fewest requests left, then the later reset (the
    // one a client has to wait longest for).
    let mut closest: Option<(u64, Duration, &str)> = None;
    let mut retry_after: Option<Duration> = None;
    for (q, &count) in limits.quotas().iter().zip(tally.counts.iter()) {
        let (_, reset) = q.window.bounds(now.secs);
        let left = now.until(reset);
        let remaining = q.limit.saturating_sub(count);
        if !tally.admitted && count >= q.limit {
            retry_after = Some(retry_after.map_or(left, |r| r.max(left)));
        }
        let better = match closest {
            None => true,
            Some((r, t, _)) => remaining < r || (remaining == r && left > t),
        };
        if better {
            closest = Some((remaining, left, q.window.name()));
        }
    }
    let mut headers = Vec::with_capacity(3);
    if let Some(policy) = limits.policy() {
        headers.push((RATELIMIT_POLICY.clone(), policy.clone()));
    }
    if let Some((remaining, left, name)) = closest {
        let v = format!("\"{name}\";r={remaining};t={}", ceil_secs(left));
        if let Ok(v) = HeaderValue::try_from(v) {
            headers.push((RATELIMIT.clone(), v));
        }
    }
    if !tally.admitted {
        // A refusal always has a full window; the fallback only guards a store that
        // refused without one (it cannot, but a client must never be told to retry at 0).
        let wait = retry_after.unwrap_or(Duration::from_secs(1));
        retry_after = Some(wait);
        headers.push((
            http::header::RETRY_AFTER,
            HeaderValue::from(ceil_secs(wait).max(1)),
        ));
    }
    Decision {
        allowed: tally.admitted,
        retry_after,
        headers,
    }
}
