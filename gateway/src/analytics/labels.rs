//! Label values: the fixed ones, status classes, and the interner that bounds how many
//! distinct names the store and the metrics ever hold.

use std::collections::HashMap;
use std::sync::Arc;

/// Consumer label of a request without a credential (an allowed anonymous call).
pub const ANONYMOUS: &str = "anonymous";
/// Label of a value the configuration does not name (no route matched, no API, a consumer
/// not configured).
pub const UNKNOWN: &str = "unknown";
/// Label of every value past `MAX_LABEL_VALUES`.
pub const OTHER: &str = "other";
/// Distinct route, API and consumer names held, together. Each costs a few dozen bytes in
/// the interner; ten thousand covers large configurations while keeping the store and the
/// metric families bounded whatever reaches `record`. Names are never forgotten (they are
/// few and come from configuration), so after this many the rest count as `other` until
/// restart.
pub const MAX_LABEL_VALUES: usize = 10_000;

/// HTTP status class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatusClass {
    /// 1xx.
    Informational,
    /// 2xx.
    Success,
    /// 3xx.
    Redirection,
    /// 4xx.
    ClientError,
    /// 5xx.
    ServerError,
    /// No status was sent (0), or one outside 100-599.
    None,
}

impl StatusClass {
    /// The label value: `2xx`, ... or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Informational => "1xx",
            Self::Success => "2xx",
            Self::Redirection => "3xx",
            Self::ClientError => "4xx",
            Self::ServerError => "5xx",
            Self::None => "none",
        }
    }
}

/// The class of a status code.
pub fn status_class(status: u16) -> StatusClass {
    match status {
        100..=199 => StatusClass::Informational,
        200..=299 => StatusClass::Success,
        300..=399 => StatusClass::Redirection,
        400..=499 => StatusClass::ClientError,
        500..=599 => StatusClass::ServerError,
        _ => StatusClass::None,
    }
}

/// A series: route, API, consumer (interned ids) and status class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub route: u32,
    pub api: u32,
    pub consumer: u32,
    pub class: StatusClass,
}

/// Names to small ids, at most `MAX_LABEL_VALUES` (+ `other`).
#[derive(Debug)]
pub struct Interner {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
    cap: usize,
}

/// The id of `other`.
const OTHER_ID: u32 = 0;

impl Interner {
    pub fn new(cap: usize) -> Self {
        let other: Arc<str> = Arc::from(OTHER);
        Self {
            ids: HashMap::from([(other.clone(), OTHER_ID)]),
            names: vec![other],
            cap,
        }
    }

    /// The id of `name`, added if there is room, `other` if not.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        if self.names.len() > self.cap {
            return OTHER_ID;
        }
        let Ok(id) = u32::try_from(self.names.len()) else {
            return OTHER_ID;
        };
        let name: Arc<str> = Arc::from(name);
        self.ids.insert(name.clone(), id);
        self.names.push(name);
        id
    }

    /// The name of an id (`other` for one never given out).
    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or(OTHER, |n| n)
    }
}
