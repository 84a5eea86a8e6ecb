//! The testbed's state directory, `/run/weft-testbed/<name>/`: `state.json` (topology and
//! agent pids, so that `status`, `exec` and `down` work from another process), the agents'
//! input files and logs, and a scratch directory per pod.
//!
//! ```text
//! /run/weft-testbed/<name>/state.json
//! /run/weft-testbed/<name>/node-1/pods.json     --pods, the pods enrolled on node-1
//! /run/weft-testbed/<name>/node-1/agent.log     the agent's stdout and stderr
//! /run/weft-testbed/<name>/pod-1a/              working directory of pod-1a's processes
//! ```

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::{Error, Result};
use super::topology::{Node, Pod};

/// Parent of every testbed's state directory (tmpfs: gone after a reboot, as the
/// namespaces are).
pub const STATE_ROOT: &str = "/run/weft-testbed";

/// `/run/weft-testbed/<name>`.
pub fn state_dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}

/// `/run/weft-testbed/<name>/state.json`.
pub fn state_file(name: &str) -> PathBuf {
    state_dir(name).join("state.json")
}

/// The pods enrolled on one node (`--pods`).
pub fn pods_file(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join(node).join("pods.json")
}

/// Where one node's agent writes stdout and stderr.
pub fn agent_log(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join(node).join("agent.log")
}

/// The working directory of the processes started in one pod.
pub fn pod_dir(state_dir: &Path, pod: &str) -> PathBuf {
    state_dir.join(pod)
}

/// `{"pods": [...]}` as the agent's `--pods` expects it.
#[derive(Debug, Serialize)]
struct PodsDoc<'a> {
    pods: Vec<Enrolment<'a>>,
}

#[derive(Debug, Serialize)]
struct Enrolment<'a> {
    uid: &'a str,
    netns: &'a Path,
    cgroup: &'a Path,
}

/// Writes `value` as pretty JSON to `path`, creating its directory.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    }
    let mut text = serde_json::to_string_pretty(value).map_err(|source| Error::State {
        path: path.to_owned(),
        source,
    })?;
    text.push('\n');
    // Write then rename, so a reader never sees half a file.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(Error::io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io("renaming to", path))
}

/// Writes every node's `pods.json` (every pod of the node but the `unenrolled` ones). The
/// pods' metadata reaches the agents from the control plane (see `control`).
pub fn write_agent_inputs(
    state_dir: &Path,
    nodes: &[Node],
    pods: &[Pod],
    unenrolled: &[String],
) -> Result<()> {
    for node in nodes {
        let doc = PodsDoc {
            pods: pods
                .iter()
                .filter(|p| p.node == node.name && !unenrolled.contains(&p.name))
                .map(|p| Enrolment {
                    uid: &p.uid,
                    netns: &p.netns_path,
                    cgroup: &p.cgroup,
                })
                .collect(),
        };
        write_json(&pods_file(state_dir, &node.name), &doc)?;
    }
    Ok(())
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let tail = all[all.len().saturating_sub(lines)..].join("\n");
            if tail.is_empty() {
                "(the log is empty)".to_owned()
            } else {
                tail
            }
        }
        Err(e) => format!("(cannot read the log: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testbed::topology;

    #[test]
    fn enrolment_files_match_the_agent_contract() {
        let dir = std::env::temp_dir().join(format!("weft-state-test-{}", std::process::id()));
        let (nodes, pods) = topology::build("weft", 2, 1, Path::new("/sys/fs/cgroup/unified"));
        write_agent_inputs(&dir, &nodes, &pods, &[]).unwrap();
        let read = |p: PathBuf| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
        };
        let pods2 = read(pods_file(&dir, "node-2"));
        assert_eq!(
            pods2,
            serde_json::json!({"pods": [{
                "uid": "weft-pod-2a", "netns": "/run/netns/weft-pod-2a",
                "cgroup": "/sys/fs/cgroup/unified/weft/pods/node-2/pod-2a"
            }]})
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
