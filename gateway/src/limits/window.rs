//! Fixed windows aligned to the UTC clock, and the limits a plan puts on them.
//!
//! A window is the current second, minute, hour, day (UTC) or calendar month (UTC) that
//! contains an instant; every gateway replica and the Redis store name the same window the
//! same way (by its start), so counts agree without coordination beyond the shared counter.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weft_link::date::{civil_from_days, days_from_civil};

use http::HeaderValue;
use serde::{Deserialize, Serialize};
use weft_proto::discovery::v1 as pb;

const SECS_PER_DAY: i64 = 86_400;

/// The nominal length of a month in the `RateLimit-Policy` field (30 days): the field
/// should stay the same from one response to the next (draft-ietf-httpapi-ratelimit-headers,
/// section 3), while a calendar month is 28 to 31 days; the exact time left is in the
/// `RateLimit` field's `t`.
pub const NOMINAL_MONTH_SECS: u64 = 30 * 86_400;

/// One of the five windows a plan can limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    /// The current UTC second.
    Second,
    /// The current UTC minute.
    Minute,
    /// The current UTC hour.
    Hour,
    /// The current UTC day.
    Day,
    /// The current calendar month (UTC).
    Month,
}

// === impl Window ===

impl Window {
    /// All windows, shortest first.
    pub const ALL: [Window; 5] = [
        Window::Second,
        Window::Minute,
        Window::Hour,
        Window::Day,
        Window::Month,
    ];

    /// The policy name in the `RateLimit-Policy` and `RateLimit` fields.
    pub fn name(self) -> &'static str {
        match self {
            Window::Second => "second",
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    /// Index of this window in `ALL`.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Window length in seconds as announced in `RateLimit-Policy` (`w`).
    pub fn nominal_secs(self) -> u64 {
        match self {
            Window::Second => 1,
            Window::Minute => 60,
            Window::Hour => 3_600,
            Window::Day => 86_400,
            Window::Month => NOMINAL_MONTH_SECS,
        }
    }

    /// Whether counts of this window are written to the state file. Second and minute
    /// counters are not: by the time a restarted gateway reads the file the window has
    /// (nearly always) ended, and losing at most one minute of counts on a restart costs
    /// a client at most one extra minute's allowance, while writing them would mean writing
    /// the file on every request burst.
    pub fn persisted(self) -> bool {
        matches!(self, Window::Hour | Window::Day | Window::Month)
    }

    /// The window containing the unix time `secs`: its start and its end (exclusive), in
    /// unix seconds.
    pub fn bounds(self, secs: i64) -> (i64, i64) {
        let fixed = |len: i64| {
            let start = secs - secs.rem_euclid(len);
            (start, start + len)
        };
        match self {
            Window::Second => (secs, secs + 1),
            Window::Minute => fixed(60),
            Window::Hour => fixed(3_600),
            Window::Day => fixed(SECS_PER_DAY),
            Window::Month => {
                let (y, m, _) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    days_from_civil(y, m, 1) * SECS_PER_DAY,
                    days_from_civil(ny, nm, 1) * SECS_PER_DAY,
                )
            }
        }
    }
}

/// An instant as whole unix seconds plus the fraction, clamped at the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnixTime {
    pub secs: i64,
    pub nanos: u32,
}

impl UnixTime {
    pub fn from_system(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self {
            secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2),
            nanos: d.subsec_nanos(),
        }
    }

    /// Time from now until the unix second `at` (zero when past).
    pub fn until(self, at: i64) -> Duration {
        let whole = at.saturating_sub(self.secs);
        if whole <= 0 {
            return Duration::ZERO;
        }
        Duration::from_secs(whole.unsigned_abs())
            .saturating_sub(Duration::from_nanos(u64::from(self.nanos)))
    }
}

/// Whole seconds, rounded up: a client told to wait this long finds the window reset.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// One window's limit: at most `limit` admitted requests per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// The window.
    pub window: Window,
    /// Admitted requests per window; never 0 (0 means no limit and is not a quota).
    pub limit: u64,
}

