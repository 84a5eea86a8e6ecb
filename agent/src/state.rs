//! What the agent knows about the mesh: every workload (to name both ends of a connection in
//! metrics and logs) and the pods enrolled on this node (to capture their traffic).
//!
//! Workloads come from the control plane (`weft_mesh::workload` holds them); the enrolment list
//! (`--pods`) holds the node-local facts a CNI plugin hands a node agent: each pod's network
//! namespace and cgroup. Both are parsed into these types at the edge; nothing deeper sees raw
//! protobuf or JSON.

use std::path::{Path, PathBuf};

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

pub use weft_mesh::workload::{TunnelProtocol, Workload, WorkloadStore, WorkloadUid};

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
