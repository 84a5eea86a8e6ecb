//! Service VIPs in the kernel, for traffic the agent does not proxy (pods that are not
//! enrolled, workloads marked `protocol: TCP`): the service connect and getpeername programs
//! (`weft-ebpf/src/service.rs`) attached at `--service-cgroup`, and the maps they read kept in
//! step with the control plane.
//!
//! For every (VIP, port) the maps hold exactly the endpoints
//! [`ServiceIndex::endpoints`] gives a client on this node (the one place that says which
//! endpoints a VIP has), recomputed on every service or workload update and applied as a diff.
//! A (VIP, port) whose endpoints change has its new slots written before its count changes,
//! and slots beyond the new count are deleted only after, so a connection never finds a VIP
//! with endpoints at zero, or a slot below the count empty.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    net::SocketAddr,
    os::fd::AsFd,
    path::Path,
    sync::{
        Arc,
        mpsc::{Receiver, SyncSender},
    },
};

use arc_swap::ArcSwap;
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, MapError},
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, cgroup_sock::CgroupSockLink,
        cgroup_sock_addr::CgroupSockAddrLink,
    },
};
use prometheus_client::metrics::counter::Counter;
use weft_ebpf_common::{
    Backend, BackendKey, INLINE_BACKENDS, MAX_BACKENDS_PER_PORT, ServiceKey, ServiceValue,
    ip_to_words, maps, programs,
};
use weft_mesh::{
    service::{Client, ServiceIndex},
    workload::{Locality, WorkloadStore},
};

use crate::capture::{Capture, CaptureError};

/// The service programs, in attach order.
const PROGRAMS: [&str; 4] = [
    programs::SERVICE_CONNECT4,
    programs::SERVICE_CONNECT6,
    programs::SERVICE_GETPEERNAME4,
    programs::SERVICE_GETPEERNAME6,
];

/// The links attaching the service programs to the service cgroup; dropping it detaches them.
pub struct ServiceLinks {
    _links: Vec<CgroupSockAddrLink>,
    _release: CgroupSockLink,
}

/// A map operation that failed while applying a sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("writing {map} for {what}: {source} (is the map full?)")]
    Write {
        map: &'static str,
        what: String,
        #[source]
        source: Box<MapError>,
    },
    #[error("deleting from {map} for {what}: {source}")]
    Delete {
        map: &'static str,
        what: String,
        #[source]
        source: Box<MapError>,
    },
    #[error("no free id for {what}: every id is in use")]
    NoId { what: String },
}

/// Loads the service programs, attaches them to `cgroup` (the cgroup holding every pod of the
/// node, enrolled or not) and takes their maps.
///
/// The links are multi-attach (a bpf_link on a cgroup always is): each enrolled pod's own
/// connect programs, attached to the pod's cgroup below, run first and send its connections
/// to the agent on 127.0.0.1:15001, which the service programs then pass (loopback).
pub fn attach(
    capture: &Capture,
    cgroup: &Path,
) -> Result<(ServiceMaps, ServiceLinks), CaptureError> {
    let path = cgroup.display().to_string();
    let dir = File::open(cgroup).map_err(|source| CaptureError::Cgroup {
        path: path.clone(),
        source,
    })?;
    let mut ebpf = capture.ebpf();
    let mut links = Vec::with_capacity(PROGRAMS.len());
    for name in PROGRAMS {
        let prog = sock_addr(&mut ebpf, name)?;
        prog.load()
            .map_err(|source| CaptureError::Program { name, source })?;
        let link = prog
            .attach(dir.as_fd(), CgroupAttachMode::Single)
            .and_then(|id| prog.take_link(id))
            .map_err(|source| CaptureError::Attach {
                name,
                path: path.clone(),
                source,
            })?;
        links.push(link);
    }
    // The release program keeps SERVICE_PEERS to live sockets.
    let name = programs::SERVICE_RELEASE;
    let release: &mut CgroupSock = ebpf
        .program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(CaptureError::Missing {
            what: "program",
            name,
        })?;
    release
        .load()
        .map_err(|source| CaptureError::Program { name, source })?;
    let release_link = release
        .attach(dir.as_fd(), CgroupAttachMode::Single)
        .and_then(|id| release.take_link(id))
        .map_err(|source| CaptureError::Attach {
            name,
            path: path.clone(),
            source,
        })?;
    let services = take_hash(&mut ebpf, maps::SERVICES)?;
    let backends = take_hash(&mut ebpf, maps::SERVICE_BACKENDS)?;
    Ok((
        ServiceMaps::new(services, backends),
        ServiceLinks {
            _links: links,
            _release: release_link,
        },
    ))
}

