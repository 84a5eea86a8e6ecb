//! Per-minute counts of the last 24 hours, by series (route, API, consumer, status class):
//! a ring of 1440 minutes, each a map of series to counts, with a cap on series held in
//! all. Behind the `Analytics` mutex.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use super::labels::{Interner, MAX_LABEL_VALUES, SeriesKey};
use super::time::{format_rfc3339, unix_secs};
use super::{RequestRecord, ResolvedLabels};

/// Width of a bucket.
pub const BUCKET: Duration = Duration::from_secs(60);
/// How long counts are kept.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Minutes in the ring.
const SLOTS: u64 = RETENTION.as_secs() / BUCKET.as_secs();
/// Series held across all minutes. An entry is about 100 bytes with the map's overhead, so
/// the store stays under ~10 MB however the labels vary; past the cap a minute's new
/// series count under `other` (route, API and consumer) with their status class.
pub const MAX_SERIES: usize = 100_000;

/// Counts of one series in one minute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_us: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.request_bytes += o.request_bytes;
        self.response_bytes += o.response_bytes;
        self.duration_us += o.duration_us;
    }

    fn json(&self) -> Value {
        let mean_ms = if self.requests == 0 {
            0.0
        } else {
            self.duration_us as f64 / self.requests as f64 / 1000.0
        };
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
            "mean_duration_ms": mean_ms,
        })
    }
}

#[derive(Debug, Default)]
struct Slot {
    /// The Unix minute counted here; `None` for a slot never used.
    minute: Option<u64>,
    series: HashMap<SeriesKey, Counts>,
}

/// The store.
#[derive(Debug)]
pub struct Window {
    interner: Interner,
    slots: Vec<Slot>,
    /// Entries over all slots.
    len: usize,
    /// The newest minute written; writes older than the retention before it are dropped.
    newest: u64,
    cap: usize,
}

impl Window {
    pub fn new() -> Self {
        Self::with_caps(MAX_SERIES, MAX_LABEL_VALUES)
    }

    pub fn with_caps(series: usize, labels: usize) -> Self {
        Self {
            interner: Interner::new(labels),
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            len: 0,
            newest: 0,
            cap: series,
        }
    }

    pub fn key(
        &mut self,
        route: &str,
        api: &str,
        consumer: &str,
        class: super::labels::StatusClass,
    ) -> SeriesKey {
        SeriesKey {
            route: self.interner.intern(route),
            api: self.interner.intern(api),
            consumer: self.interner.intern(consumer),
            class,
        }
    }

    pub fn labels(&self, key: SeriesKey) -> ResolvedLabels {
        ResolvedLabels::from((key, &self.interner))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Counts `r` in the minute of `now` under `key` (or `other` past the cap).
    pub fn add(&mut self, now: SystemTime, key: SeriesKey, r: &RequestRecord<'_>) {
        let minute = unix_secs(now) / 60;
        if minute + SLOTS <= self.newest {
            return;
        }
        self.newest = self.newest.max(minute);
        let Some(slot) = usize::try_from(minute % SLOTS)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
        else {
            return;
        };
        if slot.minute != Some(minute) {
            self.len -= slot.series.len();
            // A new map, not `clear`: a busy minute's capacity is given back.
            slot.series = HashMap::new();
            slot.minute = Some(minute);
        }
        let key = if slot.series.contains_key(&key) || self.len < self.cap {
            key
        } else {
            SeriesKey {
                route: 0,
                api: 0,
                consumer: 0,
                class: key.class,
            }
        };
        let counts = slot.series.entry(key).or_insert_with(|| {
            self.len += 1;
            Counts::default()
        });
        counts.add(&Counts {
            requests: 1,
            errors: u64::from(r.error.is_some()),
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            duration_us: u64::try_from(r.duration.as_micros()).unwrap_or(u64::MAX),
        });
    }

    /// The counts of the minutes in [minute of `since`, `until`) within the retention
    /// before `now`, as JSON.
    pub fn query(&self, since: SystemTime, until: SystemTime, now: SystemTime) -> Value {
        let now_min = unix_secs(now) / 60;
        let first = (unix_secs(since) / 60).max((now_min + 1).saturating_sub(SLOTS));
        let until_secs = unix_secs(until);
        let mut totals = Counts::default();
        let mut dims: [BTreeMap<String, Counts>; 4] = Default::default();
        let mut series: HashMap<SeriesKey, Counts> = HashMap::new();
        let mut timeline: BTreeMap<u64, Counts> = BTreeMap::new();
        for slot in &self.slots {
            let Some(minute) = slot.minute else { continue };
            if minute < first || minute > now_min || minute.saturating_mul(60) >= until_secs {
                continue;
            }
            let minute_total = timeline.entry(minute).or_default();
            for (key, counts) in &slot.series {
                totals.add(counts);
                minute_total.add(counts);
                series.entry(*key).or_default().add(counts);
                let l = self.labels(*key);
                for (dim, name) in
                    dims.iter_mut()
                        .zip([l.route, l.api, l.consumer, l.status_class.to_string()])
                {
                    dim.entry(name).or_default().add(counts);
                }
            }
        }
        let by = |m: &BTreeMap<String, Counts>| {
            Value::Object(
                m.iter()
                    .map(|(k, c)| (k.clone(), c.json()))
                    .collect::<Map<_, _>>(),
            )
        };
        let mut series: Vec<(ResolvedLabels, Counts)> = series
            .into_iter()
            .map(|(k, c)| (self.labels(k), c))
            .collect();
        series.sort_by(|a, b| {
            (&a.0.route, &a.0.api, &a.0.consumer, a.0.status_class).cmp(&(
                &b.0.route,
                &b.0.api,
                &b.0.consumer,
                b.0.status_class,
            ))
        });
        let series: Vec<Value> = series
            .into_iter()
            .map(|(l, c)| {
                let mut v = c.json();
                if let Value::Object(o) = &mut v {
                    o.insert("route".into(), json!(l.route));
                    o.insert("api".into(), json!(l.api));
                    o.insert("consumer".into(), json!(l.consumer));
                    o.insert("status_class".into(), json!(l.status_class));
                }
                v
            })
            .collect();
        let timeline: Vec<Value> = timeline
            .iter()
            .map(|(m, c)| {
                json!({
                    "minute": format_rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(m * 60)),
                    "requests": c.requests,
                    "errors": c.errors,
                })
            })
            .collect();
        let [by_route, by_api, by_consumer, by_class] = &dims;
        json!({
            "since": format_rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(first * 60)),
            "until": format_rfc3339(until),
            "bucket_seconds": BUCKET.as_secs(),
            "totals": totals.json(),
            "by_route": by(by_route),
            "by_api": by(by_api),
            "by_consumer": by(by_consumer),
            "by_status_class": by(by_class),
            "series": series,
            "timeline": timeline,
        })
    }
}
