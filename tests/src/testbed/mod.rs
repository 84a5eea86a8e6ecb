//! A Weft mesh on one machine: nodes and pods are network namespaces, each pod has its own
//! cgroup, one agent runs per node.
//!
//! ```no_run
//! use weft_tests::testbed::{Config, TestbedGuard};
//!
//! let tb = TestbedGuard::up(&Config::named("weft-e2e-doc"))?;
//! let out = tb.exec("pod-1a", &["curl", "-s", "http://10.78.2.11:8000/"])?;
//! assert!(out.status.success());
//! // Dropping the guard takes the testbed down, even when the test panicked.
//! # Ok::<(), weft_tests::testbed::Error>(())
//! ```
//!
//! Everything a testbed creates is prefixed with its name (netns `<name>-node-1`, cgroup
//! `<cgroup2>/<name>`, pins `/sys/fs/bpf/<name>`, state `/run/weft-testbed/<name>`), so
//! several testbeds coexist, and `down` (or an `up` after a crash) finds its leftovers from
//! the name alone.

mod agent;
mod bpffs;
pub mod cgroup;
pub mod cmd;
pub mod control;
pub mod dns;
mod error;
mod exec;
pub mod gateway;
pub mod netns;
mod network;
pub mod process;
pub mod state;
pub mod topology;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use agent::{AgentConfig, READY_PATH};
pub use error::{Error, Result};
pub use exec::Background;
pub use gateway::{GatewayConfig, GatewayNode};
pub use topology::{Node, Pod};

/// How long `down` gives the agents to exit after SIGTERM before it kills everything.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(10);
/// How long `down` waits for killed processes to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// What to bring up.
#[derive(Debug, Clone)]
pub struct Config {
    /// Prefix of everything the testbed creates; starts with "weft".
    pub name: String,
    /// Number of nodes.
    pub nodes: u32,
    /// Number of pods per node.
    pub pods_per_node: u32,
    /// The agent to run on every node; `None` brings up the network only.
    pub agent: Option<AgentConfig>,
    /// Pods that exist (and are listed as workloads) but that no agent enrols, so their
    /// traffic is never captured: the "no mesh" baseline of the benchmarks.
    pub unenrolled: Vec<String>,
    /// The edge gateway to run in its own namespace on the fabric (needs the agent: the
    /// control plane runs with it); `None`: no gateway.
    pub gateway: Option<GatewayConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self::named(topology::DEFAULT_NAME)
    }
}

impl Config {
    /// The default topology (2 nodes x 2 pods, no agent) under `name`.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            nodes: topology::DEFAULT_NODES,
            pods_per_node: topology::DEFAULT_PODS_PER_NODE,
            agent: None,
            unenrolled: Vec::new(),
            gateway: None,
        }
    }

    /// The same with `nodes` nodes of `pods` pods each.
    pub fn size(mut self, nodes: u32, pods: u32) -> Self {
        self.nodes = nodes;
        self.pods_per_node = pods;
        self
    }

    /// The same with an agent on every node.
    pub fn agent(mut self, agent: AgentConfig) -> Self {
        self.agent = Some(agent);
        self
    }

    /// The same with `pods` left out of every node's enrolment file.
    pub fn unenrolled(mut self, pods: &[&str]) -> Self {
        self.unenrolled = pods.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    /// The same with an edge gateway ([`GatewayConfig::from_env`]: `$WEFT_GATEWAY_BIN` or
    /// the `weft-gateway` beside the agent binary) in namespace `<name>-gateway`.
    pub fn with_gateway(self) -> Self {
        self.gateway(GatewayConfig::from_env())
    }

    /// The same with the gateway `gateway`.
    pub fn gateway(mut self, gateway: GatewayConfig) -> Self {
        self.gateway = Some(gateway);
        self
    }
}

/// A testbed that is up. It is also the content of `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Testbed {
    name: String,
    cgroup_root: PathBuf,
    state_dir: PathBuf,
    pin_dir: PathBuf,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    agent: Option<AgentConfig>,
    /// Pods no agent enrols (see [`Config::unenrolled`]).
    #[serde(default)]
    unenrolled: Vec<String>,
    /// The control plane process, started with the agents.
    #[serde(default)]
    control: Option<process::ProcessId>,
    /// The edge gateway's node, if configured.
    #[serde(default)]
    gateway: Option<GatewayNode>,
    #[serde(default)]
    gateway_config: Option<GatewayConfig>,
}

// === impl Testbed: lifecycle ===