/// A service program's kernel run-time statistics: total run time and number of runs since
/// it was loaded, counted only while statistics are enabled (`aya::sys::enable_stats`, or the
/// sysctl `kernel.bpf_stats_enabled`).
pub fn program_stats(
    capture: &Capture,
    name: &'static str,
) -> Result<(std::time::Duration, u64), CaptureError> {
    let mut ebpf = capture.ebpf();
    let info = sock_addr(&mut ebpf, name)?
        .info()
        .map_err(|source| CaptureError::Program { name, source })?;
    Ok((info.run_time(), info.run_count()))
}

/// How many sockets have a VIP recorded for getpeername (`SERVICE_PEERS`): translated
/// sockets still open, since a socket's record leaves with it. Walks the map; for tests and
/// diagnostics, not for a hot path.
pub fn peer_records(capture: &Capture) -> Result<usize, CaptureError> {
    let ebpf = capture.ebpf();
    let name = maps::SERVICE_PEERS;
    let map = ebpf
        .map(name)
        .ok_or(CaptureError::Missing { what: "map", name })?;
    let peers: BpfHashMap<&MapData, u64, weft_ebpf_common::ServicePeer> =
        BpfHashMap::try_from(map).map_err(|source| CaptureError::Map { name, source })?;
    Ok(peers.keys().filter(Result::is_ok).count())
}

fn sock_addr<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, CaptureError> {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(CaptureError::Missing {
            what: "program",
            name,
        })
}

fn take_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<MapData, K, V>, CaptureError> {
    let map = ebpf
        .take_map(name)
        .ok_or(CaptureError::Missing { what: "map", name })?;
    BpfHashMap::try_from(map).map_err(|source| CaptureError::Map { name, source })
}

/// What the maps should hold: every VIP's own entry (port 0, no endpoints) and, for each of its
/// service's ports, the endpoints `Service::endpoints_of` (what `ServiceIndex::endpoints`
/// answers for that VIP and port) gives a client on `node` at the
/// locality of this node (that of any workload on it; unknown if none), at most
/// [`MAX_BACKENDS_PER_PORT`] of them.
pub fn desired(
    services: &ServiceIndex,
    workloads: &WorkloadStore,
    node: &str,
) -> BTreeMap<ServiceKey, Vec<Backend>> {
    let locality = workloads
        .iter()
        .find(|w| w.node == node)
        .map(|w| w.locality.clone())
        .unwrap_or_else(Locality::default);
    let client = Client {
        node,
        locality: &locality,
    };
    let mut out = BTreeMap::new();
    for (vip, service) in services.iter() {
        let addr = ip_to_words(*vip);
        out.insert(key(addr, 0), Vec::new());
        for port in &service.ports {
            // No endpoint: an empty list, count 0, refuses.
            let endpoints = service.endpoints_of(port, vip.is_ipv4(), workloads, &client);
            if endpoints.len() > MAX_BACKENDS_PER_PORT as usize {
                tracing::warn!(
                    service = %service.hostname(), vip = %vip, port = port.port,
                    endpoints = endpoints.len(), kept = MAX_BACKENDS_PER_PORT,
                    "more endpoints than the kernel path holds per port; using the first"
                );
            }
            let backends: Vec<Backend> = endpoints
                .iter()
                .take(MAX_BACKENDS_PER_PORT as usize)
                .map(|e| Backend {
                    addr: ip_to_words(e.addr.ip()),
                    port: e.addr.port(),
                    _pad: 0,
                })
                .collect();
            out.insert(key(addr, port.port), backends);
        }
    }
    out
}

fn key(addr: weft_ebpf_common::Ip6Words, port: u16) -> ServiceKey {
    ServiceKey {
        addr,
        port,
        _pad: 0,
    }
}

/// The service maps and what the agent last wrote to them.
pub struct ServiceMaps {
    services: BpfHashMap<MapData, ServiceKey, ServiceValue>,
    backends: BpfHashMap<MapData, BackendKey, Backend>,
    entries: HashMap<ServiceKey, Entry>,
    free_ids: Vec<u32>,
    next_id: u32,
}

/// The slots a `SERVICES` value holds itself, as a slot number.
const INLINE_SLOTS: u32 = INLINE_BACKENDS as u32;

