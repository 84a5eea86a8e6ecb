//! Plans, rate limits and quotas.
//!
//! A request is counted against a key (a consumer, or an anonymous client address, within a
//! route or a whole API) in fixed windows aligned to the UTC clock: the current second,
//! minute, hour, day and calendar month. It is refused when any window of its limits is
//! full, and a refused request is counted nowhere, so a client hammering a 429 does not burn
//! its monthly quota. [`Limiter::check`] gives the decision with the `RateLimit-Policy`,
//! `RateLimit` and (on refusal) `Retry-After` fields to add; it serves no HTTP itself.
//!
//! Counters live in the embedded store (memory, with the hour, day and month counters saved
//! to `<state-dir>/limits.json` every second and at shutdown), or in Redis
//! (`--limits-store redis://HOST:PORT`) shared by all replicas, with the embedded store as
//! the fallback while Redis does not answer.

mod headers;
mod key;
mod local;
mod metrics;
mod persist;
mod redis_store;
mod window;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::registry::Registry;

pub use headers::{Decision, RATELIMIT, RATELIMIT_POLICY};
pub use key::{LimitKey, Scope, Subject};
pub use persist::{BAD_STATE_FILE, STATE_FILE};
pub use window::{Limits, NOMINAL_MONTH_SECS, Quota, Window};

use local::{LocalStore, Mode};
use metrics::Metrics;
use persist::StateDir;
use redis_store::RedisStore;
use window::UnixTime;

/// Keys the local store holds at most. Each key costs about 300 bytes, so the default
/// bounds the store near 30 MB however many client addresses send requests.
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// Longest wait for Redis per request: a limit check must not add more than this to a
/// request's latency; past it the request is decided locally.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
/// While Redis is down, one request per this interval tries it again.
pub const DEFAULT_REDIS_RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// How often changed counters are saved: a crash loses at most this much quota usage.
pub const DEFAULT_PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// Errors of the limits module.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// `--limits-store` is neither `embedded` nor a Redis URL.
    #[error(
        "--limits-store {value:?}: {reason}; use `embedded` (the default) or redis://HOST:PORT"
    )]
    Store {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The Redis URL does not parse.
    #[error("--limits-store {url:?} is not a usable Redis URL: {source}")]
    RedisUrl {
        /// The URL given.
        url: String,
        /// The parse error.
        #[source]
        source: redis::RedisError,
    },
    /// The state directory cannot be created.
    #[error(
        "state directory {}: {source}; create it or point --state-dir at a writable directory",
        path.display()
    )]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing the state file failed.
    #[error("writing the rate-limit state file {}: {source}", path.display())]
    Save {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Encoding the state failed.
    #[error("encoding the rate-limit state: {source}")]
    Encode {
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Built outside a Tokio runtime.
    #[error(
        "the rate limiter must be built inside a Tokio runtime (it saves its state from a task)"
    )]
    NoRuntime,
}

/// Where counters are kept (`--limits-store`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LimitsStore {
    /// In this process (and its state file).
    #[default]
    Embedded,
    /// In Redis at this `redis://` URL, shared by all replicas.
    Redis(String),
}

impl FromStr for LimitsStore {
    type Err = LimitsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| LimitsError::Store {
            value: s.to_string(),
            reason,
        };
        if s.is_empty() || s == "embedded" {
            Ok(Self::Embedded)
        } else if s.starts_with("rediss://") {
            Err(err("TLS to Redis is not supported"))
        } else if s.starts_with("redis://") {
            redis::Client::open(s).map_err(|source| LimitsError::RedisUrl {
                url: s.to_string(),
                source,
            })?;
            Ok(Self::Redis(s.to_string()))
        } else {
            Err(err("unknown store"))
        }
    }
}

/// How the limiter is built.
#[derive(Debug, Clone)]
pub struct LimiterConfig {
    /// Where counters are kept.
    pub store: LimitsStore,
    /// `--state-dir`: where the embedded store saves its hour, day and month counters;
    /// `None` keeps them in memory only.
    pub state_dir: Option<PathBuf>,
    /// Most keys the local store holds (see [`DEFAULT_MAX_KEYS`]).
    pub max_keys: usize,
    /// Longest wait for Redis per request (see [`DEFAULT_REDIS_TIMEOUT`]).
    pub redis_timeout: Duration,
    /// While Redis is down, how often a request tries it again.
    pub redis_retry_interval: Duration,
    /// How often changed counters are saved.
    pub persist_interval: Duration,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self {
            store: LimitsStore::Embedded,
            state_dir: None,
            max_keys: DEFAULT_MAX_KEYS,
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            redis_retry_interval: DEFAULT_REDIS_RETRY_INTERVAL,
            persist_interval: DEFAULT_PERSIST_INTERVAL,
        }
    }
}