impl Testbed {
    /// Brings a testbed up: cleans whatever an earlier run of the same name left, creates the
    /// namespaces, links and cgroups, writes the agents' input files, and, if configured,
    /// starts one agent per node and waits until each is ready.
    ///
    /// If anything fails half-way, what was created is taken down again before the error is
    /// returned.
    pub fn up(config: &Config) -> Result<Self> {
        require_root("bringing a testbed up")?;
        topology::validate_name(&config.name)?;
        topology::validate_size(config.nodes, config.pods_per_node)?;
        if let Some(agent) = &config.agent {
            agent.check()?;
        }
        if let Some(gw) = &config.gateway {
            let Some(agent) = &config.agent else {
                return Err(Error::NoAgent {
                    testbed: config.name.clone(),
                });
            };
            let bin = gw.resolve_bin(&agent.bin);
            if !bin.is_file() {
                return Err(Error::GatewayMissing { path: bin });
            }
        }
        down(&config.name)?;
        match Self::create(config) {
            Ok(tb) => Ok(tb),
            Err(e) => {
                // Best effort: the error that matters is the one that stopped `up`.
                let _ = down(&config.name);
                Err(e)
            }
        }
    }

    fn create(config: &Config) -> Result<Self> {
        let name = &config.name;
        let cgroup2 = cgroup::cgroup2_mount()?;
        let (nodes, pods) = topology::build(name, config.nodes, config.pods_per_node, &cgroup2);
        let cgroup_root = topology::cgroup_root(&cgroup2, name);
        let gateway_node = config
            .gateway
            .as_ref()
            .zip(config.agent.as_ref())
            .map(|(gw, agent)| {
                gateway::node(
                    name,
                    &state::state_dir(name),
                    &cgroup_root,
                    gw.resolve_bin(&agent.bin),
                )
            });
        let mut tb = Self {
            name: name.clone(),
            cgroup_root: topology::cgroup_root(&cgroup2, name),
            state_dir: state::state_dir(name),
            pin_dir: bpffs::pin_dir(name),
            nodes,
            pods,
            agent: config.agent.clone(),
            unenrolled: config.unenrolled.clone(),
            control: None,
            gateway: gateway_node,
            gateway_config: config.gateway.clone(),
        };
        for pod in &tb.unenrolled {
            tb.pod(pod)?;
        }
        std::fs::create_dir_all(&tb.state_dir).map_err(Error::io("creating", &tb.state_dir))?;
        // Saved first, so that `down` from another process finds the testbed even if the
        // rest fails.
        tb.save()?;
        for cg in tb
            .nodes
            .iter()
            .map(|n| &n.cgroup)
            .chain(tb.pods.iter().map(|p| &p.cgroup))
        {
            cgroup::create(cg)?;
        }
        for pod in &tb.pods {
            let dir = state::pod_dir(&tb.state_dir, &pod.name);
            std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        }
        network::build(name, &tb.nodes, &tb.pods)?;
        if let Some(gw) = &tb.gateway {
            gateway::build_network(name, gw, &tb.nodes)?;
        }
        bpffs::ensure_mounted()?;
        state::write_agent_inputs(&tb.state_dir, &tb.nodes, &tb.pods, &tb.unenrolled)?;
        tb.write_control_config()?;
        if tb.agent.is_some() {
            tb.start_control()?;
            tb.start_agents()?;
            if tb.gateway.is_some() {
                tb.start_gateway()?;
            }
        }
        tb.save()?;
        Ok(tb)
    }

    /// The testbed `name` as recorded in its state file by `up`.
    pub fn load(name: &str) -> Result<Self> {
        topology::validate_name(name)?;
        let path = state::state_file(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotUp {
                    name: name.to_owned(),
                    path,
                });
            }
            Err(e) => return Err(Error::io("reading", path)(e)),
        };
        serde_json::from_str(&text).map_err(|source| Error::State { path, source })
    }

    /// Rewrites `state.json` (after agents were started or stopped).
    pub fn save(&self) -> Result<()> {
        state::write_json(&state::state_file(&self.name), self)
    }

    /// Takes the testbed down; see [`down`].
    pub fn down(self) -> Result<()> {
        down(&self.name)
    }
}

// === impl Testbed: accessors ===

impl Testbed {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Pods that no agent enrols (their traffic is never captured).
    pub fn unenrolled(&self) -> &[String] {
        &self.unenrolled
    }

    /// `<cgroup2>/<name>`, parent of `pods/` and `nodes/`.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// `/run/weft-testbed/<name>`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `/sys/fs/bpf/<name>`.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The agent every node runs, if any.
    pub fn agent_config(&self) -> Option<&AgentConfig> {
        self.agent.as_ref()
    }

