//! Exponential backoff with jitter for reconnects.

use std::{
    hash::{BuildHasher, Hasher},
    time::Duration,
};

/// First reconnect delay: short, so a control-plane restart costs clients well under a
/// second.
pub const DEFAULT_INITIAL: Duration = Duration::from_millis(100);
/// Longest reconnect delay: bounds how stale a client can stay after a long outage once
/// the control plane is back.
pub const DEFAULT_MAX: Duration = Duration::from_secs(15);

/// Doubling delays from `initial` up to `max`, each drawn uniformly from its upper half so
/// that a fleet of agents disconnected together does not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
            current: initial,
            // A per-process random seed without a dependency on a RNG crate.
            seed: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        // xorshift64: plenty for jitter.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let half = base / 2;
        let nanos = half.as_nanos().max(1) as u64;
        half + Duration::from_nanos(self.seed % nanos)
    }

    /// Starts over from `initial`, after a connection that worked.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(DEFAULT_INITIAL, DEFAULT_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(15));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
        }
        assert!(last >= Duration::from_millis(7500) && last <= Duration::from_secs(15));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
