//! The control plane under test, as a child process: a real `weft-control` binary, so its
//! memory is its own (read from `/proc/<pid>/status`) and not mixed with the subscribers'.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use nix::{sys::signal::Signal, unistd::Pid};
use serde::Serialize;
use tokio::process::{Child, Command};
use weft_control::ca::ROOT_CERT_FILE;
use weft_link::control::ClientIdentity;

/// How long the control plane gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Finds `weft-control`: the given path, or the binary beside this one (cargo puts both in
/// `target/<profile>/`).
pub fn binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let me = std::env::current_exe().context("locating this executable")?;
    let beside = me.with_file_name("weft-control");
    if !beside.is_file() {
        bail!(
            "{} not found; build it with `cargo build --release -p weft-control` or pass \
             --control-bin",
            beside.display()
        );
    }
    Ok(beside)
}

/// A running control plane.
pub struct ControlProcess {
    child: Child,
    pid: u32,
    pub addr: SocketAddr,
    pub root_pem: String,
    /// The credential the fleet and the status client present.
    pub operator: ClientIdentity,
    pub log: PathBuf,
    /// From spawn until it accepted connections: reading, validating and compiling the
    /// whole configuration dominates.
    pub startup: Duration,
}

/// Resident memory of the process, in KiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the most it was ever resident.
    pub hwm_kib: u64,
}

impl ControlProcess {
    /// Starts the control plane on a free loopback port and waits until it accepts
    /// connections.
    pub async fn start(
        binary: &Path,
        config_dir: &Path,
        state_dir: &Path,
        log: &Path,
        log_level: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let addr = free_port()?;
        let log = log.to_path_buf();
        let log_file = std::fs::File::create(&log).context("creating the control plane log")?;
        let started = Instant::now();
        let mut child = Command::new(binary)
            .arg("--config-dir")
            .arg(config_dir)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--init-ca")
            .arg("--listen")
            .arg(addr.to_string())
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("duplicating the log file")?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("the control plane exited at once")?;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the control plane exited with {status} before serving; see {}",
                    log.display()
                );
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if started.elapsed() > timeout {
                bail!(
                    "the control plane did not listen on {addr} within {timeout:?}; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let startup = started.elapsed();
        // Written at start-up, before the port is bound (ControlPlane::new loads the CA first).
        let root_pem = std::fs::read_to_string(state_dir.join(ROOT_CERT_FILE))
            .context("reading the control plane's root certificate from its state directory")?;
        // One operator credential for the measuring clients: an operator may subscribe as
        // any node, so the fleet needs no credential per simulated node.
        let ca = weft_control::ca::CertificateAuthority::load(state_dir)?;
        let (issued, key) = ca.issue_client_credential(
            "spiffe://cluster.local/operator/weft-control-scale",
            "weft-control-scale",
            Duration::from_secs(24 * 3600),
        )?;
        let operator = ClientIdentity::new(issued.cert_pem, key);
        Ok(ControlProcess {
            operator,
            child,
            pid,
            addr,
            root_pem,
            log,
            startup,
        })
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Fails if the process is gone, so a crash is reported as such, not as a timeout.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the control plane exited with {status}; see {}",
                self.log.display()
            );
        }
        Ok(())
    }

    pub fn memory(&self) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .context("reading the control plane's /proc status")?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Memory {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
        })
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .context("reading the control plane's /proc stat")?;
        // The command name (field 2) may contain spaces; fields after its ')' are plain.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("unexpected /proc/<pid>/stat format")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<u64>().ok()))
            .sum();
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|v| u64::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(100);
        Ok(Duration::from_micros(ticks * 1_000_000 / hz))
    }

    /// SIGTERM, then SIGKILL if it does not exit within [`STOP_GRACE`].
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let pid = Pid::from_raw(i32::try_from(self.pid).context("pid out of range")?);
        // Already gone is fine: the caller asked for it to stop.
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("the control plane ignored SIGTERM for {STOP_GRACE:?} and was killed");
            }
        }
        Ok(())
    }
}

/// A loopback port nobody is using now. The control plane binds it a moment later; the
/// window is small and a collision shows up as a clear bind error in its log.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}
