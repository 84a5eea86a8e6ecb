//! Loads the kernel programs (embedded at build time), attaches them to enrolled pods'
//! cgroups and network namespaces, and answers "where was this accepted connection going?"
//! from the tuple map.

use std::{
    collections::HashMap,
    fs::File,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    os::unix::fs::MetadataExt,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, IterableMap, MapData, PerCpuArray, SockHash},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SkLookup, SockOps, cgroup_sock_addr::CgroupSockAddrLink,
        sk_lookup::SkLookupLink, sock_ops::SockOpsLink,
    },
};
use parking_lot::Mutex;
use weft_ebpf_common::{InboundKey, OrigDst, TupleKey, Verdict, maps, programs};

/// Forwards the programs' aya-log records into the agent's log (see `app`).
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// The object `build.rs` produced with aya-build.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft"));

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("loading the eBPF object failed (is the kernel 5.15 or newer?): {source}")]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error("eBPF object has no {what} named {name}; the agent binary is broken, rebuild it")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error("loading program {name} into the kernel failed: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot open pod cgroup {path}: {source} (is the pod still running?)")]
    Cgroup {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "attaching {name} to {path} failed: {source} (another program of this kind may already \
         be attached to this cgroup: is a second agent running?)"
    )]
    Attach {
        name: &'static str,
        path: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot open pod network namespace {path}: {source} (has the pod gone?)")]
    Netns {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the inbound listener for network namespace {netns} is unusable: {reason}")]
    InboundListener { netns: String, reason: String },
    #[error(
        "adding pod IP {ip} of network namespace {netns} to {map} failed: {source} (is the map \
         full, or the listener closed?)",
        map = maps::INBOUND_LISTENERS
    )]
    InboundMap {
        netns: String,
        ip: IpAddr,
        // Boxed (here and below): unboxed, these variants grow every `Result<_, CaptureError>`
        // past clippy's `result_large_err` limit (128 bytes).
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("attaching {name} to network namespace {netns} failed: {source}")]
    AttachNetns {
        name: &'static str,
        netns: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
}

/// The loaded programs and the maps the agent reads.
pub struct Capture {
    ebpf: Mutex<Ebpf>,
    orig_dst: BpfHashMap<MapData, TupleKey, OrigDst>,
    verdicts: PerCpuArray<MapData, u64>,
    inbound: Arc<InboundTable>,
}

/// The links attaching the programs to one pod's cgroup; dropping it detaches them.
pub struct PodLinks {
    _connect4: CgroupSockAddrLink,
    _connect6: CgroupSockAddrLink,
    _sockops: SockOpsLink,
    /// DNS capture of unconnected UDP (see `ebpf/src/dns.rs`).
    _dns: Vec<CgroupSockAddrLink>,
}

/// Inbound steering of one pod: sk_lookup attached to its network namespace and its IPs in
/// `INBOUND_LISTENERS`. Dropping it detaches the program, then removes the pod's entries (those
/// a later `attach_inbound` for the same IP has not taken over).
pub struct InboundLinks {
    // Field order is drop order: stop steering first, then forget the listener.
    _lookup: SkLookupLink,
    _claim: InboundClaim,
}

/// The inbound listener map and which `InboundLinks` owns each entry. A pod IP can move to a
/// new pod (or a re-enrolled one) before the old `InboundLinks` is dropped; the owner id keeps
/// that late drop from removing the new pod's entry.
struct InboundTable {
    state: Mutex<InboundState>,
    next_owner: AtomicU64,
}

struct InboundState {
    map: SockHash<MapData, InboundKey>,
    owners: HashMap<InboundKey, u64>,
}

/// Map entries held by one `InboundLinks`, removed on drop (also when attaching fails halfway).
struct InboundClaim {
    table: Arc<InboundTable>,
    owner: u64,
    keys: Vec<InboundKey>,
}

