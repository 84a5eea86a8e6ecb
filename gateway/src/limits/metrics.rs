//! The limiter's metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type StoreLabel = [(&'static str, &'static str); 1];
const REDIS: StoreLabel = [("store", "redis")];

#[derive(Clone, Default)]
pub(crate) struct Metrics {
    store_up: Family<StoreLabel, Gauge>,
    fallback: Counter,
    keys: Gauge,
}

impl Metrics {
    /// Registers the metrics (names are complete: pass an unprefixed registry).
    pub fn register(registry: &mut Registry, redis: bool) -> Self {
        let m = Self::default();
        if redis {
            registry.register(
                "weft_gateway_limits_store_up",
                "Whether the shared limits store answers (1) or requests are decided by local counters (0)",
                m.store_up.clone(),
            );
            registry.register(
                "weft_gateway_limits_fallback",
                "Requests decided by local counters because the shared limits store did not answer",
                m.fallback.clone(),
            );
            // Down until the first answer: nothing is known to be shared yet.
            m.set_store_up(false);
        }
        registry.register(
            "weft_gateway_limits_keys",
            "Keys (consumer or client address, per route or API) held by the local limits store",
            m.keys.clone(),
        );
        m
    }

    pub fn set_store_up(&self, up: bool) {
        self.store_up.get_or_create(&REDIS).set(i64::from(up));
    }

    pub fn fallback(&self) {
        self.fallback.inc();
    }

    pub fn set_keys(&self, n: usize) {
        self.keys.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}