    /// The pod called `name`; an unknown name lists the pods that exist.
    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::UnknownPod {
                testbed: self.name.clone(),
                pod: name.to_owned(),
                known: self.pods.iter().map(|p| p.name.clone()).collect(),
            })
    }

    /// The node called `name`; an unknown name lists the nodes that exist.
    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| self.unknown_node(name))
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut Node> {
        let err = self.unknown_node(name);
        self.nodes.iter_mut().find(|n| n.name == name).ok_or(err)
    }

    fn unknown_node(&self, name: &str) -> Error {
        Error::UnknownNode {
            testbed: self.name.clone(),
            node: name.to_owned(),
            known: self.nodes.iter().map(|n| n.name.clone()).collect(),
        }
    }

    /// The node a pod runs on.
    pub fn node_of(&self, pod: &Pod) -> Result<&Node> {
        self.node(&pod.node)
    }

    /// The working directory of processes started in `pod`: `<state dir>/<pod>`.
    pub fn pod_dir(&self, pod: &str) -> Result<PathBuf> {
        let pod = self.pod(pod)?;
        Ok(state::pod_dir(&self.state_dir, &pod.name))
    }
}

/// Takes testbed `name` down, whether it is up, half up after a crash, or already gone:
/// stops the agents (SIGTERM, then SIGKILL after a grace period), kills every process left
/// in the testbed's cgroups, deletes its namespaces (their links go with them), and removes
/// its cgroups, bpffs pin directory and state directory.
pub fn down(name: &str) -> Result<()> {
    require_root("taking a testbed down")?;
    topology::validate_name(name)?;
    let cgroup_root = cgroup::cgroup2_mount().map(|m| topology::cgroup_root(&m, name));

    // Agents first and gently: a clean exit detaches what they attached. The gateway
    // drains on SIGTERM, so it gets the same chance.
    if let Ok(tb) = Testbed::load(name) {
        if let Some(gw) = tb.gateway.as_ref().and_then(|g| g.process) {
            gw.signal(nix::sys::signal::Signal::SIGTERM)?;
        }
        for node in &tb.nodes {
            if let Some(agent) = node.agent {
                agent.signal(nix::sys::signal::Signal::SIGTERM)?;
            }
        }
        for node in &tb.nodes {
            if let Some(agent) = node.agent {
                agent.wait_exit(AGENT_STOP_GRACE);
            }
        }
        if let Some(gw) = tb.gateway.as_ref().and_then(|g| g.process) {
            gw.wait_exit(gateway::STOP_GRACE);
        }
    }
    if let Ok(root) = &cgroup_root {
        cgroup::kill_tree(root, KILL_TIMEOUT)?;
    }
    for ns in netns::list()? {
        if topology::owns_netns(name, &ns) {
            netns::delete(&ns)?;
        }
    }
    if let Ok(root) = &cgroup_root {
        cgroup::remove_tree(root)?;
    }
    bpffs::remove_pins(name)?;
    dns::remove_netns_etc(name)?;
    let dir = state::state_dir(name);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("removing", dir)(e)),
        _ => Ok(()),
    }
}

/// Fails with [`Error::NotRoot`] unless this process is root.
pub fn require_root(what: &'static str) -> Result<()> {
    if crate::is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot { what })
    }
}

/// The namespaces of testbed `name` that exist now (for checks that `down` left nothing).
pub fn leftover_netns(name: &str) -> Result<Vec<String>> {
    Ok(netns::list()?
        .into_iter()
        .filter(|ns| topology::owns_netns(name, ns))
        .collect())
}

/// A testbed that is taken down when the guard is dropped, also when a test panics.
#[derive(Debug)]
pub struct TestbedGuard {
    testbed: Testbed,
}

impl TestbedGuard {
    /// [`Testbed::up`] behind a guard.
    pub fn up(config: &Config) -> Result<Self> {
        Testbed::up(config).map(|testbed| Self { testbed })
    }
}

impl std::ops::Deref for TestbedGuard {
    type Target = Testbed;

    fn deref(&self) -> &Testbed {
        &self.testbed
    }
}

impl std::ops::DerefMut for TestbedGuard {
    fn deref_mut(&mut self) -> &mut Testbed {
        &mut self.testbed
    }
}

impl Drop for TestbedGuard {
    fn drop(&mut self) {
        if let Err(e) = down(&self.testbed.name) {
            eprintln!("taking testbed {} down failed: {e}", self.testbed.name);
        }
    }
}
