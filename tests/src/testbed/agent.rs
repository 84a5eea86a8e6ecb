//! One `weft-agent` per node: starting, stopping, readiness, and scraping its endpoints.
//!
//! The agent's command line is a contract with the agent crate:
//!
//! ```text
//! weft-agent --node <node> --control https://10.77.0.1:15012 --control-ca <state>/control/root-cert.pem \
//!     --node-cert <state>/<node>/node-cert.pem --node-key <state>/<node>/node-key.pem \
//!     --pods <state>/<node>/pods.json \
//!     --admin-addr 127.0.0.1:15000 --metrics-addr 0.0.0.0:15020 --readiness-addr 0.0.0.0:15021
//! ```
//!
//! The node credential (`--node-cert`, `--node-key`) is issued by `start_control` with
//! `weft-control node-credential` (see `control`).
//!
//! It runs in the node's network namespace and the node's cgroup (never a pod's, or it would
//! capture itself), detached, with stdout and stderr in `<state>/<node>/agent.log`.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::exec::spawn_detached;
use super::process::{Placement, open_netns};
use super::topology::{METRICS_PORT, READINESS_PORT};
use super::{Node, Testbed, cgroup, netns, state};
use crate::http;
use crate::prom::Metrics;

/// The agent's log filter when RUST_LOG is not set.
pub const DEFAULT_RUST_LOG: &str = "info";
/// How long `up` waits for an agent to become ready: it loads eBPF and enrols every pod.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an agent gets to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Timeout of one request to an agent endpoint.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// The readiness path.
pub const READY_PATH: &str = "/healthz/ready";

/// Which agent to run and how.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfig {
    /// The `weft-agent` binary.
    pub bin: PathBuf,
    /// RUST_LOG for the agent.
    pub rust_log: String,
    /// How long to wait for readiness after a start.
    pub ready_timeout: Duration,
    /// Flags appended to the agent's command line (`--worker-threads 1`).
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Flags appended to the control plane's command line (`--cert-ttl 1m`). A
    /// `--trust-domain` here also applies to the node credentials the testbed issues.
    #[serde(default)]
    pub control_extra_args: Vec<String>,
}

impl AgentConfig {
    /// Runs `bin` with RUST_LOG from this process's environment, or [`DEFAULT_RUST_LOG`].
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self {
            bin: bin.into(),
            rust_log: std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_RUST_LOG.to_owned()),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            extra_args: Vec::new(),
            control_extra_args: Vec::new(),
        }
    }

    /// The agent binary for tests: `$WEFT_AGENT_BIN`, or `<workspace>/target/debug/weft-agent`
    /// (honouring CARGO_TARGET_DIR).
    pub fn from_env() -> Self {
        let bin = std::env::var_os("WEFT_AGENT_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(default_agent_bin);
        Self::new(bin)
    }

    /// The same with `args` appended to the control plane's command line (`--cert-ttl 1m`).
    pub fn control_args(mut self, args: &[&str]) -> Self {
        self.control_extra_args
            .extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// The control plane binary: `weft-control` beside the agent's (one `cargo build`).
    pub fn control_bin(&self) -> PathBuf {
        self.bin.with_file_name("weft-control")
    }

    pub(super) fn check(&self) -> Result<()> {
        if !self.bin.is_file() {
            return Err(Error::AgentMissing {
                path: self.bin.clone(),
            });
        }
        let control = self.control_bin();
        if !control.is_file() {
            return Err(Error::ControlMissing { path: control });
        }
        Ok(())
    }
}

fn default_agent_bin() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    target.join("debug").join("weft-agent")
}

impl Testbed {
    fn agent_or_err(&self) -> Result<&AgentConfig> {
        self.agent.as_ref().ok_or_else(|| Error::NoAgent {
            testbed: self.name.clone(),
        })
    }

