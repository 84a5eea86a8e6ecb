//! The testbed's control plane: one `weft-control` in the fabric namespace, listening on the
//! bridge address every node reaches, serving a configuration directory. `up` writes the pods
//! there as `Workload` documents; [`Testbed::apply`] and [`Testbed::delete`] add and remove
//! files, which the control plane picks up by watching the directory (hot reload, no restart).
//!
//! ```text
//! /run/weft-testbed/<name>/config/            --config-dir (pods.yaml + applied files)
//! /run/weft-testbed/<name>/control/           --state-dir (root-cert.pem, root-key.pem)
//! /run/weft-testbed/<name>/control/control.log
//! ```

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use super::error::{Error, Result};
use super::exec::spawn_detached;
use super::process::{Placement, open_netns};
use super::{Pod, Testbed, cgroup, netns, state, topology};

/// The control plane's address on the fabric bridge.
pub const CONTROL_IPV4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const CONTROL_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
/// The agent protocol's port.
pub const CONTROL_PORT: u16 = 15012;
/// The control plane's metrics port.
pub const CONTROL_METRICS_PORT: u16 = 15020;
/// How long `up` waits for the control plane: it generates its root CA on first start.
const CONTROL_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the control plane gets to exit after SIGTERM.
const CONTROL_STOP_GRACE: Duration = Duration::from_secs(10);
/// The file `up` writes the testbed's pods into.
pub const PODS_FILE: &str = "pods.yaml";
/// The root certificate's file name in the control plane's state directory.
const ROOT_CERT_FILE: &str = "root-cert.pem";

pub fn config_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("config")
}

fn control_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("control")
}

pub fn control_log(state_dir: &Path) -> PathBuf {
    control_dir(state_dir).join("control.log")
}

/// The control plane's cgroup, beside the nodes' and pods'.
pub fn control_cgroup(cgroup_root: &Path) -> PathBuf {
    cgroup_root.join("control")
}

/// The pods as `weft.dev/v1alpha1 Workload` documents.
pub fn workload_documents(pods: &[Pod]) -> String {
    let mut out = String::from("# Written by the testbed: one Workload per pod.\n");
    for pod in pods {
        let labels: Vec<String> = pod
            .labels
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let ips: Vec<String> = pod.ips().iter().map(|ip| format!("\"{ip}\"")).collect();
        out.push_str(&format!(
            "---\napiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: {}\n  \
             namespace: {}\n  uid: {}\n  labels: {{{}}}\nspec:\n  serviceAccount: {}\n  \
             node: {}\n  ips: [{}]\n",
            pod.name,
            pod.namespace,
            pod.uid,
            labels.join(", "),
            pod.service_account,
            pod.node,
            ips.join(", "),
        ));
    }
    out
}

impl Testbed {
    /// The agent protocol's URL, as agents are given it.
    pub fn control_url(&self) -> String {
        format!("https://{CONTROL_IPV4}:{CONTROL_PORT}")
    }

    /// The control plane's metrics address (inside the fabric namespace).
    pub fn control_metrics_addr(&self) -> SocketAddr {
        SocketAddr::from((CONTROL_IPV4, CONTROL_METRICS_PORT))
    }

    /// The mesh root certificate, which agents and weftctl verify the control plane with.
    pub fn control_ca(&self) -> PathBuf {
        control_dir(&self.state_dir).join(ROOT_CERT_FILE)
    }

    pub fn config_dir(&self) -> PathBuf {
        config_dir(&self.state_dir)
    }

    fn fabric_netns_path(&self) -> PathBuf {
        Path::new(netns::NETNS_DIR).join(topology::fabric_netns(&self.name))
    }

    /// Writes the pods' documents into the configuration directory.
    pub(super) fn write_control_config(&self) -> Result<()> {
        let dir = self.config_dir();
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        write_atomic(&dir.join(PODS_FILE), &workload_documents(&self.pods))
    }

