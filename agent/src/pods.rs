//! Enrolment: for each pod on this node, open its network namespace, bind the agent's
//! listeners inside it (outbound 15001, HBONE 15008, plaintext 15006, DNS 15053), and only
//! then attach the capture programs to its cgroup and `sk_lookup` to its namespace (the other
//! order would send the pod's first connections to a port nobody listens on).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

use serde::Serialize;
use tokio::task::JoinHandle;

use weft_link::hbone::{ClientOptions, HboneClient, PeerConnections};

use crate::{
    capture::{CaptureError, InboundLinks, PodLinks},
    dns::{DnsError, DnsProxy},
    drain::DrainWatcher,
    inpod::{Netns, NetnsError},
    proxy::{
        ProxyContext, inbound,
        outbound::{ListenerError, OutboundListener, Pod, PodSockets},
    },
    state::{Enrolment, WorkloadUid},
};

#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("pod {uid} is enrolled on this node but missing from the workload list; add it there")]
    UnknownWorkload { uid: WorkloadUid },
    #[error("pod {uid}: {source}")]
    Netns {
        uid: WorkloadUid,
        #[source]
        source: NetnsError,
    },
    #[error("pod {uid}: {source}")]
    Listener {
        uid: WorkloadUid,
        #[source]
        source: ListenerError,
    },
    #[error("pod {uid}: {source}")]
    Dns {
        uid: WorkloadUid,
        #[source]
        source: DnsError,
    },
    #[error("pod {uid}: cannot list its addresses: {source}")]
    Addresses {
        uid: WorkloadUid,
        #[source]
        source: nix::Error,
    },
    #[error("pod {uid}: {source}")]
    Capture {
        uid: WorkloadUid,
        // Boxed: aya's errors are large and this travels through every enrolment result.
        #[source]
        source: Box<CaptureError>,
    },
}

/// A captured pod. Dropping it stops its listeners and detaches its programs.
pub struct EnrolledPod {
    pub status: PodStatus,
    pub pod: Arc<Pod>,
    links: Option<PodLinks>,
    inbound: Option<InboundLinks>,
    tasks: Vec<JoinHandle<()>>,
}

impl EnrolledPod {
    /// Detaches the capture programs: the pod's new connections go direct again, while the
    /// ones already proxied carry on (shutdown does this before draining).
    pub fn release_capture(&mut self) {
        self.links = None;
        self.inbound = None;
        self.status.captured = false;
    }
}

impl Drop for EnrolledPod {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the admin API reports of a pod.
#[derive(Debug, Clone, Serialize)]
pub struct PodStatus {
    pub uid: WorkloadUid,
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    pub listeners: Vec<SocketAddr>,
    /// The addresses found in the pod's namespace, which `sk_lookup` steers.
    pub ips: Vec<IpAddr>,
    pub netns_cookie: u64,
    pub captured: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Enrols one pod. Must run inside the data-path runtime (listeners register with it).
pub fn enrol(
    enrolment: &Enrolment,
    ctx: &Arc<ProxyContext>,
    dns: &Arc<DnsProxy>,
    drain: &DrainWatcher,
) -> Result<EnrolledPod, EnrolError> {
    let uid = enrolment.uid.clone();
    let netns = Netns::open(&enrolment.netns).map_err(|source| EnrolError::Netns {
        uid: uid.clone(),
        source,
    })?;
    let ips = netns
        .run(&ctx.home, pod_addresses)
        .map_err(|source| EnrolError::Netns {
            uid: uid.clone(),
            source,
        })?
        .map_err(|source| EnrolError::Addresses {
            uid: uid.clone(),
            source,
        })?;
    let sockets = PodSockets {
        netns: netns.clone(),
        home: ctx.home.clone(),
    };
    let pod = Arc::new(Pod {
        uid: uid.clone(),
        netns,
        hbone: HboneClient::new(
            Arc::new(sockets),
            ClientOptions {
                connect_timeout: ctx.connect_timeout,
                ..ClientOptions::default()
            },
        ),
    });
    let listener_err = |source| EnrolError::Listener {
        uid: uid.clone(),
        source,
    };
    let outbound = OutboundListener::bind_all(&pod, &ctx.home).map_err(listener_err)?;
    let hbone = inbound::bind_hbone(&pod, &ctx.home).map_err(listener_err)?;
    let plaintext = inbound::bind_plaintext(&pod, &ctx.home).map_err(listener_err)?;
    let dns_sockets = dns
        .bind(&pod.netns, &ctx.home)
        .map_err(|source| EnrolError::Dns {
            uid: uid.clone(),
            source,
        })?;
    let capture_err = |source| EnrolError::Capture {
        uid: uid.clone(),
        source: Box::new(source),
    };
    let inbound_links = ctx
        .capture
        .attach_inbound(&enrolment.netns, &ips, &plaintext)
        .map_err(capture_err)?;
    let links = ctx.capture.attach(&enrolment.cgroup).map_err(capture_err)?;
    let mut listeners: Vec<SocketAddr> = outbound.iter().filter_map(|l| l.local_addr()).collect();
    listeners.extend(hbone.iter().filter_map(|l| l.local_addr().ok()));
    listeners.extend(plaintext.local_addr().ok());
    listeners.extend(dns_sockets.local_addrs());
    let status = PodStatus {
        uid: uid.clone(),
        netns: enrolment.netns.clone(),
        cgroup: enrolment.cgroup.clone(),
        listeners,
        ips,
        netns_cookie: outbound.first().map_or(0, |l| l.netns_cookie()),
        captured: true,
        error: None,
    };
    let mut tasks: Vec<JoinHandle<()>> = outbound
        .into_iter()
        .map(|l| tokio::spawn(l.run(ctx.clone(), drain.clone())))
        .collect();
    let bundle = ctx.identities.bundle();
    // One count per pod: its IPv4 and IPv6 listeners share the per-identity limit.
    let peers = PeerConnections::new(ctx.hbone.max_connections_per_peer);
    tasks.extend(hbone.into_iter().map(|l| {
        tokio::spawn(inbound::run_hbone(
            l,
            ctx.clone(),
            pod.clone(),
            bundle.clone(),
            peers.clone(),
            drain.clone(),
        ))
    }));
    tasks.push(tokio::spawn(inbound::run_plaintext(
        plaintext,
        ctx.clone(),
        pod.clone(),
        drain.clone(),
    )));
    tasks.extend(dns.spawn(dns_sockets));
    ctx.pods.write().insert(uid, pod.clone());
    Ok(EnrolledPod {
        status,
        pod,
        links: Some(links),
        inbound: Some(inbound_links),
        tasks,
    })
}

/// The pod's own addresses: every address of its namespace except loopback and IPv6
/// link-local ones (which never identify a pod).
fn pod_addresses() -> Result<Vec<IpAddr>, nix::Error> {
    let mut ips = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        let link_local = matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local());
        if ip.is_loopback() || link_local || ips.contains(&ip) {
            continue;
        }
        ips.push(ip);
    }
    Ok(ips)
}

/// The status of a pod that could not be enrolled.
pub fn failed(enrolment: &Enrolment, err: &EnrolError) -> PodStatus {
    PodStatus {
        uid: enrolment.uid.clone(),
        netns: enrolment.netns.clone(),
        cgroup: enrolment.cgroup.clone(),
        listeners: Vec::new(),
        ips: Vec::new(),
        netns_cookie: 0,
        captured: false,
        error: Some(err.to_string()),
    }
}
