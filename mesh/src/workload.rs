//! Workloads of the mesh as the agent knows them: every workload (to name both ends of a
//! connection in metrics and logs, and to evaluate policy) indexed by uid and by IP.
//!
//! Workloads arrive from the control plane as protobuf resources and are converted here (and
//! nowhere else); nothing deeper sees raw protobuf.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use weft_proto::discovery::v1 as pb;

/// A workload's unique id (a pod uid in Kubernetes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkloadUid(pub String);

impl std::fmt::Display for WorkloadUid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pod (or any workload) of the mesh. Its default is ready, of weight 1, with nothing
/// else known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub uid: WorkloadUid,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub node: String,
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How other nodes reach it.
    #[serde(default)]
    pub protocol: TunnelProtocol,
    /// Whether services send it new connections (a pod's Ready condition).
    #[serde(default = "ready")]
    pub ready: bool,
    /// Its named ports (container ports by name), for services' named target ports.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// Where its node is.
    #[serde(default)]
    pub locality: Locality,
    /// Its share of a service's new connections relative to the other endpoints (at least 1).
    #[serde(default = "one")]
    pub weight: u32,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            uid: WorkloadUid::default(),
            name: String::new(),
            namespace: String::new(),
            service_account: String::new(),
            node: String::new(),
            ips: Vec::new(),
            labels: BTreeMap::new(),
            protocol: TunnelProtocol::default(),
            ready: true,
            ports: BTreeMap::new(),
            locality: Locality::default(),
            weight: 1,
        }
    }
}

fn ready() -> bool {
    true
}

fn one() -> u32 {
    1
}

/// Where a workload's node is (`topology.kubernetes.io/region` and `/zone`). An empty field
/// is unknown, and unknown is close to nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locality {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
}

impl Locality {
    /// Whether both are known and in the same zone of the same region.
    pub fn same_zone(&self, other: &Locality) -> bool {
        self.same_region(other) && !self.zone.is_empty() && self.zone == other.zone
    }

    /// Whether both are known and in the same region.
    pub fn same_region(&self, other: &Locality) -> bool {
        !self.region.is_empty() && self.region == other.region
    }
}

/// How traffic to a workload crosses nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TunnelProtocol {
    /// HTTP/2 CONNECT over mutual TLS to its port 15008: an agent captures it.
    #[default]
    Hbone,
    /// Plain TCP to its own port: no agent captures it.
    Tcp,
}

impl Workload {
    /// The `app` label, as Istio's `source_app` / `destination_app`.
    pub fn app(&self) -> &str {
        self.labels
            .get("app")
            .or_else(|| self.labels.get("app.kubernetes.io/name"))
            .map_or("unknown", String::as_str)
    }

    /// The workload's SPIFFE identity in `trust_domain`; `None` if its namespace or service
    /// account cannot be part of one.
    pub fn identity(
        &self,
        trust_domain: &weft_link::identity::TrustDomain,
    ) -> Option<weft_link::identity::SpiffeId> {
        weft_link::identity::SpiffeId::new(
            trust_domain.clone(),
            &self.namespace,
            &self.service_account,
        )
        .ok()
    }

    /// The workload's SPIFFE identity.
    pub fn principal(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// Every workload of the mesh, indexed by uid and by IP.
#[derive(Debug, Default)]
pub struct WorkloadStore {
    by_uid: HashMap<WorkloadUid, Arc<Workload>>,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
}

impl WorkloadStore {
    pub fn new(workloads: Vec<Workload>) -> Self {
        Self::from_arcs(workloads.into_iter().map(Arc::new))
    }

    pub fn from_arcs(workloads: impl IntoIterator<Item = Arc<Workload>>) -> Self {
        let mut store = WorkloadStore::default();
        for w in workloads {
            for ip in &w.ips {
                store.by_ip.insert(*ip, w.clone());
            }
            store.by_uid.insert(w.uid.clone(), w);
        }
        store
    }

    pub fn by_uid(&self, uid: &WorkloadUid) -> Option<&Arc<Workload>> {
        self.by_uid.get(uid)
    }

    /// The workload owning `ip`; an IPv4-mapped IPv6 address matches its IPv4 form.
    pub fn by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip.to_canonical())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.by_uid.values()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("resource is not of the expected kind")]
    WrongKind,
    #[error("field {field}: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
}

