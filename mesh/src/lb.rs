//! Which endpoint of a service a new connection goes to, and what the data path learned about
//! each endpoint's health (passive health checking). Pure: the time and the random numbers
//! are passed in, so the tests are exact.
//!
//! - **Power of two choices** on active connections, weighted ([`Workload::weight`]): two
//!   distinct candidates are drawn with probability proportional to their weight, and the
//!   one with fewer active connections per unit of weight wins; on a tie, the first drawn.
//!   Drawing by weight makes the spread proportional to the weights even when nothing is
//!   active (comparing loads alone would always pick the heavier of two idle endpoints);
//!   comparing loads steers away from an endpoint that holds connections longer. See
//!   Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing" (2001), and
//!   Envoy's `LEAST_REQUEST`.
//! - **Passive health** (Envoy's outlier detection on consecutive connect failures): after
//!   [`EJECT_AFTER_FAILURES`] failed connects in a row an endpoint is ejected for a back-off
//!   ([`EJECTION_BASE`], doubling per ejection up to [`EJECTION_MAX`]). When it is up, the
//!   endpoint is on probation: one connection at a time; a successful connect restores it
//!   (and resets the back-off), a failed one ejects it again for longer.
//! - **Panic mode**: when every endpoint is ejected (or on probation and busy), the pick is
//!   among all of them anyway, as Envoy's panic threshold: the health data is likelier to be
//!   stale than the whole service down, and refusing would turn a guess into an outage.
//!
//! State is kept per endpoint address (IP and target port) only while it says something: an
//! endpoint with no active connection and no failure has the state of one never seen, and
//! [`Balancer::retain`] drops the state of endpoints no longer in any service.
//!
//! [`Workload::weight`]: crate::workload::Workload::weight

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use parking_lot::{Mutex, RwLock};

use crate::service::Endpoint;

/// Consecutive failed connects that eject an endpoint (Envoy's `consecutive_gateway_failure`
/// is 5 for requests; a refused connect is a stronger signal than a 5xx, so fewer).
pub const EJECT_AFTER_FAILURES: u32 = 3;
/// How long the first ejection lasts: long enough to stop a burst of connections from
/// meeting the same dead endpoint, short enough that a restarted one is back at once.
pub const EJECTION_BASE: Duration = Duration::from_secs(1);
/// The longest ejection: an endpoint that keeps failing is still tried twice a minute.
pub const EJECTION_MAX: Duration = Duration::from_secs(30);

/// A source of random numbers for the picks: anything that returns a fresh `u64` per call.
pub trait Random {
    fn next_u64(&mut self) -> u64;
}

impl<F: FnMut() -> u64> Random for F {
    fn next_u64(&mut self) -> u64 {
        self()
    }
}

/// SplitMix64 over a shared counter: lock-free, statistically sound for spreading load, and
/// not meant to be unpredictable (nothing here is a secret).
#[derive(Debug)]
pub struct SplitMix(AtomicU64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(AtomicU64::new(seed))
    }

    pub fn next(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Random for &SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.next()
    }
}

/// What one endpoint's connections taught: shared by its [`Active`] guards.
#[derive(Debug, Default)]
struct EndpointState {
    /// Connections to it now (counted from the pick to the end of the connection).
    active: AtomicU32,
    health: Mutex<Health>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Health {
    /// Failed connects since the last success.
    failures: u32,
    /// Ejected until then; once past, on probation until a connect succeeds.
    ejected_until: Option<Instant>,
    /// Ejections since the last success: the back-off doubles with each.
    ejections: u32,
}

/// How an endpoint may be picked now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Healthy,
    /// Ejected, or on probation with its one connection in flight: only in panic mode.
    Unavailable,
}

impl EndpointState {
    fn standing(&self, now: Instant) -> Standing {
        let health = self.health.lock();
        match health.ejected_until {
            None => Standing::Healthy,
            Some(until) if now < until => Standing::Unavailable,
            // Probation: one connection at a time.
            Some(_) if self.active.load(Ordering::Relaxed) > 0 => Standing::Unavailable,
            Some(_) => Standing::Healthy,
        }
    }
}

/// What a failed connect did to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Counted; not (yet, or again) ejected.
    Counted,
    /// Ejected for this long.
    Ejected(Duration),
}

/// The load balancer of one agent (or gateway): per-endpoint state, shared by every service.
#[derive(Debug, Default)]
pub struct Balancer {
    endpoints: RwLock<HashMap<SocketAddr, Arc<EndpointState>>>,
}

/// A connection to an endpoint, counted active while this lives.
#[derive(Debug)]
pub struct Active {
    state: Arc<EndpointState>,
    addr: SocketAddr,
}

