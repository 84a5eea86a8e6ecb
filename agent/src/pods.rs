//! Enrolment: for each pod on this node, open its network namespace, bind the outbound
//! listeners inside it, and only then attach the capture programs to its cgroup (the other
//! order would send the pod's first connections to a port nobody listens on).

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use serde::Serialize;
use tokio::task::JoinHandle;

use crate::{
    capture::{CaptureError, PodLinks},
    drain::DrainWatcher,
    inpod::{Netns, NetnsError},
    proxy::{
        ProxyContext,
        outbound::{ListenerError, OutboundListener, Pod},
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
    links: Option<PodLinks>,
    tasks: Vec<JoinHandle<()>>,
}

impl EnrolledPod {
    /// Detaches the capture programs: the pod's new connections go direct again, while the
    /// ones already proxied carry on (shutdown does this before draining).
    pub fn release_capture(&mut self) {
        self.links = None;
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
    pub netns_cookie: u64,
    pub captured: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Enrols one pod. Must run inside the data-path runtime (listeners register with it).
pub fn enrol(
    enrolment: &Enrolment,
    ctx: &Arc<ProxyContext>,
    drain: &DrainWatcher,
) -> Result<EnrolledPod, EnrolError> {
    let uid = enrolment.uid.clone();
    let netns = Netns::open(&enrolment.netns).map_err(|source| EnrolError::Netns {
        uid: uid.clone(),
        source,
    })?;
    let pod = Arc::new(Pod {
        uid: uid.clone(),
        netns,
    });
    let listeners =
        OutboundListener::bind_all(&pod, &ctx.home).map_err(|source| EnrolError::Listener {
            uid: uid.clone(),
            source,
        })?;
    let links = ctx
        .capture
        .attach(&enrolment.cgroup)
        .map_err(|source| EnrolError::Capture {
            uid: uid.clone(),
            source: Box::new(source),
        })?;
    let status = PodStatus {
        uid,
        netns: enrolment.netns.clone(),
        cgroup: enrolment.cgroup.clone(),
        listeners: listeners.iter().filter_map(|l| l.local_addr()).collect(),
        netns_cookie: listeners.first().map_or(0, |l| l.netns_cookie()),
        captured: true,
        error: None,
    };
    let tasks = listeners
        .into_iter()
        .map(|l| tokio::spawn(l.run(ctx.clone(), drain.clone())))
        .collect();
    Ok(EnrolledPod {
        status,
        links: Some(links),
        tasks,
    })
}

/// The status of a pod that could not be enrolled.
pub fn failed(enrolment: &Enrolment, err: &EnrolError) -> PodStatus {
    PodStatus {
        uid: enrolment.uid.clone(),
        netns: enrolment.netns.clone(),
        cgroup: enrolment.cgroup.clone(),
        listeners: Vec::new(),
        netns_cookie: 0,
        captured: false,
        error: Some(err.to_string()),
    }
}