    /// Starts the control plane and waits until it accepts connections.
    pub fn start_control(&mut self) -> Result<()> {
        let Some(agent) = &self.agent else {
            return Err(Error::NoAgent {
                testbed: self.name.clone(),
            });
        };
        let bin = agent.control_bin();
        let dir = control_dir(&self.state_dir);
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        let cg = control_cgroup(&self.cgroup_root);
        cgroup::create(&cg)?;
        let listen = SocketAddr::from((CONTROL_IPV4, CONTROL_PORT));
        let mut command = Command::new(&bin);
        command
            .arg("--config-dir")
            .arg(self.config_dir())
            .arg("--state-dir")
            .arg(&dir)
            .args(["--listen", &listen.to_string()])
            .args(["--san", &CONTROL_IPV4.to_string()])
            .args(["--metrics-addr", &self.control_metrics_addr().to_string()])
            .env("RUST_LOG", &agent.rust_log)
            .env("NO_COLOR", "1")
            .current_dir(&dir);
        Placement {
            cgroup_procs: Some(cgroup::open_procs(&cg)?),
            netns: Some(open_netns(&self.fabric_netns_path())?),
            new_session: false,
        }
        .apply(&mut command);
        let log = control_log(&self.state_dir);
        self.control = Some(spawn_detached(command, &log, &cg)?);
        self.save()?;
        self.wait_control(listen, &log)
    }

    fn wait_control(&self, listen: SocketAddr, log: &Path) -> Result<()> {
        let deadline = Instant::now() + CONTROL_READY_TIMEOUT;
        let not_ready = || Error::ControlNotReady {
            secs: CONTROL_READY_TIMEOUT.as_secs(),
            log: log.to_path_buf(),
            tail: state::tail(log, 20),
        };
        loop {
            if !self.control.is_some_and(|p| p.is_alive()) {
                return Err(not_ready());
            }
            let open = netns::in_netns(&self.fabric_netns_path(), || {
                TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok()
            })?;
            if open && self.control_ca().is_file() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(not_ready());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the control plane (SIGTERM, then SIGKILL). Agents keep their last state.
    pub fn stop_control(&mut self) -> Result<()> {
        if let Some(process) = self.control.take() {
            process.stop(CONTROL_STOP_GRACE)?;
        }
        self.save()
    }

    /// The control plane process, if started.
    pub fn control_process(&self) -> Option<super::process::ProcessId> {
        self.control
    }

    /// Whether the control plane process runs.
    pub fn control_alive(&self) -> bool {
        self.control.is_some_and(|p| p.is_alive())
    }

    /// Copies YAML files into the configuration directory under their own names (replacing
    /// an earlier file of the same name); the control plane reloads them.
    pub fn apply(&self, files: &[PathBuf]) -> Result<Vec<String>> {
        let dir = self.config_dir();
        let mut applied = Vec::new();
        for file in files {
            let name = yaml_file_name(file)?;
            if name == PODS_FILE {
                return Err(Error::ConfigFile {
                    path: file.clone(),
                    reason: format!("{PODS_FILE} is the testbed's own file; rename yours"),
                });
            }
            let text = std::fs::read_to_string(file).map_err(Error::io("reading", file))?;
            write_atomic(&dir.join(&name), &text)?;
            applied.push(name);
        }
        Ok(applied)
    }

    /// Removes files applied earlier, by file name.
    pub fn delete(&self, files: &[PathBuf]) -> Result<Vec<String>> {
        let dir = self.config_dir();
        let mut deleted = Vec::new();
        for file in files {
            let name = yaml_file_name(file)?;
            let path = dir.join(&name);
            if name == PODS_FILE || !path.is_file() {
                return Err(Error::NotApplied {
                    testbed: self.name.clone(),
                    file: name,
                    applied: self.applied_files(),
                });
            }
            std::fs::remove_file(&path).map_err(Error::io("removing", &path))?;
            deleted.push(name);
        }
        Ok(deleted)
    }

    /// Files applied with [`Testbed::apply`] and still there.
    pub fn applied_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.config_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n != PODS_FILE && !n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    /// The control plane's bridge address, as an `IpAddr`.
    pub fn control_ip(&self) -> IpAddr {
        CONTROL_IPV4.into()
    }
}

fn yaml_file_name(file: &Path) -> Result<String> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| Error::ConfigFile {
            path: file.to_path_buf(),
            reason: "not a file name".into(),
        })?;
    if name.ends_with(".yaml") || name.ends_with(".yml") {
        Ok(name)
    } else {
        Err(Error::ConfigFile {
            path: file.to_path_buf(),
            reason: "only .yaml and .yml files are configuration".into(),
        })
    }
}

/// Write then rename, so the watching control plane never reads half a file. The temporary
/// name starts with a dot, which the control plane skips.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("config")
    ));
    std::fs::write(&tmp, text).map_err(Error::io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io("renaming to", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_files_only() {
        assert_eq!(yaml_file_name(Path::new("/x/a.yaml")).unwrap(), "a.yaml");
        assert!(yaml_file_name(Path::new("/x/a.json")).is_err());
    }
}