/// One key of `SERVICES` as written.
struct Entry {
    id: u32,
    /// The slots `0..len` as written; `None` after a failed write (rewrite all next time).
    backends: Option<Vec<Backend>>,
    /// Slots `0..slots` may hold an entry (to delete on removal).
    slots: u32,
}

/// What one sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Keys written (new or changed).
    pub written: usize,
    /// Keys removed.
    pub removed: usize,
    /// Keys whose update failed; they are retried on the next sync.
    pub errors: usize,
}

impl ServiceMaps {
    pub fn new(
        services: BpfHashMap<MapData, ServiceKey, ServiceValue>,
        backends: BpfHashMap<MapData, BackendKey, Backend>,
    ) -> Self {
        ServiceMaps {
            services,
            backends,
            entries: HashMap::new(),
            free_ids: Vec::new(),
            next_id: 1,
        }
    }

    /// Makes the maps hold `want`, touching only what differs. Failures are logged and
    /// counted; the keys they concern are retried on the next sync.
    pub fn sync(&mut self, want: &BTreeMap<ServiceKey, Vec<Backend>>) -> SyncReport {
        let mut report = SyncReport::default();
        for (key, backends) in want {
            let unchanged = self
                .entries
                .get(key)
                .and_then(|e| e.backends.as_ref())
                .is_some_and(|b| b == backends);
            if unchanged {
                continue;
            }
            match self.put(*key, backends) {
                Ok(()) => report.written += 1,
                Err(err) => {
                    tracing::warn!(%err, "kernel service map not updated; retried on the next update");
                    report.errors += 1;
                }
            }
        }
        let gone: Vec<ServiceKey> = self
            .entries
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            match self.remove(key) {
                Ok(()) => report.removed += 1,
                Err(err) => {
                    tracing::warn!(%err, "kernel service entry not removed; retried on the next update");
                    report.errors += 1;
                }
            }
        }
        report
    }

    fn put(&mut self, key: ServiceKey, want: &[Backend]) -> Result<(), SyncError> {
        let what = || describe(&key);
        let (id, old, slots) = match self.entries.get_mut(&key) {
            Some(e) => (e.id, e.backends.take(), e.slots),
            None => (
                self.alloc_id()
                    .ok_or_else(|| SyncError::NoId { what: what() })?,
                None,
                0,
            ),
        };
        let count = u32::try_from(want.len()).unwrap_or(MAX_BACKENDS_PER_PORT);
        // Until this completes the entry is unknown: a failure leaves it to be rewritten whole.
        self.entries.insert(
            key,
            Entry {
                id,
                backends: None,
                slots: slots.max(count),
            },
        );
        // 1. The new slots beyond the value's own, before the count says they are there.
        for (slot, backend) in (0u32..).zip(want).skip(INLINE_BACKENDS) {
            if old.as_ref().and_then(|o| o.get(slot as usize)) == Some(backend) {
                continue;
            }
            self.backends
                .insert(BackendKey { service: id, slot }, *backend, 0)
                .map_err(|source| SyncError::Write {
                    map: maps::SERVICE_BACKENDS,
                    what: what(),
                    source: Box::new(source),
                })?;
        }
        // 2. The count and the first endpoints (one atomic replacement of the value).
        let head = |b: &[Backend]| b.iter().take(INLINE_BACKENDS).copied().collect::<Vec<_>>();
        let value_changed = old
            .as_ref()
            .is_none_or(|o| o.len() != want.len() || head(o) != head(want));
        if value_changed {
            let mut inline = [Backend::default(); INLINE_BACKENDS];
            for (slot, backend) in inline.iter_mut().zip(want) {
                *slot = *backend;
            }
            self.services
                .insert(key, ServiceValue { id, count, inline }, 0)
                .map_err(|source| SyncError::Write {
                    map: maps::SERVICES,
                    what: what(),
                    source: Box::new(source),
                })?;
        }
        // 3. Slots beyond the new count, now unreachable (the value's own went with it).
        for slot in count.max(INLINE_SLOTS)..slots {
            self.delete_backend(id, slot, &what)?;
        }
        self.entries.insert(
            key,
            Entry {
                id,
                backends: Some(want.to_vec()),
                slots: count,
            },
        );
        Ok(())
    }

    fn remove(&mut self, key: ServiceKey) -> Result<(), SyncError> {
        let what = || describe(&key);
        let Some((id, slots)) = self.entries.get(&key).map(|e| (e.id, e.slots)) else {
            return Ok(());
        };
        // The key first, so that no connection picks a slot being deleted.
        match self.services.remove(&key) {
            Err(err) if !not_found(&err) => {
                return Err(SyncError::Delete {
                    map: maps::SERVICES,
                    what: what(),
                    source: Box::new(err),
                });
            }
            _ => {}
        }
        for slot in INLINE_SLOTS..slots {
            self.delete_backend(id, slot, &what)?;
        }
        self.entries.remove(&key);
        self.free_ids.push(id);
        Ok(())
    }

    fn delete_backend(
        &mut self,
        id: u32,
        slot: u32,
        what: &dyn Fn() -> String,
    ) -> Result<(), SyncError> {
        match self.backends.remove(&BackendKey { service: id, slot }) {
            Err(err) if !not_found(&err) => Err(SyncError::Delete {
                map: maps::SERVICE_BACKENDS,
                what: what(),
                source: Box::new(err),
            }),
            _ => Ok(()),
        }
    }

    fn alloc_id(&mut self) -> Option<u32> {
        if let Some(id) = self.free_ids.pop() {
            return Some(id);
        }
        let id = self.next_id;
        self.next_id = id.checked_add(1)?;
        Some(id)
    }

    /// Keys currently written.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn not_found(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn describe(key: &ServiceKey) -> String {
    let ip = weft_ebpf_common::words_to_ip6(&key.addr);
    let ip = std::net::IpAddr::V6(ip).to_canonical();
    if key.port == 0 {
        format!("VIP {ip}")
    } else {
        SocketAddr::new(ip, key.port).to_string()
    }
}

