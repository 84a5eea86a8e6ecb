//! The edge gateway's "node": its own network namespace on the fabric bridge, with no agent
//! and no pods, running one `weft-gateway` configured by the testbed's control plane.
//!
//! ```text
//!  <name>-fabric:  br0 ── gw ─┐
//!                             │ veth
//!  <name>-gateway:          eth0 10.77.0.2/24, fd77::2/64; pod subnets routed via their nodes
//! ```
//!
//! The gateway's command line is a contract with the gateway crate:
//!
//! ```text
//! weft-gateway --control https://10.77.0.1:15012 --control-ca <state>/control/root-cert.pem \
//!     --gateway-cert <state>/gateway/gateway-cert.pem --gateway-key <state>/gateway/gateway-key.pem \
//!     --state-dir <state>/gateway \
//!     --admin-addr 127.0.0.1:15000 --metrics-addr 0.0.0.0:15020 --readiness-addr 0.0.0.0:15021
//! ```
//!
//! Its credential is issued with `weft-control gateway-credential` once the control plane
//! serves. It runs in the gateway's namespace and its own cgroup
//! (`<cgroup2>/<name>/gateway`), detached, stdout and stderr in `<state>/gateway/gateway.log`
//! (the access log is on stdout). `down` stops it with SIGTERM first, then kills whatever is
//! left in the testbed's cgroups and deletes the namespace with the others.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cmd::{self, ip_in};
use super::error::{Error, Result};
use super::exec::{Background, spawn_detached};
use super::process::{Placement, ProcessId, open_netns};
use super::{Testbed, cgroup, netns, state, topology};
use crate::http;
use crate::prom::Metrics;

/// The gateway's address on the fabric bridge (the control plane has .1, nodes .11 up).
pub const GATEWAY_IPV4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const GATEWAY_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
/// The gateway's name in `status` and its directory in the state directory.
pub const GATEWAY_NAME: &str = "gateway";
/// Its port on the fabric bridge.
const FABRIC_PORT: &str = "gw";
/// The gateway's admin, metrics and readiness ports (the agent's, in its own namespace).
pub const GATEWAY_ADMIN_PORT: u16 = topology::ADMIN_PORT;
pub const GATEWAY_METRICS_PORT: u16 = topology::METRICS_PORT;
pub const GATEWAY_READINESS_PORT: u16 = topology::READINESS_PORT;
/// What `weft-control gateway-credential` writes.
const GATEWAY_CERT_FILE: &str = "gateway-cert.pem";
const GATEWAY_KEY_FILE: &str = "gateway-key.pem";
/// The gateway's log filter when RUST_LOG is not set.
pub const DEFAULT_RUST_LOG: &str = "info";
/// How long `up` waits for the gateway to be ready: it needs its configuration from the
/// control plane first.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the gateway gets to drain and exit after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Timeout of one request to a gateway endpoint.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// The SPIFFE identity the gateway presents in the mesh (trust domain cluster.local).
pub const GATEWAY_SPIFFE_ID: &str = "spiffe://cluster.local/ns/weft-system/sa/weft-gateway";
/// The same without `spiffe://`, as AuthorizationPolicy principals are written.
pub const GATEWAY_PRINCIPAL: &str = "cluster.local/ns/weft-system/sa/weft-gateway";

/// Which gateway to run and how.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayConfig {
    /// The `weft-gateway` binary; `None`: the one beside the agent binary.
    pub bin: Option<PathBuf>,
    /// RUST_LOG for the gateway.
    pub rust_log: String,
    /// How long to wait for readiness after a start.
    pub ready_timeout: Duration,
    /// Flags appended to the gateway's command line (`--worker-threads 1`).
    #[serde(default)]
    pub extra_args: Vec<String>,
}

impl GatewayConfig {
    /// `$WEFT_GATEWAY_BIN`, or (when unset) the `weft-gateway` beside the agent binary;
    /// RUST_LOG from this process's environment, or [`DEFAULT_RUST_LOG`].
    pub fn from_env() -> Self {
        Self {
            bin: std::env::var_os("WEFT_GATEWAY_BIN").map(PathBuf::from),
            rust_log: std::env::var("RUST_LOG").unwrap_or_else(|_| DEFAULT_RUST_LOG.to_owned()),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            extra_args: Vec::new(),
        }
    }

