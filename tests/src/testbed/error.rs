//! The testbed's error type: every variant names what failed and, where a command failed,
//! the command line and its stderr.

use std::path::PathBuf;

/// Anything that can go wrong building, using or tearing down a testbed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{what} needs root (uid 0): it creates namespaces, cgroups and loads eBPF; run it as root"
    )]
    NotRoot { what: &'static str },

    #[error("invalid testbed name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error("invalid topology: {reason}")]
    InvalidTopology { reason: String },

    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },

    #[error(
        "could not run `{command}`: {source} (is it installed? `cargo xtask` installs what the testbed needs)"
    )]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "no cgroup2 mount in /proc/self/mountinfo; mount one (`mount -t cgroup2 none /sys/fs/cgroup`)"
    )]
    NoCgroup2,

    #[error("mounting bpffs at {}: {source}", path.display())]
    MountBpffs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },

    #[error("entering network namespace {}: {source}", path.display())]
    Setns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },

    #[error("a thread inside network namespace {} panicked", path.display())]
    NetnsThread { path: PathBuf },

    #[error("no pod named {pod:?} in testbed {testbed:?}; its pods are: {}", known.join(", "))]
    UnknownPod {
        testbed: String,
        pod: String,
        known: Vec<String>,
    },

    #[error("no node named {node:?} in testbed {testbed:?}; its nodes are: {}", known.join(", "))]
    UnknownNode {
        testbed: String,
        node: String,
        known: Vec<String>,
    },

    #[error("testbed {name:?} is not up ({} is missing); bring it up with `cargo xtask testbed up --name {name}`", path.display())]
    NotUp { name: String, path: PathBuf },

    #[error("state file {}: {source}", path.display())]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("agent binary {} does not exist; build it with `cargo build -p weft-agent` or set WEFT_AGENT_BIN", path.display())]
    AgentMissing { path: PathBuf },

    #[error("control plane binary {} does not exist; build it with `cargo build -p weft-control` (it is looked for next to the agent binary)", path.display())]
    ControlMissing { path: PathBuf },

    #[error("the control plane is not serving after {secs} s; its log {}:\n{tail}", log.display())]
    ControlNotReady {
        secs: u64,
        log: PathBuf,
        tail: String,
    },

    #[error("{}: {reason}", path.display())]
    ConfigFile { path: PathBuf, reason: String },

    #[error("{file} is not applied to testbed {testbed:?}; applied files: {}", if applied.is_empty() { "none".to_string() } else { applied.join(", ") })]
    NotApplied {
        testbed: String,
        file: String,
        applied: Vec<String>,
    },

    #[error("testbed {testbed:?} was brought up without an agent, so there is none to start")]
    NoAgent { testbed: String },

    #[error("the agent of {node} exited during start-up ({status}); its log {}:\n{tail}", log.display())]
    AgentExited {
        node: String,
        status: String,
        log: PathBuf,
        tail: String,
    },

    #[error("the agent of {node} is not ready after {secs} s (last readiness answer: {last}); its log {}:\n{tail}", log.display())]
    AgentNotReady {
        node: String,
        secs: u64,
        last: String,
        log: PathBuf,
        tail: String,
    },

    #[error("testbed {testbed:?} has no gateway (bring it up with `Config::with_gateway`)")]
    NoGateway { testbed: String },

    #[error("gateway binary {} does not exist; build it with `cargo build -p weft-gateway` or set WEFT_GATEWAY_BIN (it is looked for next to the agent binary)", path.display())]
    GatewayMissing { path: PathBuf },

    #[error("the gateway is not ready: {status}; its log {}:\n{tail}", log.display())]
    GatewayNotReady {
        status: String,
        log: PathBuf,
        tail: String,
    },

    #[error("timed out after {secs} s waiting for {what}")]
    Timeout { what: String, secs: u64 },

    #[error("{what}: {source}")]
    Http {
        what: String,
        #[source]
        source: crate::http::Error,
    },

    #[error("metrics of {node}: {source}")]
    Metrics {
        node: String,
        #[source]
        source: crate::prom::ParseError,
    },

    #[error("could not stop process {pid} ({what}): {source}")]
    Kill {
        pid: u32,
        what: String,
        #[source]
        source: nix::Error,
    },
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

/// The testbed's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