impl Capture {
    /// Loads and verifies the programs. `log_level` is aya-log's level (0 off .. 5 trace):
    /// statements above it are skipped in the kernel, so debug logging costs nothing unless on.
    pub fn load(log_level: u8) -> Result<(Self, Option<KernelLogger>), CaptureError> {
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &log_level, false)
            .load(OBJECT)
            .map_err(|source| CaptureError::Load { source })?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                tracing::warn!(%err, "eBPF log forwarding is off");
                None
            }
        };
        for name in [
            programs::CONNECT4,
            programs::CONNECT6,
            programs::DNS_SENDMSG4,
            programs::DNS_SENDMSG6,
            programs::DNS_RECVMSG4,
            programs::DNS_RECVMSG6,
        ] {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| CaptureError::Program { name, source })?;
        }
        let sockops: &mut SockOps = program(&mut ebpf, programs::SOCKOPS)?;
        sockops.load().map_err(|source| CaptureError::Program {
            name: programs::SOCKOPS,
            source,
        })?;
        let lookup: &mut SkLookup = program(&mut ebpf, programs::INBOUND_LOOKUP)?;
        lookup.load().map_err(|source| CaptureError::Program {
            name: programs::INBOUND_LOOKUP,
            source,
        })?;
        let orig_dst = take_map(&mut ebpf, maps::ORIG_DST_BY_TUPLE)?;
        let orig_dst = BpfHashMap::try_from(orig_dst).map_err(|source| CaptureError::Map {
            name: maps::ORIG_DST_BY_TUPLE,
            source,
        })?;
        let verdicts = take_map(&mut ebpf, maps::VERDICTS)?;
        let verdicts = PerCpuArray::try_from(verdicts).map_err(|source| CaptureError::Map {
            name: maps::VERDICTS,
            source,
        })?;
        let listeners = take_map(&mut ebpf, maps::INBOUND_LISTENERS)?;
        let listeners = SockHash::try_from(listeners).map_err(|source| CaptureError::Map {
            name: maps::INBOUND_LISTENERS,
            source,
        })?;
        let capture = Capture {
            ebpf: Mutex::new(ebpf),
            orig_dst,
            verdicts,
            inbound: Arc::new(InboundTable {
                state: Mutex::new(InboundState {
                    map: listeners,
                    owners: HashMap::new(),
                }),
                next_owner: AtomicU64::new(1),
            }),
        };
        Ok((capture, logger))
    }

    /// Attaches connect4, connect6 and sockops to a pod's cgroup.
    pub fn attach(&self, cgroup: &Path) -> Result<PodLinks, CaptureError> {
        let path = cgroup.display().to_string();
        let dir = File::open(cgroup).map_err(|source| CaptureError::Cgroup {
            path: path.clone(),
            source,
        })?;
        let mut ebpf = self.ebpf.lock();
        let attach_err = |name: &'static str| {
            let path = path.clone();
            move |source| CaptureError::Attach { name, path, source }
        };
        let connect4 = attach_sock_addr(&mut ebpf, programs::CONNECT4, dir.as_fd())
            .map_err(attach_err(programs::CONNECT4))?;
        let connect6 = attach_sock_addr(&mut ebpf, programs::CONNECT6, dir.as_fd())
            .map_err(attach_err(programs::CONNECT6))?;
        let sockops: &mut SockOps = program(&mut ebpf, programs::SOCKOPS)?;
        let sockops = sockops
            .attach(dir.as_fd(), CgroupAttachMode::Single)
            .and_then(|id| sockops.take_link(id))
            .map_err(attach_err(programs::SOCKOPS))?;
        let mut dns = Vec::with_capacity(4);
        for name in [
            programs::DNS_SENDMSG4,
            programs::DNS_SENDMSG6,
            programs::DNS_RECVMSG4,
            programs::DNS_RECVMSG6,
        ] {
            dns.push(attach_sock_addr(&mut ebpf, name, dir.as_fd()).map_err(attach_err(name))?);
        }
        Ok(PodLinks {
            _connect4: connect4,
            _connect6: connect6,
            _sockops: sockops,
            _dns: dns,
        })
    }

    /// Steers plaintext TCP arriving at a pod from outside to the agent's inbound listener:
    /// puts `listener` in `INBOUND_LISTENERS` under every address in `pod_ips` and attaches
    /// the sk_lookup program to the pod's network namespace at `netns` (`/run/netns/<name>`
    /// or `/proc/<pid>/ns/net`). The accepted socket's `local_addr()` is the original
    /// destination (pod IP and application port); for IPv4 clients of a dual-stack listener
    /// it is IPv4-mapped (`::ffff:a.b.c.d`), so canonicalise it.
    ///
    /// Not steered: connections from inside the pod (over its loopback device, or from the
    /// pod's own address to itself), ports 15001, 15006 and 15008, and anything that is not
    /// TCP. So the agent reaches the application on `127.0.0.1:port` (or from the pod IP to the
    /// pod IP); a connection to the pod IP with a *client's* source address (IP_TRANSPARENT,
    /// as ztunnel does) would be steered back to 15006, since sk_lookup cannot see the
    /// connecting socket or its mark.
    ///
    /// The listener rule, from `bpf_sk_lookup_assign` (net/core/filter.c): the socket must be
    /// a TCP socket in LISTEN state created *inside the pod's network namespace* (one from
    /// the node's namespace is assigned but the handshake never completes), and its family
    /// must fit the packet's: an AF_INET socket only takes IPv4 packets, an IPV6_V6ONLY socket
    /// only IPv6, a dual-stack AF_INET6 socket both. So the agent binds ONE socket,
    /// `[::]:15006` with IPV6_V6ONLY off, and passes it for all of the pod's IPs; only where
    /// the pod has no IPv6 at all (`ipv6.disable=1`) does it bind `0.0.0.0:15006` instead.
    /// The bound address itself does not matter to the lookup. All of this is checked here
    /// so that a wrong listener fails at enrolment rather than silently passing traffic.
    pub fn attach_inbound(
        &self,
        netns: &Path,
        pod_ips: &[IpAddr],
        listener: &impl AsFd,
    ) -> Result<InboundLinks, CaptureError> {
        let name = netns.display().to_string();
        let ns = File::open(netns).map_err(|source| CaptureError::Netns {
            path: name.clone(),
            source,
        })?;
        check_listener(&ns, listener.as_fd(), pod_ips).map_err(|reason| {
            CaptureError::InboundListener {
                netns: name.clone(),
                reason,
            }
        })?;
        let mut claim = InboundClaim {
            table: Arc::clone(&self.inbound),
            owner: self.inbound.next_owner.fetch_add(1, Ordering::Relaxed),
            keys: Vec::with_capacity(pod_ips.len()),
        };
        {
            let mut state = self.inbound.state.lock();
            for ip in pod_ips {
                let key = InboundKey::for_ip(ip.to_canonical());
                if claim.keys.contains(&key) {
                    continue;
                }
                state
                    .map
                    .insert(key, listener.as_fd().as_raw_fd(), 0)
                    .map_err(|source| CaptureError::InboundMap {
                        netns: name.clone(),
                        ip: *ip,
                        source: Box::new(source),
                    })?;
                if state.owners.insert(key, claim.owner).is_some() {
                    tracing::warn!(%ip, netns = %name, "pod IP taken over from an earlier enrolment");
                }
                claim.keys.push(key);
            }
        }
        let mut ebpf = self.ebpf.lock();
        let attach_err = |source| CaptureError::AttachNetns {
            name: programs::INBOUND_LOOKUP,
            netns: name.clone(),
            source: Box::new(source),
        };
        let lookup: &mut SkLookup = program(&mut ebpf, programs::INBOUND_LOOKUP)?;
        let lookup = lookup
            .attach(ns.as_fd())
            .and_then(|id| lookup.take_link(id))
            .map_err(attach_err)?;
        Ok(InboundLinks {
            _lookup: lookup,
            _claim: claim,
        })
    }

    /// The original destination of a connection accepted from `key`, removed from the map so
    /// that a later connection reusing the port cannot see it.
    pub fn take_orig_dst(&self, key: &TupleKey) -> Option<OrigDst> {
        lookup_and_delete(&self.orig_dst, key).ok()
    }

    /// The loaded object, for programs attached elsewhere (`services_kernel`).
    pub(crate) fn ebpf(&self) -> parking_lot::MutexGuard<'_, Ebpf> {
        self.ebpf.lock()
    }

    /// Kernel verdict counters, summed over CPUs, in `Verdict` order.
    pub fn verdict_counts(&self) -> Vec<(Verdict, u64)> {
        Verdict::ALL
            .iter()
            .map(|v| {
                let total = self
                    .verdicts
                    .get(&(*v as u32), 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (*v, total)
            })
            .collect()
    }
}

