//! The data path: listeners inside pods and the byte copying between a captured client and
//! its destination.

pub mod copy;
pub mod outbound;

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;

use crate::{capture::Capture, inpod::Netns, metrics::Metrics, state::WorkloadStore};

/// What every connection handler needs; one per agent, shared.
pub struct ProxyContext {
    pub capture: Arc<Capture>,
    /// Replaced whole when the mesh's workloads change; each connection reads one snapshot.
    pub workloads: Arc<ArcSwap<WorkloadStore>>,
    pub metrics: Arc<Metrics>,
    /// The agent's own network namespace, to return to after creating a socket in a pod's.
    pub home: Netns,
    pub connect_timeout: Duration,
}
