//! Loads the kernel programs (embedded at build time), attaches them to enrolled pods'
//! cgroups, and answers "where was this accepted connection going?" from the tuple map.

use std::{fs::File, os::fd::AsFd, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SockOps, cgroup_sock_addr::CgroupSockAddrLink,
        sock_ops::SockOpsLink,
    },
};
use parking_lot::Mutex;
use weft_ebpf_common::{OrigDst, TupleKey, Verdict, maps, programs};

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
}

/// The loaded programs and the maps the agent reads.
pub struct Capture {
    ebpf: Mutex<Ebpf>,
    orig_dst: Mutex<BpfHashMap<MapData, TupleKey, OrigDst>>,
    verdicts: PerCpuArray<MapData, u64>,
}

/// The links attaching the programs to one pod's cgroup; dropping it detaches them.
pub struct PodLinks {
    _connect4: CgroupSockAddrLink,
    _connect6: CgroupSockAddrLink,
    _sockops: SockOpsLink,
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
        for name in [programs::CONNECT4, programs::CONNECT6] {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| CaptureError::Program { name, source })?;
        }
        let sockops: &mut SockOps = program(&mut ebpf, programs::SOCKOPS)?;
        sockops.load().map_err(|source| CaptureError::Program {
            name: programs::SOCKOPS,
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
        let capture = Capture {
            ebpf: Mutex::new(ebpf),
            orig_dst: Mutex::new(orig_dst),
            verdicts,
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
        Ok(PodLinks {
            _connect4: connect4,
            _connect6: connect6,
            _sockops: sockops,
        })
    }

    /// The original destination of a connection accepted from `key`, removed from the map so
    /// that a later connection reusing the port cannot see it.
    pub fn take_orig_dst(&self, key: &TupleKey) -> Option<OrigDst> {
        let mut map = self.orig_dst.lock();
        let orig = map.get(key, 0).ok()?;
        // A failed delete only leaves an entry that sockops overwrites on the next connection
        // from the same tuple, before the agent can accept it.
        let _ = map.remove(key);
        Some(orig)
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
