//! What the agent knows about the mesh: every workload (to name both ends of a connection in
//! metrics and logs) and the pods enrolled on this node (to capture their traffic).
//!
//! Workloads come from the control plane (`discovery` converts them); the enrolment list
//! (`--pods`) holds the node-local facts a CNI plugin hands a node agent: each pod's network
//! namespace and cgroup. Both are parsed into these types at the edge; nothing deeper sees raw
//! protobuf or JSON.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source} (expected {expected})")]
    Parse {
        path: PathBuf,
        expected: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// A workload's unique id (a pod uid in Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkloadUid(pub String);

impl std::fmt::Display for WorkloadUid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pod (or any workload) of the mesh.
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

/// A pod on this node whose traffic the agent captures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolment {
    pub uid: WorkloadUid,
    /// Network namespace file, e.g. `/run/netns/<name>` or `/proc/<pid>/ns/net`.
    pub netns: PathBuf,
    /// The pod's cgroup v2 directory.
    pub cgroup: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PodsFile {
    pods: Vec<Enrolment>,
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

pub fn load_enrolments(path: &Path) -> Result<Vec<Enrolment>, StateError> {
    let file: PodsFile = read_json(path, r#"{"pods": [{"uid", "netns", "cgroup"}]}"#)?;
    Ok(file.pods)
}

fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    expected: &'static str,
) -> Result<T, StateError> {
    let text = std::fs::read_to_string(path).map_err(|source| StateError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| StateError::Parse {
        path: path.to_path_buf(),
        expected,
        source,
    })
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

    #[test]
    fn bad_enrolment_files_name_the_file_and_the_problem() {
        let dir = std::env::temp_dir().join(format!("weft-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pods.json");
        std::fs::write(
            &path,
            r#"{"pods": [{"uid": "a", "netns": "/run/netns/x"}]}"#,
        )
        .unwrap();
        let err = load_enrolments(&path).unwrap_err().to_string();
        assert!(
            err.contains("pods.json") && err.contains("missing field `cgroup`"),
            "{err}"
        );
        let err = load_enrolments(&dir.join("absent.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read") && err.contains("absent.json"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