    /// The same with `args` appended to the gateway's command line.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// The binary: [`GatewayConfig::bin`], or `weft-gateway` beside `agent_bin`.
    pub fn resolve_bin(&self, agent_bin: &Path) -> PathBuf {
        self.bin
            .clone()
            .unwrap_or_else(|| agent_bin.with_file_name("weft-gateway"))
    }
}

/// The gateway's namespace, address and process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayNode {
    /// Always [`GATEWAY_NAME`].
    pub name: String,
    pub netns: String,
    pub netns_path: PathBuf,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// `<cgroup2>/<testbed>/gateway`.
    pub cgroup: PathBuf,
    /// `<state>/gateway`: the gateway's `--state-dir`, its credential and its log.
    pub dir: PathBuf,
    /// The binary it runs.
    pub bin: PathBuf,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    /// The running gateway, if started.
    #[serde(default)]
    pub process: Option<ProcessId>,
}

/// `<name>-gateway`.
pub fn gateway_netns(name: &str) -> String {
    format!("{name}-{GATEWAY_NAME}")
}

/// The gateway node of testbed `name`, running `bin`.
pub fn node(name: &str, state_dir: &Path, cgroup_root: &Path, bin: PathBuf) -> GatewayNode {
    let netns = gateway_netns(name);
    GatewayNode {
        name: GATEWAY_NAME.to_owned(),
        netns_path: netns::path(&netns),
        netns,
        ipv4: GATEWAY_IPV4,
        ipv6: GATEWAY_IPV6,
        cgroup: cgroup_root.join(GATEWAY_NAME),
        dir: state_dir.join(GATEWAY_NAME),
        bin,
        admin_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, GATEWAY_ADMIN_PORT)),
        metrics_addr: SocketAddr::from((GATEWAY_IPV4, GATEWAY_METRICS_PORT)),
        readiness_addr: SocketAddr::from((GATEWAY_IPV4, GATEWAY_READINESS_PORT)),
        process: None,
    }
}

/// Creates the gateway's namespace, plugs it into the fabric bridge and routes every
/// node's pod subnets via that node (the gateway reaches pods on 15008 as a node would).
pub fn build_network(name: &str, gw: &GatewayNode, nodes: &[topology::Node]) -> Result<()> {
    let fabric = topology::fabric_netns(name);
    netns::add(&gw.netns)?;
    ip_in(&gw.netns, &["link", "set", "lo", "up"])?;
    netns::sysctls(
        &gw.netns_path,
        &[
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ],
    )?;
    ip_in(
        &gw.netns,
        &[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            FABRIC_PORT,
            "netns",
            &fabric,
        ],
    )?;
    ip_in(
        &fabric,
        &["link", "set", FABRIC_PORT, "master", "br0", "up"],
    )?;
    let v4 = format!("{}/24", gw.ipv4);
    let v6 = format!("{}/64", gw.ipv6);
    ip_in(&gw.netns, &["-4", "addr", "add", &v4, "dev", "eth0"])?;
    ip_in(
        &gw.netns,
        &["-6", "addr", "add", &v6, "dev", "eth0", "nodad"],
    )?;
    ip_in(&gw.netns, &["link", "set", "eth0", "up"])?;
    for node in nodes {
        let (v4, v6) = topology::pod_subnets(node);
        let via4 = node.ipv4.to_string();
        let via6 = node.ipv6.to_string();
        ip_in(&gw.netns, &["route", "add", &v4, "via", &via4])?;
        ip_in(&gw.netns, &["-6", "route", "add", &v6, "via", &via6])?;
    }
    Ok(())
}

/// The gateway's log.
pub fn gateway_log(dir: &Path) -> PathBuf {
    dir.join("gateway.log")
}