/// `value`, unless it is empty.
pub(crate) fn required(field: &'static str, value: String) -> Result<String, ConvertError> {
    if value.is_empty() {
        Err(ConvertError::Field {
            field,
            problem: "must not be empty".into(),
        })
    } else {
        Ok(value)
    }
}

/// The addresses of `field`, each parsed, naming the first that is not one.
pub(crate) fn addresses(field: &'static str, ips: &[String]) -> Result<Vec<IpAddr>, ConvertError> {
    ips.iter()
        .map(|ip| {
            ip.parse::<IpAddr>().map_err(|e| ConvertError::Field {
                field,
                problem: format!("{ip:?}: {e}"),
            })
        })
        .collect()
}

impl TryFrom<pb::Resource> for Workload {
    type Error = ConvertError;

    fn try_from(resource: pb::Resource) -> Result<Self, Self::Error> {
        let Some(pb::resource::Kind::Workload(w)) = resource.kind else {
            return Err(ConvertError::WrongKind);
        };
        let ips = addresses("ips", &w.ips)?;
        if ips.is_empty() {
            return Err(ConvertError::Field {
                field: "ips",
                problem: "a workload needs at least one address".into(),
            });
        }
        Ok(Workload {
            uid: WorkloadUid(required("uid", w.uid)?),
            name: required("name", w.name)?,
            namespace: required("namespace", w.namespace)?,
            service_account: required("service_account", w.service_account)?,
            node: w.node,
            ips,
            labels: w.labels.into_iter().collect(),
            protocol: match pb::TunnelProtocol::try_from(w.protocol) {
                Ok(pb::TunnelProtocol::Tcp) => TunnelProtocol::Tcp,
                Ok(pb::TunnelProtocol::Hbone | pb::TunnelProtocol::Unspecified) => {
                    TunnelProtocol::Hbone
                }
                Err(_) => {
                    return Err(ConvertError::Field {
                        field: "protocol",
                        problem: format!("unknown tunnel protocol {}", w.protocol),
                    });
                }
            },
            ready: match pb::WorkloadStatus::try_from(w.status) {
                Ok(pb::WorkloadStatus::Ready) => true,
                Ok(pb::WorkloadStatus::NotReady) => false,
                Err(_) => {
                    return Err(ConvertError::Field {
                        field: "status",
                        problem: format!("unknown workload status {}", w.status),
                    });
                }
            },
            ports: w
                .ports
                .into_iter()
                .map(|(name, number)| {
                    u16::try_from(number)
                        .ok()
                        .filter(|p| *p != 0)
                        .map(|p| (name, p))
                        .ok_or_else(|| ConvertError::Field {
                            field: "ports",
                            problem: format!("{number} is not a port (1-65535)"),
                        })
                })
                .collect::<Result<_, _>>()?,
            locality: w
                .locality
                .map(|l| Locality {
                    region: l.region,
                    zone: l.zone,
                })
                .unwrap_or_default(),
            weight: w.weight.max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(uid: &str, ip: &str) -> Workload {
        Workload {
            uid: WorkloadUid(uid.into()),
            name: uid.into(),
            namespace: "default".into(),
            service_account: "default".into(),
            node: "node-1".into(),
            ips: vec![ip.parse().unwrap()],
            labels: [("app".to_string(), uid.to_string())].into(),
            protocol: TunnelProtocol::Hbone,
            ..Workload::default()
        }
    }

    #[test]
    fn finds_workloads_by_ip_including_mapped_v4() {
        let store = WorkloadStore::new(vec![workload("a", "10.0.0.1"), workload("b", "fd00::2")]);
        assert_eq!(store.by_ip("10.0.0.1".parse().unwrap()).unwrap().name, "a");
        assert_eq!(
            store
                .by_ip("::ffff:10.0.0.1".parse().unwrap())
                .unwrap()
                .name,
            "a"
        );
        assert_eq!(store.by_ip("fd00::2".parse().unwrap()).unwrap().name, "b");
        assert!(store.by_ip("10.0.0.9".parse().unwrap()).is_none());
    }

    #[test]
    fn principal_is_a_spiffe_id() {
        let w = workload("a", "10.0.0.1");
        assert_eq!(
            w.principal("cluster.local"),
            "spiffe://cluster.local/ns/default/sa/default"
        );
        assert_eq!(w.app(), "a");
    }
}
