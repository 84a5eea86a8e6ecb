//! Live inbound connections and what authorized them, so that policy is evaluated again
//! when it changes, as ztunnel's connection manager does: on every new policy or workload
//! version, and when a peer's certificate expires, each connection is re-checked with the
//! same call that admitted it ([`PolicyIndex::admit`]) and closed if it is no longer allowed,
//! counted in `weft_connections_closed_by_policy_total{reason}`.
//!
//! A connection is closed by shutting down its socket through a duplicate of the data path's
//! descriptor: the copy loop sees end-of-stream and write errors and ends as for any close,
//! so the data path needs no extra select and keeps its own accounting.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Shutdown},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::{net::TcpStream, sync::Notify};
use tracing::{debug, info};
use weft_link::identity::SpiffeId;
use weft_mesh::policy::{DenialKind, PolicyIndex, Source};

use crate::{
    drain::DrainWatcher,
    state::{WorkloadStore, WorkloadUid},
};

/// With no certificate expiring sooner, how long the re-check task sleeps between looks at
/// the clock; changes wake it at once, so this only bounds how late an expiry is noticed if
/// the system clock jumps.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// What admitted a connection: the inputs of [`PolicyIndex::admit`], kept to ask again.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// The identity the peer proved (HBONE), or its workload's identity (same node); `None`
    /// for plaintext.
    pub identity: Option<SpiffeId>,
    /// The identity is the source workload's own, not proved by a certificate (same node):
    /// each check derives it again from the workload at `src_ip`, so a source whose workload
    /// entry is gone has none, and is held to STRICT.
    pub identity_of_workload: bool,
    /// The source address, to look its workload up again.
    pub src_ip: IpAddr,
    /// The destination workload.
    pub dst: WorkloadUid,
    pub port: u16,
    /// When the peer's certificate stops being valid; `None` when no certificate was shown.
    pub expires: Option<SystemTime>,
}

/// Why a live connection was closed: the bounded label set of the metric.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    pub reason: &'static str,
}

impl ClosedLabels {
    const WORKLOAD_REMOVED: ClosedLabels = ClosedLabels {
        reason: "workload_removed",
    };
    const CERTIFICATE_EXPIRED: ClosedLabels = ClosedLabels {
        reason: "certificate_expired",
    };

    fn denied(kind: DenialKind) -> ClosedLabels {
        ClosedLabels {
            reason: match kind {
                DenialKind::Authorization => "authorization_policy",
                DenialKind::PeerAuthStrict => "peer_authentication_strict",
                DenialKind::SourceMismatch => "source_identity_mismatch",
            },
        }
    }
}

struct Live {
    authorized: Authorized,
    /// Duplicates of the connection's sockets, to shut them down from here.
    sockets: Vec<socket2::Socket>,
}

/// Every live inbound connection of this node's pods.
pub struct ConnectionRegistry {
    workloads: Arc<ArcSwap<WorkloadStore>>,
    policies: Arc<ArcSwap<PolicyIndex>>,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Live>>,
    changed: Notify,
    closed: Family<ClosedLabels, Counter>,
}

/// Keeps a connection in the registry; dropping it (when the connection ends) removes it.
pub struct Registration {
    id: u64,
    registry: Arc<ConnectionRegistry>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.live.lock().remove(&self.id);
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registration({})", self.id)
    }
}

