//! The testbed's control plane: one `weft-control` in the fabric namespace, listening on the
//! bridge address every node reaches, serving a configuration directory. `up` writes the pods
//! there as `Workload` documents; [`Testbed::apply`] and [`Testbed::delete`] add and remove
//! files, which the control plane picks up by watching the directory (hot reload, no restart).
//!
//! ```text
//! /run/weft-testbed/<name>/config/            --config-dir (pods.yaml + applied files)
//! /run/weft-testbed/<name>/control/           --state-dir (root-cert.pem, root-key.pem)
//! /run/weft-testbed/<name>/control/control.log
//! /run/weft-testbed/<name>/<node>/node-cert.pem  the node credential, --node-cert
//! /run/weft-testbed/<name>/<node>/node-key.pem   its key (0600), --node-key
//! /run/weft-testbed/<name>/operator/operator-cert.pem  weftctl's credential, --cert
//! /run/weft-testbed/<name>/operator/operator-key.pem   its key (0600), --key
//! ```
//!
//! Once the control plane serves (and so has generated its root), `start_control` issues
//! every node's credential with `weft-control node-credential`, as an operator would at
//! bootstrap; the agents present it to the control plane, whose CA signs only the
//! identities of the presenting node's workloads. It also issues an operator credential
//! (`weft-control operator-credential`), which weftctl needs to be answered. The control
//! plane starts with `--init-ca`: the testbed's state directory is new at every `up`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use super::cmd;
use super::error::{Error, Result};
use super::exec::spawn_detached;
use super::process::{Placement, open_netns};
use super::{Config, Pod, Testbed, cgroup, netns, state, topology};

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
/// What `weft-control node-credential` writes into a node's directory.
const NODE_CERT_FILE: &str = "node-cert.pem";
const NODE_KEY_FILE: &str = "node-key.pem";
/// What `weft-control operator-credential` writes into the operator's directory.
const OPERATOR_DIR: &str = "operator";
const OPERATOR_CERT_FILE: &str = "operator-cert.pem";
const OPERATOR_KEY_FILE: &str = "operator-key.pem";

pub fn config_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("config")
}

fn control_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("control")
}

pub fn control_log(state_dir: &Path) -> PathBuf {
    control_dir(state_dir).join("control.log")
}

/// A node's credential certificate (the agent's `--node-cert`).
pub fn node_cert(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join(node).join(NODE_CERT_FILE)
}

/// A node's credential key (the agent's `--node-key`).
pub fn node_key(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join(node).join(NODE_KEY_FILE)
}

/// The value of `--trust-domain` in extra control-plane flags, so node credentials are
/// issued for the trust domain the control plane serves.
pub(super) fn trust_domain_flag(args: &[String]) -> Option<&str> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--trust-domain" {
            return args.next().map(String::as_str);
        }
        if let Some(value) = arg.strip_prefix("--trust-domain=") {
            return Some(value);
        }
    }
    None
}

/// The control plane's cgroup, beside the nodes' and pods'.
pub fn control_cgroup(cgroup_root: &Path) -> PathBuf {
    cgroup_root.join("control")
}

/// The pods as `weft.dev/v1alpha1 Workload` documents. Pods no agent enrols are reached
/// over plain TCP (`protocol: TCP`); the others over HBONE.
pub fn workload_documents(pods: &[Pod], unenrolled: &[String]) -> String {
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
             node: {}\n  ips: [{}]\n  protocol: {}\n",
            pod.name,
            pod.namespace,
            pod.uid,
            labels.join(", "),
            pod.service_account,
            pod.node,
            ips.join(", "),
            if unenrolled.contains(&pod.name) {
                "TCP"
            } else {
                "HBONE"
            },
        ));
    }
    out
}