// === impl InboundClaim ===

impl Drop for InboundClaim {
    fn drop(&mut self) {
        let mut state = self.table.state.lock();
        for key in &self.keys {
            if state.owners.get(key) != Some(&self.owner) {
                continue;
            }
            state.owners.remove(key);
            // ENOENT is expected: the kernel drops a socket from the map when it closes.
            let _ = state.map.remove(key);
        }
    }
}

/// Checks what `bpf_sk_assign` will demand of the inbound listener (see `attach_inbound`), so
/// a wrong one is an enrolment error instead of a silent fail-open in the kernel.
fn check_listener(
    netns: &File,
    listener: BorrowedFd<'_>,
    pod_ips: &[IpAddr],
) -> Result<(), String> {
    use socket2::{Domain, Protocol, Type};

    if pod_ips.is_empty() {
        return Err("no pod IPs given, nothing would be steered".to_owned());
    }
    let sock = socket2::SockRef::from(&listener);
    let not_tcp = |err: std::io::Error| format!("not a TCP socket ({err})");
    if sock.r#type().map_err(not_tcp)? != Type::STREAM
        || sock.protocol().map_err(not_tcp)? != Some(Protocol::TCP)
    {
        return Err("not a TCP socket".to_owned());
    }
    if !sock.is_listener().map_err(|err| err.to_string())? {
        return Err("the socket is not listening: call listen() on it first".to_owned());
    }
    let domain = sock.domain().map_err(|err| err.to_string())?;
    let v6_only = domain == Domain::IPV6 && sock.only_v6().map_err(|err| err.to_string())?;
    for ip in pod_ips {
        match ip.to_canonical() {
            IpAddr::V4(_) if v6_only => {
                return Err(format!(
                    "it is IPv6-only (IPV6_V6ONLY) and cannot take IPv4 pod IP {ip}; bind \
                     [::]:15006 with IPV6_V6ONLY off"
                ));
            }
            IpAddr::V6(_) if domain == Domain::IPV4 => {
                return Err(format!(
                    "it is an IPv4 socket and cannot take IPv6 pod IP {ip}; bind [::]:15006 \
                     with IPV6_V6ONLY off"
                ));
            }
            _ => {}
        }
    }
    let same = same_netns(netns, listener).map_err(|err| {
        format!("cannot tell which network namespace the socket is in (SIOCGSKNS: {err})")
    })?;
    if !same {
        return Err(
            "the socket was not created inside this network namespace; create it on a \
                    thread that has entered the pod's namespace (see `inpod::Netns::run`)"
                .to_owned(),
        );
    }
    Ok(())
}