impl ConnectionRegistry {
    pub fn new(
        workloads: Arc<ArcSwap<WorkloadStore>>,
        policies: Arc<ArcSwap<PolicyIndex>>,
    ) -> Self {
        ConnectionRegistry {
            workloads,
            policies,
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            closed: Family::default(),
        }
    }

    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.sub_registry_with_prefix("weft").register(
            "connections_closed_by_policy",
            "Live connections closed because policy, a workload or a certificate no longer \
             allows them",
            self.closed.clone(),
        );
    }

    /// Records an admitted connection over `sockets`, then checks it once more against the
    /// current policy: a change that landed between its admission and this call was re-checked
    /// without it, so this check is what keeps that window closed.
    pub fn register(
        self: &Arc<Self>,
        authorized: Authorized,
        sockets: &[&TcpStream],
    ) -> io::Result<Registration> {
        let sockets = sockets
            .iter()
            .map(|s| socket2::SockRef::from(*s).try_clone())
            .collect::<io::Result<Vec<_>>>()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.live.lock().insert(
            id,
            Live {
                authorized,
                sockets,
            },
        );
        let registration = Registration {
            id,
            registry: self.clone(),
        };
        self.recheck_one(
            id,
            &self.workloads.load(),
            &self.policies.load(),
            SystemTime::now(),
        );
        Ok(registration)
    }

    /// Policy or workloads changed: re-check every live connection soon.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// How many connections are registered.
    #[cfg(test)]
    pub fn live_count(&self) -> usize {
        self.live.lock().len()
    }

    /// Re-checks every live connection whenever something changed or a peer certificate
    /// expires, until the drain starts.
    pub async fn run(self: Arc<Self>, mut drain: DrainWatcher) {
        loop {
            let wait = self
                .next_expiry()
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .map_or(IDLE_RECHECK, |d| d.min(IDLE_RECHECK));
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = drain.signalled() => return,
            }
            let closed = self.recheck(SystemTime::now());
            if closed > 0 {
                info!(closed, "live connections closed: no longer allowed");
            }
        }
    }

    fn next_expiry(&self) -> Option<SystemTime> {
        self.live
            .lock()
            .values()
            .filter_map(|l| l.authorized.expires)
            .min()
    }

    /// Re-checks every live connection at `now` against one snapshot of workloads and
    /// policy; returns how many were closed.
    pub fn recheck(&self, now: SystemTime) -> usize {
        let workloads = self.workloads.load();
        let policies = self.policies.load();
        let ids: Vec<u64> = self.live.lock().keys().copied().collect();
        ids.into_iter()
            .filter(|id| self.recheck_one(*id, &workloads, &policies, now))
            .count()
    }

    /// Closes connection `id` if it is no longer allowed; returns whether it did.
    fn recheck_one(
        &self,
        id: u64,
        workloads: &WorkloadStore,
        policies: &PolicyIndex,
        now: SystemTime,
    ) -> bool {
        let mut live = self.live.lock();
        let Some(entry) = live.get(&id) else {
            return false;
        };
        let Some(why) = verdict(&entry.authorized, workloads, policies, now) else {
            return false;
        };
        // Removed so that it is closed and counted once; the registration's drop finds
        // nothing left to remove.
        let Some(entry) = live.remove(&id) else {
            return false;
        };
        drop(live);
        let a = &entry.authorized;
        info!(
            src.addr = %a.src_ip,
            src.identity = a.identity.as_ref().map(tracing::field::display),
            dst.workload = %a.dst,
            dst.port = a.port,
            reason = why.reason,
            "closing a live connection that is no longer allowed"
        );
        for socket in &entry.sockets {
            if let Err(err) = socket.shutdown(Shutdown::Both) {
                debug!(%err, "shutting down a revoked connection's socket");
            }
        }
        self.closed.get_or_create(&why).inc();
        true
    }
}

/// Why `a` is no longer allowed, or `None` if it still is.
fn verdict(
    a: &Authorized,
    workloads: &WorkloadStore,
    policies: &PolicyIndex,
    now: SystemTime,
) -> Option<ClosedLabels> {
    let Some(dst) = workloads.by_uid(&a.dst) else {
        return Some(ClosedLabels::WORKLOAD_REMOVED);
    };
    if a.expires.is_some_and(|at| at <= now) {
        return Some(ClosedLabels::CERTIFICATE_EXPIRED);
    }
    let src_workload = workloads.by_ip(a.src_ip).map(Arc::as_ref);
    let identity = match (&a.identity, a.identity_of_workload) {
        (Some(id), true) => src_workload.and_then(|w| w.identity(id.trust_domain())),
        (identity, _) => identity.clone(),
    };
    let source = Source {
        identity: identity.as_ref(),
        ip: a.src_ip,
        workload: src_workload,
    };
    policies
        .admit(&source, dst, a.port)
        .err()
        .map(|denial| ClosedLabels::denied(denial.kind))
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
