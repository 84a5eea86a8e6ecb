//! The embedded store: counters in memory, exact under concurrency, bounded in size.
//!
//! Keys are spread over shards, each a `parking_lot` mutex over a map; a check reads and
//! bumps all windows of its key under the one shard lock, so concurrent requests of the
//! same key are serialized and never admit more than the limit, while different keys
//! rarely contend.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::headers::Tally;
use super::key::LimitKey;
use super::persist::SavedCounter;
use super::window::{Limits, UnixTime, Window};

/// Shards of the key map: enough that 64 tasks on 2-16 cores rarely wait on each other.
const SHARDS: usize = 64;

/// One window's counter: which window (its start) and how many requests it admitted.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    start: i64,
    reset: i64,
    count: u64,
}

/// All counters of one key, one slot per `Window`.
#[derive(Debug, Default)]
struct Entry {
    slots: [Slot; 5],
}

impl Entry {
    /// When the last window holding a count ends; past that the entry says nothing.
    fn expires(&self) -> i64 {
        self.slots
            .iter()
            .filter(|s| s.count > 0)
            .map(|s| s.reset)
            .max()
            .unwrap_or(i64::MIN)
    }
}

/// Whether a full window refuses the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Refuse when a window is full; count only when admitted.
    Check,
    /// Count unconditionally: the request was admitted elsewhere (by the Redis store) and
    /// is recorded here so that this replica's own share is known if Redis goes away.
    Record,
}

pub(crate) struct LocalStore {
    shards: Box<[Mutex<HashMap<LimitKey, Entry>>]>,
    per_shard: usize,
    hasher: RandomState,
    /// Set when a persisted window (hour, day, month) changed since the last save.
    dirty: AtomicBool,
}

// === impl LocalStore ===

impl LocalStore {
    /// A store holding at most `max_keys` keys (at least one).
    pub fn new(max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        let shards = SHARDS.min(max_keys);
        Self {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: max_keys / shards,
            hasher: RandomState::new(),
            dirty: AtomicBool::new(false),
        }
    }

    fn shard(&self, key: &LimitKey) -> &Mutex<HashMap<LimitKey, Entry>> {
        // The modulo keeps the index in range; the shard count is never 0.
        let i = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        &self.shards[i]
    }

    /// Counts one request of `key` in every window of `limits`.
    pub fn check(&self, key: &LimitKey, limits: &Limits, now: UnixTime, mode: Mode) -> Tally {
        let mut tally = Tally {
            admitted: true,
            counts: [0; 5],
        };
        let mut map = self.shard(key).lock();
        if !map.contains_key(key) {
            self.make_room(&mut map, now.secs);
            map.insert(key.clone(), Entry::default());
        }
        let Some(entry) = map.get_mut(key) else {
            return tally;
        };
        for (i, q) in limits.quotas().iter().enumerate() {
            let (start, reset) = q.window.bounds(now.secs);
            let slot = &mut entry.slots[q.window.index()];
            // Only ever move forward: a request whose `now` was taken just before a
            // boundary but which got the lock after a later one counts in the newer
            // window, instead of resetting it and letting that window over-admit.
            if start > slot.start {
                *slot = Slot {
                    start,
                    reset,
                    count: 0,
                };
            }
            tally.counts[i] = slot.count;
            if mode == Mode::Check && slot.count >= q.limit {
                tally.admitted = false;
            }
        }
        if tally.admitted {
            let mut persisted = false;
            for (i, q) in limits.quotas().iter().enumerate() {
                let slot = &mut entry.slots[q.window.index()];
                slot.count = slot.count.saturating_add(1);
                tally.counts[i] = slot.count;
                persisted |= q.window.persisted();
            }
            if persisted {
                self.dirty.store(true, Ordering::Relaxed);
            }
        }
        tally
    }

    /// Makes room for one more key in a shard: drops the keys whose windows have all
    /// ended, and when the shard is still full, the key whose counts end soonest. That one
    /// matters least: a flood of addresses on a per-second limit evicts its own keys,
    /// while a consumer's monthly quota ends last and stays.
    fn make_room(&self, map: &mut HashMap<LimitKey, Entry>, now: i64) {
        if map.len() < self.per_shard {
            return;
        }
        map.retain(|_, e| e.expires() > now);
        while map.len() >= self.per_shard {
            let Some(victim) = map
                .iter()
                .min_by_key(|(_, e)| e.expires())
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            map.remove(&victim);
        }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Takes the dirty flag: true when a persisted counter changed since the last call.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::Relaxed)
    }

    /// Whether a persisted counter changed since the last `take_dirty`.
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Relaxed)
    }

    /// Marks the store dirty again (a save failed).
    pub fn set_dirty(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// The persisted counters (hour, day, month) whose window has not ended at `now`.
    pub fn snapshot(&self, now: i64) -> Vec<SavedCounter> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let map = shard.lock();
            for (key, entry) in map.iter() {
                for w in Window::ALL.iter().copied().filter(|w| w.persisted()) {
                    let s = entry.slots[w.index()];
                    if s.count > 0 && s.reset > now {
                        out.push(SavedCounter {
                            key: key.clone(),
                            window: w,
                            start: s.start,
                            count: s.count,
                        });
                    }
                }
            }
        }
        out
    }

    /// Loads saved counters, skipping windows that ended before `now`, windows that are not
    /// persisted and starts that are not a window's start. Returns how many were kept.
    pub fn restore(&self, saved: Vec<SavedCounter>, now: i64) -> usize {
        let mut kept = 0;
        for c in saved {
            if !c.window.persisted() || c.count == 0 {
                continue;
            }
            let (start, reset) = c.window.bounds(c.start);
            if start != c.start || reset <= now {
                continue;
            }
            let mut map = self.shard(&c.key).lock();
            if !map.contains_key(&c.key) {
                self.make_room(&mut map, now);
            }
            let entry = map.entry(c.key).or_default();
            entry.slots[c.window.index()] = Slot {
                start,
                reset,
                count: c.count,
            };
            kept += 1;
        }
        kept
    }
}