/// Whether `socket` lives in the network namespace `netns` (an nsfs file): `SIOCGSKNS` opens
/// the socket's namespace, and two nsfs files are the same namespace when device and inode
/// match.
fn same_netns(netns: &File, socket: BorrowedFd<'_>) -> std::io::Result<bool> {
    // SAFETY: SIOCGSKNS takes no argument and returns a new file descriptor or -1.
    let fd = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGSKNS) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
    let socket_ns = File::from(unsafe { OwnedFd::from_raw_fd(fd) }).metadata()?;
    let ns = netns.metadata()?;
    Ok(ns.dev() == socket_ns.dev() && ns.ino() == socket_ns.ino())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, CaptureError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(CaptureError::Missing {
            what: "program",
            name,
        })
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, CaptureError> {
    ebpf.take_map(name)
        .ok_or(CaptureError::Missing { what: "map", name })
}

/// `bpf_attr` for the map element commands (`BPF_MAP_*_ELEM`).
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// Reads and removes `key` in one system call (hash maps have it since Linux 5.14, below the
/// agent's minimum), where aya's `HashMap` takes a lookup and a delete.
fn lookup_and_delete<K: aya::Pod, V: aya::Pod>(
    map: &BpfHashMap<MapData, K, V>,
    key: &K,
) -> std::io::Result<V> {
    let mut value = std::mem::MaybeUninit::<V>::zeroed();
    let mut attr = ElemAttr {
        map_fd: map.map().fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` is an initialised `bpf_attr` prefix of the size passed; its key and value
    // point at live values of the map's key and value sizes, which aya checked when it opened
    // the map as this typed `HashMap`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            std::ptr::from_mut(&mut attr),
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the value in, and `V: Pod` is valid for any bytes.
    Ok(unsafe { value.assume_init() })
}

fn attach_sock_addr(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: std::os::fd::BorrowedFd<'_>,
) -> Result<CgroupSockAddrLink, aya::programs::ProgramError> {
    let prog: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(aya::programs::ProgramError::NotLoaded)?;
    let id = prog.attach(cgroup, CgroupAttachMode::Single)?;
    prog.take_link(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs CAP_BPF (root), as every test of the capture does; without it the map cannot be
    /// created and the test fails.
    #[test]
    fn lookup_and_delete_takes_an_entry_once() {
        let mut map = BpfHashMap::<MapData, u64, u64>::create(8, 0)
            .expect("creating a BPF hash map needs CAP_BPF (run the tests as root)");
        map.insert(7, 700, 0).unwrap();
        map.insert(8, 800, 0).unwrap();
        assert_eq!(lookup_and_delete(&map, &7).unwrap(), 700);
        let again = lookup_and_delete(&map, &7).unwrap_err();
        assert_eq!(again.raw_os_error(), Some(libc::ENOENT), "{again}");
        assert_eq!(map.get(&8, 0).unwrap(), 800, "other entries stay");
    }
}
