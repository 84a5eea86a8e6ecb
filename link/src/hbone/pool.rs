//! The client's pool of HBONE connections.
//!
//! Connections are keyed by (source identity, expected destination identities, destination
//! address): a connection authenticated one pair of identities, so it is shared only by
//! tunnels between the same pair. A connection takes new tunnels while it has stream slots
//! (the lower of our limit and the server's SETTINGS_MAX_CONCURRENT_STREAMS); when all are
//! full, the caller dials another.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use h2::client::SendRequest;
use parking_lot::Mutex;

use crate::identity::SpiffeId;

/// How often, at most, a checkout looks through the whole pool for dead and idle connections.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub(crate) src: SpiffeId,
    /// Sorted and deduplicated, so the same set always makes the same key.
    pub(crate) expected: Vec<SpiffeId>,
    pub(crate) dst: SocketAddr,
    /// The end of validity of the client certificate the connection was made with: after a
    /// rotation, new tunnels go on new connections that present the new certificate, while
    /// tunnels on the old ones run on until they close.
    pub(crate) cert_not_after: SystemTime,
}

impl PoolKey {
    pub(crate) fn new(
        src: SpiffeId,
        mut expected: Vec<SpiffeId>,
        dst: SocketAddr,
        cert_not_after: SystemTime,
    ) -> Self {
        expected.sort();
        expected.dedup();
        Self {
            src,
            expected,
            dst,
            cert_not_after,
        }
    }
}

// === impl Conn ===

/// One pooled HTTP/2 connection.
pub(crate) struct Conn {
    pub(crate) id: u64,
    send: SendRequest<Bytes>,
    /// Tunnels open on this connection.
    active: AtomicUsize,
    /// Our own cap on tunnels per connection.
    max_streams: usize,
    /// Set by the connection's driver task when the connection ends.
    closed: Arc<AtomicBool>,
    /// When the last tunnel closed; `None` while tunnels are open.
    idle_since: Mutex<Option<Instant>>,
}

impl Conn {
    pub(crate) fn new(
        id: u64,
        send: SendRequest<Bytes>,
        max_streams: usize,
        closed: Arc<AtomicBool>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            send,
            active: AtomicUsize::new(0),
            max_streams,
            closed,
            idle_since: Mutex::new(Some(Instant::now())),
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Stops new tunnels from using this connection, e.g. after a request on it failed.
    pub(crate) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// A handle for one request; h2 handles are cheap clones of one connection.
    pub(crate) fn sender(&self) -> SendRequest<Bytes> {
        self.send.clone()
    }

    /// Takes a stream slot if one is free.
    pub(crate) fn try_reserve(self: &Arc<Self>) -> Option<Lease> {
        if self.is_closed() {
            return None;
        }
        // The server's limit is known here: the connection is pooled only after its SETTINGS
        // arrived (see the client's handshake).
        let limit = self.max_streams.min(self.send.current_max_send_streams());
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        *self.idle_since.lock() = None;
        Some(Lease { conn: self.clone() })
    }

    fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        self.idle_since
            .lock()
            .map(|since| now.duration_since(since))
    }
}

/// A stream slot on a pooled connection, released when the tunnel is dropped.
pub(crate) struct Lease {
    conn: Arc<Conn>,
}

impl Lease {
    pub(crate) fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.conn.idle_since.lock() = Some(Instant::now());
        }
    }
}

// === impl Slot ===

/// The connections of one key.
#[derive(Default)]
pub(crate) struct Slot {
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Held while dialling, so that tunnels opened together share one new connection instead
    /// of each dialling its own.
    pub(crate) dial: tokio::sync::Mutex<()>,
}

impl Slot {
    /// A slot on a live connection with room, dropping dead connections on the way.
    pub(crate) fn checkout(&self) -> Option<Lease> {
        let mut conns = self.conns.lock();
        conns.retain(|conn| !conn.is_closed());
        conns.iter().find_map(Conn::try_reserve)
    }

    pub(crate) fn insert(&self, conn: Arc<Conn>) {
        self.conns.lock().push(conn);
    }

    /// Drops dead connections and those idle longer than `idle_timeout`; dropping the last
    /// handle of an idle connection makes h2 close it cleanly (GOAWAY).
    fn sweep(&self, now: Instant, idle_timeout: Duration) -> usize {
        let mut conns = self.conns.lock();
        conns.retain(|conn| {
            !conn.is_closed() && conn.idle_for(now).is_none_or(|idle| idle < idle_timeout)
        });
        conns.len()
    }
}

// === impl Pool ===

pub(crate) struct Pool {
    slots: Mutex<HashMap<PoolKey, Arc<Slot>>>,
    idle_timeout: Duration,
    last_sweep: Mutex<Instant>,
}

impl Pool {
    pub(crate) fn new(idle_timeout: Duration) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            idle_timeout,
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    pub(crate) fn slot(&self, key: &PoolKey) -> Arc<Slot> {
        self.maybe_sweep();
        self.slots.lock().entry(key.clone()).or_default().clone()
    }

    /// Live connections in the pool, for tests and the admin endpoint.
    pub(crate) fn connections(&self) -> usize {
        let slots: Vec<Arc<Slot>> = self.slots.lock().values().cloned().collect();
        slots
            .iter()
            .map(|slot| slot.conns.lock().iter().filter(|c| !c.is_closed()).count())
            .sum()
    }

    fn maybe_sweep(&self) {
        let now = Instant::now();
        {
            let mut last = self.last_sweep.lock();
            if now.duration_since(*last) < SWEEP_INTERVAL {
                return;
            }
            *last = now;
        }
        self.sweep(now);
    }

    pub(crate) fn sweep(&self, now: Instant) {
        let mut slots = self.slots.lock();
        // A slot someone holds (mid-dial or mid-checkout) stays even when empty.
        slots.retain(|_, slot| {
            slot.sweep(now, self.idle_timeout) > 0 || Arc::strong_count(slot) > 1
        });
    }
}