impl Config {
    /// The same with `args` appended to the control plane's command line, e.g.
    /// `["--cert-ttl", "1m"]`. They travel with the agent configuration (the control plane
    /// runs only with agents), so set [`Config::agent`] first; without an agent they have no
    /// effect.
    pub fn control_args(mut self, args: &[&str]) -> Self {
        if let Some(agent) = self.agent.take() {
            self.agent = Some(agent.control_args(args));
        }
        self
    }
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

    /// The operator credential's certificate, weftctl's `--cert`.
    pub fn operator_cert(&self) -> PathBuf {
        self.state_dir.join(OPERATOR_DIR).join(OPERATOR_CERT_FILE)
    }

    /// The operator credential's key, weftctl's `--key`.
    pub fn operator_key(&self) -> PathBuf {
        self.state_dir.join(OPERATOR_DIR).join(OPERATOR_KEY_FILE)
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
        write_atomic(
            &dir.join(PODS_FILE),
            &workload_documents(&self.pods, &self.unenrolled),
        )
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
            .arg("--init-ca")
            .args(["--listen", &listen.to_string()])
            .args(["--san", &CONTROL_IPV4.to_string()])
            .args(["--metrics-addr", &self.control_metrics_addr().to_string()])
            .args(&agent.control_extra_args)
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
        self.wait_control(listen, &log)?;
        self.issue_node_credentials()
    }

    /// Writes every node's credential (`<state>/<node>/node-cert.pem`, `node-key.pem`) with
    /// `weft-control node-credential`, and the operator's (`<state>/operator/`) with
    /// `weft-control operator-credential`, from the root the control plane uses. A
    /// restarted control plane keeps its root, so credentials issued at an earlier start
    /// stay valid and are kept (`weft-control` never writes over a key file).
    fn issue_node_credentials(&self) -> Result<()> {
        let agent = self.agent.as_ref().ok_or_else(|| Error::NoAgent {
            testbed: self.name.clone(),
        })?;
        for node in &self.nodes {
            if self
                .state_dir
                .join(&node.name)
                .join(NODE_CERT_FILE)
                .is_file()
            {
                continue;
            }
            let mut command = Command::new(agent.control_bin());
            command
                .arg("node-credential")
                .arg("--state-dir")
                .arg(control_dir(&self.state_dir))
                .args(["--node", &node.name])
                .arg("--out-dir")
                .arg(self.state_dir.join(&node.name));
            if let Some(td) = trust_domain_flag(&agent.control_extra_args) {
                command.args(["--trust-domain", td]);
            }
            cmd::run(&mut command)?;
        }
        if self
            .state_dir
            .join(OPERATOR_DIR)
            .join(OPERATOR_CERT_FILE)
            .is_file()
        {
            return Ok(());
        }
        let mut command = Command::new(agent.control_bin());
        command
            .arg("operator-credential")
            .arg("--state-dir")
            .arg(control_dir(&self.state_dir))
            .args(["--name", "testbed"])
            .arg("--out-dir")
            .arg(self.state_dir.join(OPERATOR_DIR));
        if let Some(td) = trust_domain_flag(&agent.control_extra_args) {
            command.args(["--trust-domain", td]);
        }
        cmd::run(&mut command)?;
        Ok(())
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
pub(super) fn write_atomic(path: &Path, text: &str) -> Result<()> {
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
    fn finds_the_trust_domain_in_extra_flags() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(trust_domain_flag(&args(&["--cert-ttl", "1m"])), None);
        assert_eq!(
            trust_domain_flag(&args(&["--cert-ttl", "1m", "--trust-domain", "td.test"])),
            Some("td.test")
        );
        assert_eq!(
            trust_domain_flag(&args(&["--trust-domain=td.test"])),
            Some("td.test")
        );
    }

    #[test]
    fn yaml_files_only() {
        assert_eq!(yaml_file_name(Path::new("/x/a.yaml")).unwrap(), "a.yaml");
        assert!(yaml_file_name(Path::new("/x/a.json")).is_err());
    }
}
