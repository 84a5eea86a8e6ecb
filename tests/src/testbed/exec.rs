//! Running commands in pods and nodes, in the foreground or in the background.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::cmd;
use super::error::{Error, Result};
use super::netns;
use super::process::{Placement, ProcessId, open_netns};
use super::{Testbed, cgroup, state};

/// A process started in a pod with [`Testbed::spawn`]; `down` kills it with the pod's cgroup.
#[derive(Debug, Clone)]
pub struct Background {
    /// The pod it runs in (or the node, for [`Testbed::spawn_node`]).
    pub pod: String,
    pub process: ProcessId,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl Background {
    /// Stops it: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&self, grace: Duration) -> Result<()> {
        self.process.stop(grace)
    }

    /// Whether it still runs.
    pub fn is_alive(&self) -> bool {
        self.process.is_alive()
    }
}

impl Testbed {
    /// A command that will run inside `pod`: it joins the pod's cgroup (so the agent's
    /// cgroup hooks capture its sockets), then enters the pod's network namespace. It starts
    /// in the pod's working directory.
    pub fn pod_command(&self, pod: &str, program: impl AsRef<OsStr>) -> Result<Command> {
        let pod = self.pod(pod)?;
        let mut command = Command::new(program);
        command.current_dir(state::pod_dir(&self.state_dir, &pod.name));
        Placement {
            cgroup_procs: Some(cgroup::open_procs(&pod.cgroup)?),
            netns: Some(open_netns(&pod.netns_path)?),
            new_session: false,
        }
        .apply(&mut command);
        Ok(command)
    }

    /// A command that will run in `node`'s network namespace, in no pod cgroup: like a
    /// process on the host, which the mesh must not capture.
    pub fn node_command(&self, node: &str, program: impl AsRef<OsStr>) -> Result<Command> {
        let node = self.node(node)?;
        let mut command = Command::new(program);
        command.current_dir(&self.state_dir);
        Placement {
            cgroup_procs: None,
            netns: Some(open_netns(&node.netns_path)?),
            new_session: false,
        }
        .apply(&mut command);
        Ok(command)
    }

    /// Runs `argv` in `pod` and returns its output, whatever its exit status.
    pub fn exec(&self, pod: &str, argv: &[&str]) -> Result<Output> {
        let (program, args) = split_argv(argv)?;
        cmd::output(self.pod_command(pod, program)?.args(args))
    }

    /// Runs `argv` in `pod` with this process's stdin, stdout and stderr; its exit status.
    pub fn exec_interactive(&self, pod: &str, argv: &[impl AsRef<OsStr>]) -> Result<ExitStatus> {
        let (program, args) = argv.split_first().ok_or_else(empty_argv)?;
        let mut command = self.pod_command(pod, program)?;
        command.args(args);
        command.status().map_err(|source| Error::Spawn {
            command: cmd::display(&command),
            source,
        })
    }

    /// Runs `argv` in `pod`, failing unless it exits 0.
    pub fn exec_ok(&self, pod: &str, argv: &[&str]) -> Result<Output> {
        let (program, args) = split_argv(argv)?;
        cmd::run(self.pod_command(pod, program)?.args(args))
    }

    /// Runs `argv` in `node`'s network namespace (outside every pod cgroup); its output.
    pub fn exec_node(&self, node: &str, argv: &[&str]) -> Result<Output> {
        let (program, args) = split_argv(argv)?;
        cmd::output(self.node_command(node, program)?.args(args))
    }

    /// Starts `argv` in `pod` in the background, detached (own session, stdin from
    /// /dev/null, stdout and stderr to a log in the pod's directory). It outlives this
    /// process; `down` kills it.
    pub fn spawn(&self, pod: &str, argv: &[&str]) -> Result<Background> {
        let (program, args) = split_argv(argv)?;
        let dir = self.pod_dir(pod)?;
        let log = next_log(&dir, program);
        let mut command = self.pod_command(pod, program)?;
        command.args(args);
        let pod_cgroup = &self.pod(pod)?.cgroup;
        spawn_detached(command, &log, pod_cgroup).map(|process| Background {
            pod: pod.to_owned(),
            process,
            log,
        })
    }