/// Tells the sync thread that services or workloads changed. Cheap and non-blocking: a sync
/// already pending covers the change, since each sync reads the latest state.
#[derive(Clone, Default)]
pub struct SyncTrigger(Option<SyncSender<()>>);

impl SyncTrigger {
    /// A trigger and the receiving end for [`spawn_sync`].
    pub fn new() -> (Self, Receiver<()>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        (SyncTrigger(Some(tx)), rx)
    }

    pub fn poke(&self) {
        if let Some(tx) = &self.0 {
            // Full: a sync is already due, and it reads the latest state. Disconnected: the
            // sync thread is gone, and there is nothing to poke.
            let _ = tx.try_send(());
        }
    }
}

/// Runs the sync on a thread of its own (each sync is a few system calls per changed key, up
/// to tens of thousands on the first), once at start and then after every poke, until every
/// [`SyncTrigger`] is gone.
pub fn spawn_sync(
    mut maps: ServiceMaps,
    pokes: Receiver<()>,
    services: Arc<ArcSwap<ServiceIndex>>,
    workloads: Arc<ArcSwap<WorkloadStore>>,
    node: String,
    errors: Counter,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("weft-service-sync".into())
        .spawn(move || {
            loop {
                let want = desired(&services.load(), &workloads.load(), &node);
                let report = maps.sync(&want);
                errors.inc_by(report.errors as u64);
                if report.written + report.removed + report.errors > 0 {
                    tracing::info!(
                        keys = maps.len(),
                        written = report.written,
                        removed = report.removed,
                        errors = report.errors,
                        "kernel service maps updated"
                    );
                }
                if pokes.recv().is_err() {
                    return;
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use weft_mesh::{
        service::{Service, ServicePort, TargetPort, TrafficDistribution},
        testing::workload,
        workload::{Workload, WorkloadUid},
    };

    use super::*;

    const BPF_F_NO_PREALLOC: u32 = 1;

    fn maps() -> ServiceMaps {
        let services = BpfHashMap::create(64, BPF_F_NO_PREALLOC)
            .expect("creating a BPF hash map needs CAP_BPF (run the tests as root)");
        let backends = BpfHashMap::create(256, BPF_F_NO_PREALLOC).unwrap();
        ServiceMaps::new(services, backends)
    }

    fn web(vips: &[&str], endpoints: &[&str], distribution: TrafficDistribution) -> Service {
        Service {
            name: "web".into(),
            namespace: "default".into(),
            vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
            ports: vec![ServicePort {
                port: 80,
                target: TargetPort::Named("http".into()),
            }],
            endpoints: endpoints.iter().map(|e| WorkloadUid((*e).into())).collect(),
            traffic_distribution: distribution,
        }
    }

    fn pod(uid: &str, node: &str, zone: &str, ips: &[&str], ready: bool) -> Workload {
        let mut w = workload(uid, "default", "default", uid, ips[0]);
        w.ips = ips.iter().map(|i| i.parse().unwrap()).collect();
        w.node = node.into();
        w.ready = ready;
        w.ports.insert("http".into(), 8080);
        w.locality = Locality {
            region: "eu".into(),
            zone: zone.into(),
        };
        w
    }

    fn at(want: &BTreeMap<ServiceKey, Vec<Backend>>, ip: &str, port: u16) -> Vec<SocketAddr> {
        let k = key(ip_to_words(ip.parse::<IpAddr>().unwrap()), port);
        want.get(&k)
            .unwrap_or_else(|| panic!("no key for {ip}:{port}"))
            .iter()
            .map(|b| {
                let ip = IpAddr::V6(weft_ebpf_common::words_to_ip6(&b.addr)).to_canonical();
                SocketAddr::new(ip, b.port)
            })
            .collect()
    }

    /// Reads the kernel map back: (VIP, port) -> count and the endpoints of slots 0..count.
    fn kernel(m: &ServiceMaps, ip: &str, port: u16) -> Option<Vec<(IpAddr, u16)>> {
        let k = key(ip_to_words(ip.parse::<IpAddr>().unwrap()), port);
        let v = m.services.get(&k, 0).ok()?;
        Some(
            (0..v.count)
                .map(|slot| {
                    let b = v.inline.get(slot as usize).copied().unwrap_or_else(|| {
                        m.backends
                            .get(
                                &BackendKey {
                                    service: v.id,
                                    slot,
                                },
                                0,
                            )
                            .unwrap_or_else(|e| panic!("slot {slot} of {ip}:{port} missing: {e}"))
                    });
                    let ip = IpAddr::V6(weft_ebpf_common::words_to_ip6(&b.addr)).to_canonical();
                    (ip, b.port)
                })
                .collect(),
        )
    }

    #[test]
    fn each_vip_gets_its_family_ready_endpoints_on_the_target_port() {
        let index = ServiceIndex::from_arcs([Arc::new(web(
            &["10.96.0.10", "fd00:96::10"],
            &["a", "b", "c"],
            TrafficDistribution::Any,
        ))]);
        let store = WorkloadStore::new(vec![
            pod("a", "node-1", "z1", &["10.78.1.11", "fd78:1::11"], true),
            pod("b", "node-2", "z2", &["10.78.2.11"], true),
            pod("c", "node-2", "z2", &["10.78.2.12", "fd78:2::12"], false),
        ]);
        let want = desired(&index, &store, "node-1");
        assert_eq!(
            at(&want, "10.96.0.10", 80),
            [
                "10.78.1.11:8080".parse().unwrap(),
                "10.78.2.11:8080".parse().unwrap()
            ]
        );
        assert_eq!(
            at(&want, "fd00:96::10", 80),
            ["[fd78:1::11]:8080".parse().unwrap()]
        );
        // Each VIP is marked as one (port 0), so an undeclared port is refused.
        assert!(at(&want, "10.96.0.10", 0).is_empty());
        assert_eq!(want.len(), 4);
    }

    #[test]
    fn prefer_close_keeps_the_closest_tier_seen_from_this_node() {
        let index = ServiceIndex::from_arcs([Arc::new(web(
            &["10.96.0.10"],
            &["far", "zone"],
            TrafficDistribution::PreferClose,
        ))]);
        let store = WorkloadStore::new(vec![
            pod("far", "node-3", "z9", &["10.78.3.11"], true),
            pod("zone", "node-2", "z1", &["10.78.2.11"], true),
            // A workload on node-1 (not an endpoint) tells node-1's locality.
            pod("client", "node-1", "z1", &["10.78.1.11"], true),
        ]);
        assert_eq!(
            at(&desired(&index, &store, "node-1"), "10.96.0.10", 80),
            ["10.78.2.11:8080".parse().unwrap()]
        );
        // A node nothing is known about has no locality: any endpoint.
        assert_eq!(
            at(&desired(&index, &store, "node-7"), "10.96.0.10", 80).len(),
            2
        );
    }

    /// Needs CAP_BPF (root): the maps are the kernel's.
    #[test]
    fn sync_writes_diffs_and_removes_what_is_gone() {
        let mut m = maps();
        let store = |ready_b: bool| {
            WorkloadStore::new(vec![
                pod("a", "node-1", "z1", &["10.78.1.11"], true),
                pod("b", "node-2", "z2", &["10.78.2.11"], ready_b),
            ])
        };
        let index = ServiceIndex::from_arcs([Arc::new(web(
            &["10.96.0.10"],
            &["a", "b"],
            TrafficDistribution::Any,
        ))]);
        let first = m.sync(&desired(&index, &store(true), "node-1"));
        assert_eq!(
            first,
            SyncReport {
                written: 2,
                removed: 0,
                errors: 0
            }
        );
        let both = kernel(&m, "10.96.0.10", 80).unwrap();
        assert_eq!(both.len(), 2, "{both:?}");
        assert_eq!(kernel(&m, "10.96.0.10", 0), Some(vec![]));

        // Nothing changed: nothing written.
        assert_eq!(
            m.sync(&desired(&index, &store(true), "node-1")),
            SyncReport::default()
        );

        // b not ready: one slot left, the other deleted.
        let report = m.sync(&desired(&index, &store(false), "node-1"));
        assert_eq!(report.written, 1);
        assert_eq!(
            kernel(&m, "10.96.0.10", 80).unwrap(),
            [("10.78.1.11".parse().unwrap(), 8080)]
        );

        // No endpoint at all: the key stays, with count 0 (refused).
        let empty = WorkloadStore::default();
        m.sync(&desired(&index, &empty, "node-1"));
        assert_eq!(kernel(&m, "10.96.0.10", 80), Some(vec![]));

        // The service gone: every key and slot removed.
        let report = m.sync(&desired(&ServiceIndex::default(), &store(true), "node-1"));
        assert_eq!(report.removed, 2);
        assert!(kernel(&m, "10.96.0.10", 80).is_none());
        assert!(kernel(&m, "10.96.0.10", 0).is_none());
        assert!(m.is_empty());
        assert!(m.backends.keys().next().is_none(), "no slot left behind");
    }

    /// Needs CAP_BPF (root). The first endpoints live in the `SERVICES` value; the others in
    /// `SERVICE_BACKENDS`, deleted when the service shrinks back.
    #[test]
    fn endpoints_beyond_the_value_go_to_the_backends_map_and_leave_it() {
        let mut m = maps();
        let uids: Vec<String> = (0..6).map(|i| format!("p{i}")).collect();
        let ips: Vec<String> = (0..6).map(|i| format!("10.78.1.{}", 20 + i)).collect();
        let pods = |n: usize| {
            WorkloadStore::new(
                (0..n)
                    .map(|i| pod(&uids[i], "node-1", "z1", &[ips[i].as_str()], true))
                    .collect(),
            )
        };
        let refs: Vec<&str> = uids.iter().map(String::as_str).collect();
        let index = ServiceIndex::from_arcs([Arc::new(web(
            &["10.96.0.12"],
            &refs,
            TrafficDistribution::Any,
        ))]);
        let in_backends = |m: &ServiceMaps| m.backends.keys().filter(Result::is_ok).count();

        m.sync(&desired(&index, &pods(6), "node-1"));
        let mut got = kernel(&m, "10.96.0.12", 80).unwrap();
        got.sort();
        let mut want: Vec<(IpAddr, u16)> =
            ips.iter().map(|ip| (ip.parse().unwrap(), 8080)).collect();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(in_backends(&m), 6 - INLINE_BACKENDS);

        m.sync(&desired(&index, &pods(5), "node-1"));
        assert_eq!(kernel(&m, "10.96.0.12", 80).unwrap().len(), 5);
        assert_eq!(in_backends(&m), 5 - INLINE_BACKENDS);

        m.sync(&desired(&index, &pods(2), "node-1"));
        assert_eq!(kernel(&m, "10.96.0.12", 80).unwrap().len(), 2);
        assert_eq!(in_backends(&m), 0, "all in the value");
    }

    /// Needs CAP_BPF (root). A full map fails the keys that do not fit, counted, and the
    /// others still go in; they are retried on the next sync.
    #[test]
    fn a_full_map_is_an_error_per_key_not_a_panic() {
        let services = BpfHashMap::create(2, BPF_F_NO_PREALLOC).unwrap();
        let backends = BpfHashMap::create(256, BPF_F_NO_PREALLOC).unwrap();
        let mut m = ServiceMaps::new(services, backends);
        let index = ServiceIndex::from_arcs([Arc::new(web(
            &["10.96.0.10", "10.96.0.11"],
            &["a"],
            TrafficDistribution::Any,
        ))]);
        let store = WorkloadStore::new(vec![pod("a", "node-1", "z1", &["10.78.1.11"], true)]);
        let report = m.sync(&desired(&index, &store, "node-1"));
        assert_eq!(report.written, 2);
        assert_eq!(report.errors, 2);
        // Retried, still failing, still not panicking.
        assert_eq!(m.sync(&desired(&index, &store, "node-1")).errors, 2);
    }
}