struct Inner {
    local: LocalStore,
    redis: Option<RedisStore>,
    state: Option<StateDir>,
    metrics: Metrics,
}

/// Counts requests and decides whether they pass. One per gateway, shared by all requests
/// (`Arc<Limiter>`); dropping it saves the counters.
pub struct Limiter {
    inner: Arc<Inner>,
    saver: Option<tokio::task::JoinHandle<()>>,
}

// === impl Limiter ===

impl Limiter {
    /// Builds the limiter: loads the state file (if `state_dir` is set), starts the task
    /// that saves it (and updates the keys gauge), and prepares the Redis connection (made on first use). Must run
    /// inside a Tokio runtime. The metrics are registered in `registry`.
    pub fn new(config: LimiterConfig, registry: &mut Registry) -> Result<Self, LimitsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| LimitsError::NoRuntime)?;
        let redis = match &config.store {
            LimitsStore::Embedded => None,
            LimitsStore::Redis(url) => Some(RedisStore::new(
                url,
                config.redis_timeout,
                config.redis_retry_interval,
            )?),
        };
        let metrics = Metrics::register(registry, redis.is_some());
        let local = LocalStore::new(config.max_keys);
        let state = match &config.state_dir {
            Some(dir) => {
                let state = StateDir::open(dir)?;
                let saved = state.load();
                let found = saved.len();
                let now = UnixTime::from_system(SystemTime::now()).secs;
                let kept = local.restore(saved, now);
                tracing::info!(
                    path = %state.path().display(),
                    found,
                    kept,
                    "rate-limit counters loaded (windows that ended are dropped)"
                );
                Some(state)
            }
            None => None,
        };
        metrics.set_keys(local.len());
        let inner = Arc::new(Inner {
            local,
            redis,
            state,
            metrics,
        });
        let saver = Some(runtime.spawn(save_loop(Arc::downgrade(&inner), config.persist_interval)));
        Ok(Self { inner, saver })
    }

    /// Counts one request of `key` at `now` against `limits`: admitted (counted in every
    /// window) or refused (counted nowhere), with the header fields for the response.
    pub async fn check(&self, key: &LimitKey, limits: &Limits, now: SystemTime) -> Decision {
        if limits.is_unlimited() {
            return Decision::unlimited();
        }
        let now = UnixTime::from_system(now);
        let inner = &self.inner;
        let tally = match &inner.redis {
            Some(redis) if redis.should_try() => match redis.check(key, limits, now).await {
                Ok(tally) => {
                    redis.mark_up(&inner.metrics);
                    if tally.admitted {
                        inner.local.check(key, limits, now, Mode::Record);
                    }
                    tally
                }
                Err(e) => {
                    redis.mark_down(&inner.metrics, &e);
                    inner.metrics.fallback();
                    inner.local.check(key, limits, now, Mode::Check)
                }
            },
            Some(_) => {
                inner.metrics.fallback();
                inner.local.check(key, limits, now, Mode::Check)
            }
            None => inner.local.check(key, limits, now, Mode::Check),
        };
        headers::decide(limits, now, &tally)
    }

    /// Keys held by the local store.
    pub fn tracked_keys(&self) -> usize {
        self.inner.local.len()
    }

    /// Saves the counters now (at shutdown; they are also saved every second when changed).
    /// Without a state directory, does nothing.
    pub fn persist(&self) -> Result<(), LimitsError> {
        self.inner.save()
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        if let Some(saver) = self.saver.take() {
            saver.abort();
        }
        if let Err(e) = self.inner.save() {
            tracing::error!(error = %e, "rate-limit counters not saved at shutdown");
        }
    }
}

impl Inner {
    fn save(&self) -> Result<(), LimitsError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        self.local.take_dirty();
        let now = UnixTime::from_system(SystemTime::now()).secs;
        let counters = self.local.snapshot(now);
        state.save(counters).inspect_err(|_| self.local.set_dirty())
    }
}

/// Every `interval` until the limiter is dropped: updates the keys gauge, and saves the
/// counters when they changed.
async fn save_loop(inner: std::sync::Weak<Inner>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.metrics.set_keys(inner.local.len());
        if inner.state.is_none() || !inner.local.is_dirty() {
            continue;
        }
        let result = tokio::task::spawn_blocking({
            let inner = Arc::clone(&inner);
            move || inner.save()
        })
        .await;
        match result {
            Ok(Ok(())) => {
                if failing {
                    tracing::info!("rate-limit counters saved again");
                }
                failing = false;
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "rate-limit counters not saved; retrying every interval");
                }
                failing = true;
            }
            Err(e) => tracing::warn!(error = %e, "rate-limit save task failed"),
        }
    }
}