/// The limits of a plan (or the anonymous limits of an API): a quota per window that has
/// one. Built once per configuration, not per request: the `RateLimit-Policy` value is
/// rendered here.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Limits {
    /// Shortest window first, at most one per window.
    quotas: Vec<Quota>,
    /// `RateLimit-Policy`, `None` when there is no quota.
    policy: Option<HeaderValue>,
}

// === impl Limits ===

impl Limits {
    /// No limit at all.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// From `(window, limit)` pairs; a limit of 0 means none, and a window given twice keeps
    /// its last limit.
    pub fn new(quotas: impl IntoIterator<Item = (Window, u64)>) -> Self {
        let mut by_window = [0u64; 5];
        for (w, limit) in quotas {
            by_window[w.index()] = limit;
        }
        let quotas: Vec<Quota> = Window::ALL
            .iter()
            .zip(by_window)
            .filter(|(_, limit)| *limit > 0)
            .map(|(&window, limit)| Quota { window, limit })
            .collect();
        let policy = super::headers::policy_value(&quotas);
        Self { quotas, policy }
    }

    /// The quotas, shortest window first.
    pub fn quotas(&self) -> &[Quota] {
        &self.quotas
    }

    /// True when no window is limited.
    pub fn is_unlimited(&self) -> bool {
        self.quotas.is_empty()
    }

    /// The rendered `RateLimit-Policy` value.
    pub(crate) fn policy(&self) -> Option<&HeaderValue> {
        self.policy.as_ref()
    }
}

impl From<&pb::RateLimits> for Limits {
    fn from(l: &pb::RateLimits) -> Self {
        Limits::new([
            (Window::Second, l.per_second),
            (Window::Minute, l.per_minute),
            (Window::Hour, l.per_hour),
            (Window::Day, l.per_day),
            (Window::Month, l.per_month),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, m: i64, d: i64, hh: i64, mm: i64, ss: i64) -> i64 {
        days_from_civil(y, m, d) * SECS_PER_DAY + hh * 3600 + mm * 60 + ss
    }

    #[test]
    fn windows_align_to_utc_and_calendar_months() {
        let t = at(2026, 12, 31, 23, 59, 59);
        assert_eq!(Window::Second.bounds(t), (t, t + 1));
        assert_eq!(Window::Minute.bounds(t), (t - 59, t + 1));
        assert_eq!(Window::Hour.bounds(t), (t - 3599, t + 1));
        assert_eq!(Window::Day.bounds(t), (t - 86_399, t + 1));
        // December ends into January of the next year.
        assert_eq!(
            Window::Month.bounds(t),
            (at(2026, 12, 1, 0, 0, 0), at(2027, 1, 1, 0, 0, 0))
        );
        // A leap February has 29 days, a common one 28.
        let (s, e) = Window::Month.bounds(at(2028, 2, 10, 5, 0, 0));
        assert_eq!((e - s) / SECS_PER_DAY, 29);
        let (s, e) = Window::Month.bounds(at(2027, 2, 28, 23, 0, 0));
        assert_eq!((e - s) / SECS_PER_DAY, 28);
        assert_eq!(e, at(2027, 3, 1, 0, 0, 0));
        // The first second of a month belongs to it.
        let first = at(2027, 3, 1, 0, 0, 0);
        assert_eq!(Window::Month.bounds(first).0, first);
    }

    #[test]
    fn zero_means_no_limit() {
        let l = Limits::from(&pb::RateLimits {
            per_second: 5,
            per_minute: 0,
            per_hour: 0,
            per_day: 0,
            per_month: 100_000,
        });
        assert_eq!(
            l.quotas(),
            &[
                Quota {
                    window: Window::Second,
                    limit: 5
                },
                Quota {
                    window: Window::Month,
                    limit: 100_000
                }
            ]
        );
        assert!(Limits::from(&pb::RateLimits::default()).is_unlimited());
    }

    #[test]
    fn until_rounds_up() {
        let now = UnixTime {
            secs: 100,
            nanos: 250_000_000,
        };
        assert_eq!(now.until(101), Duration::from_millis(750));
        assert_eq!(ceil_secs(now.until(101)), 1);
        assert_eq!(ceil_secs(now.until(160)), 60);
        assert_eq!(now.until(100), Duration::ZERO);
    }
}