impl Active {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Picks one of `endpoints` not in `tried` (see the module's documentation), and counts
    /// a connection to it active for the life of the returned guard. `None` only when every
    /// endpoint has been tried.
    pub fn pick<'e>(
        &self,
        endpoints: &'e [Endpoint],
        tried: &[SocketAddr],
        now: Instant,
        mut random: impl Random,
    ) -> Option<(&'e Endpoint, Active)> {
        let chosen = {
            let states = self.endpoints.read();
            let state = |e: &Endpoint| states.get(&e.addr);
            let standing = |e: &Endpoint| state(e).map_or(Standing::Healthy, |s| s.standing(now));
            let untried = |e: &&Endpoint| !tried.contains(&e.addr);
            let healthy = endpoints
                .iter()
                .filter(untried)
                .any(|e| standing(e) == Standing::Healthy);
            // Panic mode: with no healthy endpoint left, all untried ones are candidates.
            let eligible =
                |e: &&Endpoint| untried(e) && (!healthy || standing(e) == Standing::Healthy);
            let load = |e: &Endpoint| state(e).map_or(0, |s| s.active.load(Ordering::Relaxed));
            p2c(endpoints, eligible, load, &mut random)?
        };
        Some((chosen, self.start(chosen.addr)))
    }

    /// Counts a connection to `addr` active until the guard is dropped.
    fn start(&self, addr: SocketAddr) -> Active {
        let existing = self.endpoints.read().get(&addr).cloned();
        let state = match existing {
            Some(state) => state,
            None => self.endpoints.write().entry(addr).or_default().clone(),
        };
        state.active.fetch_add(1, Ordering::Relaxed);
        Active { state, addr }
    }

    /// A connect to `addr` succeeded: it is healthy, its back-off reset.
    pub fn success(&self, addr: SocketAddr) {
        if let Some(state) = self.endpoints.read().get(&addr) {
            *state.health.lock() = Health::default();
        }
    }

    /// A connect to `addr` failed at `now`: counted, and the endpoint ejected after
    /// [`EJECT_AFTER_FAILURES`] in a row, or at once when it was on probation.
    pub fn failure(&self, addr: SocketAddr, now: Instant) -> FailureOutcome {
        let existing = self.endpoints.read().get(&addr).cloned();
        let state = match existing {
            Some(state) => state,
            None => self.endpoints.write().entry(addr).or_default().clone(),
        };
        let mut health = state.health.lock();
        match health.ejected_until {
            // Failures of connections picked before (or in panic during) the ejection say
            // nothing new.
            Some(until) if now < until => return FailureOutcome::Counted,
            Some(_) => {}
            None => {
                health.failures += 1;
                if health.failures < EJECT_AFTER_FAILURES {
                    return FailureOutcome::Counted;
                }
            }
        }
        health.ejections = health.ejections.saturating_add(1);
        health.failures = 0;
        let backoff = ejection(health.ejections);
        health.ejected_until = Some(now + backoff);
        FailureOutcome::Ejected(backoff)
    }

    /// Drops the state of endpoints for which `keep` is false (no longer in any service),
    /// so memory follows the configuration. Connections in flight keep their own count.
    pub fn retain(&self, keep: impl Fn(SocketAddr) -> bool) {
        self.endpoints.write().retain(|addr, _| keep(*addr));
    }

    /// How many endpoints have state.
    pub fn len(&self) -> usize {
        self.endpoints.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `addr` is ejected at `now` (for tests and introspection).
    pub fn is_ejected(&self, addr: SocketAddr, now: Instant) -> bool {
        self.endpoints.read().get(&addr).is_some_and(|s| {
            s.health
                .lock()
                .ejected_until
                .is_some_and(|until| now < until)
        })
    }

    /// Connections to `addr` now.
    pub fn active(&self, addr: SocketAddr) -> u32 {
        self.endpoints
            .read()
            .get(&addr)
            .map_or(0, |s| s.active.load(Ordering::Relaxed))
    }
}

/// The back-off of the `n`-th ejection in a row (1-based).
fn ejection(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    EJECTION_BASE
        .saturating_mul(1 << doublings)
        .min(EJECTION_MAX)
}

/// Power of two choices among the `eligible` endpoints, drawn by weight, compared by
/// `load` per unit of weight. Walks the slice instead of collecting the eligible ones, so a
/// pick allocates nothing.
fn p2c<'e>(
    endpoints: &'e [Endpoint],
    eligible: impl Fn(&&Endpoint) -> bool,
    load: impl Fn(&Endpoint) -> u32,
    random: &mut impl Random,
) -> Option<&'e Endpoint> {
    let weight = |e: &Endpoint| u64::from(e.workload.weight.max(1));
    let total: u64 = endpoints.iter().filter(&eligible).map(weight).sum();
    if total == 0 {
        return None;
    }
    // The endpoint at `point` of the cumulative weights, skipping `skip`.
    let draw = |point: u64, skip: Option<SocketAddr>| {
        let mut left = point;
        endpoints
            .iter()
            .filter(&eligible)
            .filter(|e| Some(e.addr) != skip)
            .find(|e| {
                let w = weight(e);
                if left < w {
                    true
                } else {
                    left -= w;
                    false
                }
            })
    };
    let first = draw(random.next_u64() % total, None)?;
    let rest = total - weight(first);
    if rest == 0 {
        return Some(first);
    }
    let Some(second) = draw(random.next_u64() % rest, Some(first.addr)) else {
        return Some(first);
    };
    // first.load / first.weight <= second.load / second.weight, without division.
    let (l1, l2) = (u64::from(load(first)), u64::from(load(second)));
    if l1 * weight(second) <= l2 * weight(first) {
        Some(first)
    } else {
        Some(second)
    }
}

#[cfg(test)]
#[path = "lb_tests.rs"]
mod tests;
