//! The shared store: counters in Redis, so several gateway replicas count together.
//!
//! One Lua script per check (sent by SHA with EVALSHA, loaded on NOSCRIPT) reads every
//! window of the key, refuses when one is full, and otherwise increments them all. Redis
//! runs a script atomically, so the replicas' checks of one key are serialized exactly as
//! the local store's shard lock serializes tasks. Each window is its own Redis key, named by
//! the window's start, and expires after a window length, so Redis holds no stale counters.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::LimitsError;
use super::headers::Tally;
use super::key::LimitKey;
use super::metrics::Metrics;
use super::window::{Limits, UnixTime};

/// KEYS: one counter per quota. ARGV: limit and expiry (seconds) per quota, in pairs.
/// Returns `{admitted (0|1), count_1, ..., count_n}`, the counts after the increment when
/// admitted.
const CHECK_SCRIPT: &str = r"
local counts = redis.call('MGET', unpack(KEYS))
local out = {0}
local full = false
for i = 1, #KEYS do
  local c = tonumber(counts[i]) or 0
  out[i + 1] = c
  if c >= tonumber(ARGV[2 * i - 1]) then full = true end
end
if full then return out end
out[1] = 1
for i = 1, #KEYS do
  local c = redis.call('INCR', KEYS[i])
  if c == 1 then redis.call('EXPIRE', KEYS[i], ARGV[2 * i]) end
  out[i + 1] = c
end
return out
";

/// Why a Redis check did not give an answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisFailure {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply to the check script: {0:?}")]
    Reply(Vec<i64>),
}

const STATE_UNKNOWN: u8 = 0;
const STATE_UP: u8 = 1;
const STATE_DOWN: u8 = 2;

pub(crate) struct RedisStore {
    url: String,
    conn: ConnectionManager,
    script: redis::Script,
    timeout: Duration,
    retry_interval: Duration,
    state: AtomicU8,
    /// While down: when (millis since `epoch`) the next request may try Redis again.
    next_try: AtomicU64,
    epoch: Instant,
}

// === impl RedisStore ===

impl RedisStore {
    /// Connects lazily: a Redis that is down at start is an outage like any other, and the
    /// gateway starts on local limits.
    pub fn new(
        url: &str,
        timeout: Duration,
        retry_interval: Duration,
    ) -> Result<Self, LimitsError> {
        let client = redis::Client::open(url).map_err(|source| LimitsError::RedisUrl {
            url: url.to_string(),
            source,
        })?;
        // Reconnection is the manager's job; each attempt is short so that a Redis that
        // comes back is used again within about a second.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|source| {
            LimitsError::RedisUrl {
                url: url.to_string(),
                source,
            }
        })?;
        Ok(Self {
            url: url.to_string(),
            conn,
            script: redis::Script::new(CHECK_SCRIPT),
            timeout,
            retry_interval,
            state: AtomicU8::new(STATE_UNKNOWN),
            next_try: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this request should ask Redis. While Redis is down, one request per retry
    /// interval does (and finds out whether it is back); the others go straight to the
    /// local store instead of each waiting out the timeout.
    pub fn should_try(&self) -> bool {
        if self.state.load(Ordering::Relaxed) != STATE_DOWN {
            return true;
        }
        let now = self.millis();
        let next = self.next_try.load(Ordering::Relaxed);
        now >= next
            && self
                .next_try
                .compare_exchange(
                    next,
                    now + self.retry_millis(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn retry_millis(&self) -> u64 {
        u64::try_from(self.retry_interval.as_millis()).unwrap_or(u64::MAX / 2)
    }

    /// Counts one request in Redis, bounded by the timeout. A check that times out may
    /// still have been counted by Redis; the request is then decided (and counted) locally
    /// too, which errs on the side of the quota.
    pub async fn check(
        &self,
        key: &LimitKey,
        limits: &Limits,
        now: UnixTime,
    ) -> Result<Tally, RedisFailure> {
        let mut inv = self.script.prepare_invoke();
        for q in limits.quotas() {
            let (start, reset) = q.window.bounds(now.secs);
            inv.key(format!("weft:rl:{{{key}}}:{}:{start}", q.window.name()));
            inv.arg(q.limit).arg(reset - start);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| RedisFailure::Timeout(self.timeout))??;
        let n = limits.quotas().len();
        if reply.len() != n + 1 || reply.iter().any(|&v| v < 0) || reply[0] > 1 {
            return Err(RedisFailure::Reply(reply));
        }
        let mut tally = Tally {
            admitted: reply[0] == 1,
            counts: [0; 5],
        };
        for (c, &v) in tally.counts.iter_mut().zip(&reply[1..]) {
            *c = v.unsigned_abs();
        }
        Ok(tally)
    }

    /// Records an answer: logs the return of a Redis that was down.
    pub fn mark_up(&self, metrics: &Metrics) {
        // Read first: every answered request lands here, and a write per request would
        // bounce the cache line between cores.
        if self.state.load(Ordering::Relaxed) == STATE_UP {
            return;
        }
        let prev = self.state.swap(STATE_UP, Ordering::Relaxed);
        if prev != STATE_UP {
            metrics.set_store_up(true);
            if prev == STATE_DOWN {
                tracing::info!(url = %self.url, "Redis limits store reachable again; counters are shared again");
            } else {
                tracing::info!(url = %self.url, "Redis limits store reachable");
            }
        }
    }

    /// Records a failure: logs once per outage.
    pub fn mark_down(&self, metrics: &Metrics, err: &RedisFailure) {
        self.next_try
            .store(self.millis() + self.retry_millis(), Ordering::Relaxed);
        let prev = self.state.swap(STATE_DOWN, Ordering::Relaxed);
        if prev != STATE_DOWN {
            metrics.set_store_up(false);
            tracing::warn!(
                url = %self.url,
                error = %err,
                "Redis limits store unavailable; deciding with this gateway's local counters \
                 until it is back (limits are then per replica)"
            );
        }
    }
}
