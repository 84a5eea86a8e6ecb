//! The W3C `traceparent` header (<https://www.w3.org/TR/trace-context/#traceparent-header>).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `00-<trace-id>-<parent-id>-<flags>`: the trace a tunnel belongs to and the span that
/// opened it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: u128,
    parent_id: u64,
    flags: u8,
}

/// Why a `traceparent` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent {value:?}: {reason}")]
pub struct TraceParentError {
    value: String,
    reason: &'static str,
}

impl TraceParent {
    /// A new trace, not sampled: this proxy records nothing itself, and a sampling decision
    /// is the application's to make.
    pub fn generate() -> Self {
        let (a, b, c) = (random_u64(), random_u64(), random_u64());
        // All-zero IDs are invalid; the odds are nil, but the fix costs nothing.
        let trace_id = (u128::from(a) << 64 | u128::from(b)).max(1);
        Self {
            trace_id,
            parent_id: c.max(1),
            flags: 0,
        }
    }

    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }

    pub fn parent_id(&self) -> u64 {
        self.parent_id
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Trace IDs must be unique, not secret. std's `RandomState` is seeded from the OS per process
/// and differs per instance; hashing a counter and the clock through it needs no extra crate.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.finish()
}

impl FromStr for TraceParent {
    type Err = TraceParentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| TraceParentError {
            value: s.to_owned(),
            reason,
        };
        let parts: Vec<&str> = s.split('-').collect();
        let [version, trace, parent, flags] = parts.as_slice() else {
            return Err(err("expected 4 fields separated by '-'"));
        };
        let hex = |field: &str, len: usize| {
            field.len() == len
                && field
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !hex(version, 2) || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2) {
            return Err(err(
                "fields must be lowercase hex of 2, 32, 16 and 2 digits",
            ));
        }
        // Version 00 is the only one defined; "ff" is forbidden.
        if *version != "00" {
            return Err(err("only version 00 is supported"));
        }
        let trace_id = u128::from_str_radix(trace, 16).map_err(|_| err("bad trace-id"))?;
        let parent_id = u64::from_str_radix(parent, 16).map_err(|_| err("bad parent-id"))?;
        let flags = u8::from_str_radix(flags, 16).map_err(|_| err("bad trace-flags"))?;
        if trace_id == 0 || parent_id == 0 {
            return Err(err("all-zero trace-id or parent-id"));
        }
        Ok(Self {
            trace_id,
            parent_id,
            flags,
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp: TraceParent = s.parse().unwrap();
        assert!(tp.sampled());
        assert_eq!(tp.parent_id(), 0x00f0_67aa_0ba9_02b7);
        assert_eq!(tp.to_string(), s);
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(bad.parse::<TraceParent>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = TraceParent::generate();
        let b = TraceParent::generate();
        assert_ne!(a.trace_id(), b.trace_id());
        assert_eq!(a.to_string().parse::<TraceParent>().unwrap(), a);
    }
}