    /// Starts `argv` in `node`'s network namespace and the node's cgroup (beside the agent,
    /// in no pod cgroup, so it is never captured), detached like [`Testbed::spawn`], with its
    /// log in the node's state directory. `down` kills it with the node's cgroup. It stands
    /// for a node-level process such as another mesh's proxy.
    pub fn spawn_node(&self, node: &str, argv: &[&str]) -> Result<Background> {
        let (program, args) = split_argv(argv)?;
        let node = self.node(node)?;
        let log = next_log(&self.state_dir.join(&node.name), program);
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(self.state_dir.join(&node.name));
        Placement {
            cgroup_procs: Some(cgroup::open_procs(&node.cgroup)?),
            netns: Some(open_netns(&node.netns_path)?),
            new_session: false,
        }
        .apply(&mut command);
        spawn_detached(command, &log, &node.cgroup).map(|process| Background {
            pod: node.name.clone(),
            process,
            log,
        })
    }

    /// Waits until something accepts TCP connections on `addr` as seen from `pod`'s network
    /// namespace (a server started with [`Testbed::spawn`] is listening).
    ///
    /// The probe runs on a thread of this process, which is in no pod cgroup, so it is not
    /// itself captured.
    pub fn wait_for_tcp(&self, pod: &str, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let pod = self.pod(pod)?;
        let deadline = Instant::now() + timeout;
        let connected = netns::in_netns(&pod.netns_path, || {
            loop {
                let attempt = Duration::from_millis(500);
                if std::net::TcpStream::connect_timeout(&addr, attempt).is_ok() {
                    return true;
                }
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })?;
        if connected {
            Ok(())
        } else {
            Err(Error::Timeout {
                what: format!("something to listen on {addr} in {}", pod.name),
                secs: timeout.as_secs(),
            })
        }
    }
}

/// Spawns an already placed `command` detached, with output to `log`. `cgroup_dir` is only
/// used to name the error.
pub(super) fn spawn_detached(
    mut command: Command,
    log: &Path,
    cgroup_dir: &Path,
) -> Result<ProcessId> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    }
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(Error::io("opening log", log))?;
    let err = out
        .try_clone()
        .map_err(Error::io("duplicating log fd", log))?;
    // Detach: a new session, so that neither a terminal's SIGINT nor the end of `cargo
    // xtask` reaches it.
    Placement {
        new_session: true,
        ..Placement::default()
    }
    .apply(&mut command);
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    let child = command.spawn().map_err(|source| Error::Spawn {
        command: format!(
            "{} (in cgroup {})",
            cmd::display(&command),
            cgroup_dir.display()
        ),
        source,
    })?;
    let pid = child.id();
    // The Child is dropped without waiting: the process is followed by pid from here on,
    // and ProcessId::is_alive reaps it once it has exited.
    drop(child);
    ProcessId::of(pid).ok_or_else(|| Error::Timeout {
        what: format!(
            "process {pid} to start (it exited at once; see {})",
            log.display()
        ),
        secs: 0,
    })
}

fn split_argv<'a>(argv: &'a [&'a str]) -> Result<(&'a str, &'a [&'a str])> {
    argv.split_first()
        .map(|(p, a)| (*p, a))
        .ok_or_else(empty_argv)
}

fn empty_argv() -> Error {
    Error::Command {
        command: String::new(),
        status: "not run".to_owned(),
        stderr: "empty command line".to_owned(),
    }
}

/// `<dir>/<program>-<n>.log` with the first unused n.
fn next_log(dir: &Path, program: &str) -> PathBuf {
    let base = Path::new(program)
        .file_name()
        .map_or_else(|| "process".into(), |n| n.to_string_lossy().into_owned());
    (1..)
        .map(|n| dir.join(format!("{base}-{n}.log")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| dir.join(format!("{base}.log")))
}