impl Testbed {
    /// The gateway node, if the testbed has one ([`super::Config::with_gateway`]).
    pub fn gateway(&self) -> Result<&GatewayNode> {
        self.gateway.as_ref().ok_or_else(|| self.no_gateway())
    }

    fn no_gateway(&self) -> Error {
        Error::NoGateway {
            testbed: self.name.clone(),
        }
    }

    /// The gateway's log: stdout (one JSON access-log line per request) and stderr.
    pub fn gateway_log(&self) -> Result<PathBuf> {
        Ok(gateway_log(&self.gateway()?.dir))
    }

    /// The gateway credential's certificate (`--gateway-cert`).
    pub fn gateway_cert(&self) -> Result<PathBuf> {
        Ok(self.gateway()?.dir.join(GATEWAY_CERT_FILE))
    }

    /// The gateway credential's key (`--gateway-key`).
    pub fn gateway_key(&self) -> Result<PathBuf> {
        Ok(self.gateway()?.dir.join(GATEWAY_KEY_FILE))
    }

    /// The gateway's arguments (without the program): its control plane, credential,
    /// state directory and endpoints, then the configured extra flags.
    pub fn gateway_args(&self) -> Result<Vec<OsString>> {
        let gw = self.gateway()?;
        let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).to_string();
        let mut args: Vec<OsString> = vec![
            "--control".into(),
            self.control_url().into(),
            "--control-ca".into(),
            self.control_ca().into(),
            "--gateway-cert".into(),
            self.gateway_cert()?.into(),
            "--gateway-key".into(),
            self.gateway_key()?.into(),
            "--state-dir".into(),
            gw.dir.clone().into(),
            "--admin-addr".into(),
            gw.admin_addr.to_string().into(),
            "--metrics-addr".into(),
            any(GATEWAY_METRICS_PORT).into(),
            "--readiness-addr".into(),
            any(GATEWAY_READINESS_PORT).into(),
        ];
        if let Some(td) = self
            .agent
            .as_ref()
            .and_then(|a| super::control::trust_domain_flag(&a.control_extra_args))
        {
            args.extend(["--trust-domain".into(), td.into()]);
        }
        if let Some(config) = &self.gateway_config {
            args.extend(config.extra_args.iter().map(OsString::from));
        }
        Ok(args)
    }

    /// A command that runs in the gateway's namespace, outside every cgroup of the mesh
    /// (a process on the gateway's host), starting in the gateway's directory.
    pub fn gateway_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let gw = self.gateway()?;
        let mut command = Command::new(program);
        command.current_dir(&gw.dir);
        Placement {
            cgroup_procs: None,
            netns: Some(open_netns(&gw.netns_path)?),
            new_session: false,
        }
        .apply(&mut command);
        Ok(command)
    }

    /// Runs `argv` in the gateway's namespace; its output, whatever its exit status.
    pub fn exec_gateway(&self, argv: &[&str]) -> Result<Output> {
        let (program, args) = argv.split_first().ok_or_else(|| Error::Command {
            command: String::new(),
            status: "not run".to_owned(),
            stderr: "empty command line".to_owned(),
        })?;
        cmd::output(self.gateway_command(program)?.args(args))
    }

    /// Starts `argv` in the gateway's namespace and cgroup, detached, with its log in the
    /// gateway's directory (`tcpdump` on its link, a second gateway process). `down` kills
    /// it with the cgroup.
    pub fn spawn_gateway_side(&self, argv: &[&str]) -> Result<Background> {
        let gw = self.gateway()?;
        let (program, args) = argv.split_first().ok_or_else(|| Error::Command {
            command: String::new(),
            status: "not run".to_owned(),
            stderr: "empty command line".to_owned(),
        })?;
        let base = Path::new(program)
            .file_name()
            .map_or_else(|| "process".into(), |n| n.to_string_lossy().into_owned());
        let log = (1..)
            .map(|n| gw.dir.join(format!("{base}-{n}.log")))
            .find(|p| !p.exists())
            .unwrap_or_else(|| gw.dir.join(format!("{base}.log")));
        let mut command = Command::new(program);
        command.args(args).current_dir(&gw.dir);
        Placement {
            cgroup_procs: Some(cgroup::open_procs(&gw.cgroup)?),
            netns: Some(open_netns(&gw.netns_path)?),
            new_session: false,
        }
        .apply(&mut command);
        spawn_detached(command, &log, &gw.cgroup).map(|process| Background {
            pod: GATEWAY_NAME.to_owned(),
            process,
            log,
        })
    }

    /// Creates the gateway's cgroup and directory and issues its credential with
    /// `weft-control gateway-credential` (kept across restarts of the control plane, which
    /// keeps its root).
    pub(super) fn prepare_gateway(&self) -> Result<()> {
        let gw = self.gateway()?;
        std::fs::create_dir_all(&gw.dir).map_err(Error::io("creating", &gw.dir))?;
        cgroup::create(&gw.cgroup)?;
        if self.gateway_cert()?.is_file() {
            return Ok(());
        }
        let agent = self.agent.as_ref().ok_or_else(|| Error::NoAgent {
            testbed: self.name.clone(),
        })?;
        let mut command = Command::new(agent.control_bin());
        command
            .arg("gateway-credential")
            .arg("--state-dir")
            .arg(self.state_dir.join("control"))
            .arg("--out-dir")
            .arg(&gw.dir);
        if let Some(td) = super::control::trust_domain_flag(&agent.control_extra_args) {
            command.args(["--trust-domain", td]);
        }
        cmd::run(&mut command)?;
        Ok(())
    }

    /// Starts the gateway and waits until it is ready.
    pub fn start_gateway(&mut self) -> Result<()> {
        let gw = self.gateway()?.clone();
        if !gw.bin.is_file() {
            return Err(Error::GatewayMissing { path: gw.bin });
        }
        self.prepare_gateway()?;
        let rust_log = self
            .gateway_config
            .as_ref()
            .map_or_else(|| DEFAULT_RUST_LOG.to_owned(), |c| c.rust_log.clone());
        let mut command = Command::new(&gw.bin);
        command
            .args(self.gateway_args()?)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .current_dir(&gw.dir);
        Placement {
            cgroup_procs: Some(cgroup::open_procs(&gw.cgroup)?),
            netns: Some(open_netns(&gw.netns_path)?),
            new_session: false,
        }
        .apply(&mut command);
        let process = spawn_detached(command, &gateway_log(&gw.dir), &gw.cgroup)?;
        if let Some(g) = self.gateway.as_mut() {
            g.process = Some(process);
        }
        self.save()?;
        self.wait_gateway_ready()
    }

    /// Stops the gateway: SIGTERM (it drains), then SIGKILL after [`STOP_GRACE`].
    pub fn stop_gateway(&mut self) -> Result<()> {
        if let Some(process) = self.gateway.as_mut().and_then(|g| g.process.take()) {
            process.stop(STOP_GRACE)?;
        }
        self.save()
    }

    /// Whether the gateway process runs.
    pub fn gateway_alive(&self) -> bool {
        self.gateway
            .as_ref()
            .and_then(|g| g.process)
            .is_some_and(|p| p.is_alive())
    }

    /// Waits until the gateway answers 200 on `/healthz/ready`, failing early (with its
    /// log's tail) if it exits or is not ready in time.
    pub fn wait_gateway_ready(&self) -> Result<()> {
        let gw = self.gateway()?;
        let timeout = self
            .gateway_config
            .as_ref()
            .map_or(DEFAULT_READY_TIMEOUT, |c| c.ready_timeout);
        let log = gateway_log(&gw.dir);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = gw.process
                && !p.is_alive()
            {
                return Err(Error::GatewayNotReady {
                    status: format!("it exited (pid {} is gone)", p.pid),
                    tail: state::tail(&log, 20),
                    log,
                });
            }
            let last = match self.gateway_http_get(gw.readiness_addr, super::READY_PATH) {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => format!("HTTP {} {}", r.status, r.body.trim()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::GatewayNotReady {
                    status: format!(
                        "not ready after {} s (last readiness answer: {last})",
                        timeout.as_secs()
                    ),
                    tail: state::tail(&log, 20),
                    log,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `GET path` from `addr`, as seen from inside the gateway's namespace.
    pub fn gateway_http_get(&self, addr: SocketAddr, path: &str) -> Result<http::Response> {
        let gw = self.gateway()?;
        netns::in_netns(&gw.netns_path, || http::get(addr, path, HTTP_TIMEOUT))?.map_err(|source| {
            Error::Http {
                what: format!("GET http://{addr}{path} in the gateway's namespace"),
                source,
            }
        })
    }

    /// `GET path` from the gateway's admin endpoint (`/config`, `/analytics?since=...`).
    pub fn gateway_admin(&self, path: &str) -> Result<http::Response> {
        let addr = self.gateway()?.admin_addr;
        self.gateway_http_get(addr, path)
    }

    /// The gateway's parsed Prometheus metrics.
    pub fn gateway_metrics(&self) -> Result<Metrics> {
        let addr = self.gateway()?.metrics_addr;
        let response = self.gateway_http_get(addr, "/metrics")?;
        Metrics::parse(&response.body).map_err(|source| Error::Metrics {
            node: GATEWAY_NAME.to_owned(),
            source,
        })
    }

    /// The gateway's address on the fabric, which clients (pods, nodes) connect to.
    pub fn gateway_ip(&self) -> Result<IpAddr> {
        Ok(self.gateway()?.ipv4.into())
    }

    /// Writes `yaml` as `<file_name>` into the control plane's configuration directory (it
    /// reloads it; a file of the same name is replaced). The gateway documents (Gateway,
    /// HTTPRoute, GRPCRoute, ApiPolicy, Consumer, Plan, Backend, Secret) go there like any
    /// other configuration.
    pub fn apply_yaml(&self, file_name: &str, yaml: &str) -> Result<()> {
        let path = Path::new(file_name);
        if path.components().count() != 1
            || !(file_name.ends_with(".yaml") || file_name.ends_with(".yml"))
            || file_name == super::control::PODS_FILE
        {
            return Err(Error::ConfigFile {
                path: path.to_path_buf(),
                reason: format!(
                    "a configuration file name ends in .yaml or .yml, has no directory and is \
                     not {}",
                    super::control::PODS_FILE
                ),
            });
        }
        let dir = self.config_dir();
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        super::control::write_atomic(&dir.join(file_name), yaml)
    }
}

/// The hex SHA-256 of `key`, as a Consumer's `apiKeySha256` holds it (computed with
/// `sha256sum`, which coreutils always has, so the testbed needs no hashing crate).
pub fn api_key_sha256(key: &str) -> Result<String> {
    use std::io::Write as _;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: "sha256sum".to_owned(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(key.as_bytes())
            .map_err(Error::io("writing to", "sha256sum"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(Error::io("reading from", "sha256sum"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .filter(|h| h.len() == 64)
        .map(str::to_owned)
        .ok_or_else(|| Error::Command {
            command: "sha256sum".to_owned(),
            status: cmd::describe_status(out.status),
            stderr: text.into_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        let gw = node(
            "weft-x",
            Path::new("/run/weft-testbed/weft-x"),
            Path::new("/sys/fs/cgroup/weft-x"),
            PathBuf::from("/bin/weft-gateway"),
        );
        assert_eq!(gw.netns, "weft-x-gateway");
        assert_eq!(gw.ipv4.to_string(), "10.77.0.2");
        assert_eq!(gw.ipv6.to_string(), "fd77::2");
        assert_eq!(gw.metrics_addr.to_string(), "10.77.0.2:15020");
        assert_eq!(gw.cgroup, Path::new("/sys/fs/cgroup/weft-x/gateway"));
        assert!(topology::owns_netns("weft-x", &gw.netns));
        assert!(!topology::owns_netns("weft", &gw.netns));
    }

    #[test]
    fn hashes_keys_like_the_consumer_documents() {
        // FIPS 180-2's example.
        assert_eq!(
            api_key_sha256("abc").unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