    /// The agent's arguments for `node` (without the program).
    pub fn agent_args(&self, node: &str) -> Result<Vec<OsString>> {
        let node = self.node(node)?;
        let mut args: Vec<OsString> = vec![
            "--node".into(),
            node.name.clone().into(),
            "--control".into(),
            self.control_url().into(),
            "--control-ca".into(),
            self.control_ca().into(),
            "--node-cert".into(),
            super::control::node_cert(&self.state_dir, &node.name).into(),
            "--node-key".into(),
            super::control::node_key(&self.state_dir, &node.name).into(),
            "--pods".into(),
            state::pods_file(&self.state_dir, &node.name).into(),
            "--admin-addr".into(),
            node.admin_addr.to_string().into(),
        ];
        let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).to_string();
        args.extend([
            "--metrics-addr".into(),
            any(METRICS_PORT).into(),
            "--readiness-addr".into(),
            any(READINESS_PORT).into(),
        ]);
        // Service VIPs in the kernel for this node's pods that the agent does not proxy.
        if !node.pods_cgroup.as_os_str().is_empty() {
            args.extend(["--service-cgroup".into(), node.pods_cgroup.clone().into()]);
        }
        if let Some(agent) = &self.agent {
            args.extend(agent.extra_args.iter().map(OsString::from));
            // Pods' DNS queries for names outside the cluster go to a resolver the testbed
            // runs (`start_resolver` and `--dns-upstream`), never to the machine's own.
            if !agent.extra_args.iter().any(|a| a == "--dns-upstream") {
                args.push("--no-dns-forward".into());
            }
        }
        Ok(args)
    }

    /// The agent's command for `node`, placed in the node's netns and cgroup but not
    /// started.
    pub fn agent_command(&self, node: &str) -> Result<Command> {
        self.agent_command_with(node, &[])
    }

    /// [`Testbed::agent_command`] behind a `wrapper` command line that receives the agent's
    /// binary and arguments as its trailing arguments (`setpriv --reuid=65534 ...`,
    /// `unshare -m ...`). Tests use it to check how the agent fails.
    pub fn agent_command_with(&self, node: &str, wrapper: &[&str]) -> Result<Command> {
        let agent = self.agent_or_err()?;
        let args = self.agent_args(node)?;
        let node = self.node(node)?;
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut c = Command::new(program);
                c.args(wrapper_args).arg(&agent.bin);
                c
            }
            None => Command::new(&agent.bin),
        };
        command
            .args(args)
            .env("RUST_LOG", &agent.rust_log)
            // The log goes to a file: no colour escapes in it.
            .env("NO_COLOR", "1")
            .current_dir(self.state_dir.join(&node.name));
        Placement {
            cgroup_procs: Some(cgroup::open_procs(&node.cgroup)?),
            netns: Some(open_netns(&node.netns_path)?),
            new_session: false,
        }
        .apply(&mut command);
        Ok(command)
    }

    /// Records `agent` as the testbed's agent without starting it (a testbed brought up
    /// without one, for tests that run the agent by hand).
    pub fn set_agent(&mut self, agent: AgentConfig) -> Result<()> {
        agent.check()?;
        self.agent = Some(agent);
        self.save()
    }

    /// The agent log of `node`.
    pub fn agent_log(&self, node: &str) -> Result<PathBuf> {
        Ok(state::agent_log(&self.state_dir, &self.node(node)?.name))
    }

    /// Starts every node's agent, then waits until all are ready.
    pub fn start_agents(&mut self) -> Result<()> {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for name in &names {
            self.spawn_agent(name)?;
        }
        for name in &names {
            self.wait_ready(name)?;
        }
        Ok(())
    }

    /// Starts `node`'s agent (with the arguments `up` used) and waits until it is ready.
    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        self.spawn_agent(node)?;
        self.wait_ready(node)
    }

    fn spawn_agent(&mut self, node: &str) -> Result<()> {
        let command = self.agent_command(node)?;
        let log = self.agent_log(node)?;
        let cg = self.node(node)?.cgroup.clone();
        let process = spawn_detached(command, &log, &cg)?;
        self.node_mut(node)?.agent = Some(process);
        self.save()
    }

    /// Stops `node`'s agent: SIGTERM, then SIGKILL after [`STOP_GRACE`]. The pods and
    /// their processes stay as they are.
    pub fn stop_agent(&mut self, node: &str) -> Result<()> {
        if let Some(agent) = self.node_mut(node)?.agent.take() {
            agent.stop(STOP_GRACE)?;
        }
        self.save()
    }

    /// Stops `node`'s agent and starts it again with the same arguments.
    pub fn restart_agent(&mut self, node: &str) -> Result<()> {
        self.stop_agent(node)?;
        self.start_agent(node)
    }

    /// Whether `node`'s agent process runs.
    pub fn agent_alive(&self, node: &str) -> Result<bool> {
        Ok(self.node(node)?.agent.is_some_and(|a| a.is_alive()))
    }

    /// Waits until `node`'s agent answers 200 on its readiness endpoint, failing early if
    /// it exits, and with its log's tail if it is not ready in time.
    pub fn wait_ready(&self, node: &str) -> Result<()> {
        let timeout = self.agent_or_err()?.ready_timeout;
        let node = self.node(node)?;
        let log = state::agent_log(&self.state_dir, &node.name);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(agent) = node.agent
                && !agent.is_alive()
            {
                return Err(Error::AgentExited {
                    node: node.name.clone(),
                    status: format!("pid {} is gone", agent.pid),
                    tail: state::tail(&log, 20),
                    log,
                });
            }
            let last = match self.node_http_get(&node.name, node.readiness_addr, READY_PATH) {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => format!("HTTP {} {}", r.status, r.body.trim()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::AgentNotReady {
                    node: node.name.clone(),
                    secs: timeout.as_secs(),
                    last,
                    tail: state::tail(&log, 20),
                    log,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `GET path` from `addr`, as seen from inside `node`'s network namespace.
    pub fn node_http_get(
        &self,
        node: &str,
        addr: SocketAddr,
        path: &str,
    ) -> Result<http::Response> {
        let node = self.node(node)?;
        netns::in_netns(&node.netns_path, || http::get(addr, path, HTTP_TIMEOUT))?.map_err(
            |source| Error::Http {
                what: format!("GET http://{addr}{path} in {}", node.name),
                source,
            },
        )
    }

    /// The raw Prometheus text of `node`'s agent.
    pub fn metrics_text(&self, node: &str) -> Result<String> {
        let n: &Node = self.node(node)?;
        let response = self.node_http_get(node, n.metrics_addr, "/metrics")?;
        if response.status != 200 {
            return Err(Error::Http {
                what: format!("GET http://{}/metrics in {node}", n.metrics_addr),
                source: http::Error::Malformed {
                    addr: n.metrics_addr,
                    reason: format!("status {}: {}", response.status, response.body.trim()),
                },
            });
        }
        Ok(response.body)
    }

    /// The parsed metrics of `node`'s agent.
    pub fn metrics(&self, node: &str) -> Result<Metrics> {
        let text = self.metrics_text(node)?;
        Metrics::parse(&text).map_err(|source| Error::Metrics {
            node: node.to_owned(),
            source,
        })
    }

    /// `GET /config_dump` from `node`'s admin endpoint.
    pub fn config_dump(&self, node: &str) -> Result<http::Response> {
        let addr = self.node(node)?.admin_addr;
        self.node_http_get(node, addr, "/config_dump")
    }
}
