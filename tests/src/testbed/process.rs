//! Starting processes inside a namespace and cgroup, and following processes by pid across
//! commands (an agent started by `cargo xtask testbed up` is stopped by `... down`).

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitPidFlag;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// A process, identified by pid and start time so that a recycled pid is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot.
    pub start_time: u64,
}

impl ProcessId {
    /// The process `pid` as it is now; `None` if there is none.
    pub fn of(pid: u32) -> Option<Self> {
        stat(pid).map(|(_, start_time)| Self { pid, start_time })
    }

    /// Whether the process still runs (a zombie does not). Reaps it first if it is a child
    /// of this process, so that a test that stops its own agent does not leave a zombie.
    pub fn is_alive(&self) -> bool {
        let _ = nix::sys::wait::waitpid(self.nix_pid(), Some(WaitPidFlag::WNOHANG));
        matches!(stat(self.pid), Some((state, start)) if state != 'Z' && state != 'X' && start == self.start_time)
    }

    /// Sends `signal`, if the process is still the one recorded.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        if !self.is_alive() {
            return Ok(());
        }
        match nix::sys::signal::kill(self.nix_pid(), signal) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(source) => Err(Error::Kill {
                pid: self.pid,
                what: format!("sending {signal}"),
                source,
            }),
        }
    }

    /// Asks the process to stop with SIGTERM, waits up to `grace` for it to exit, then kills
    /// it with SIGKILL.
    pub fn stop(&self, grace: Duration) -> Result<()> {
        self.signal(Signal::SIGTERM)?;
        if self.wait_exit(grace) {
            return Ok(());
        }
        self.signal(Signal::SIGKILL)?;
        if self.wait_exit(Duration::from_secs(5)) {
            Ok(())
        } else {
            Err(Error::Timeout {
                what: format!("process {} to die after SIGKILL", self.pid),
                secs: 5,
            })
        }
    }

    /// Waits up to `timeout` for the process to exit; whether it did.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_alive() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn nix_pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.pid).unwrap_or(i32::MAX))
    }
}

/// State letter and start time of `pid`, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces and ')'.
    let after_comm = &text[text.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields 4..=21 come between the state (3) and the start time (22).
    let start_time = fields.nth(18)?.parse().ok()?;
    Some((state, start_time))
}

/// Where a child process goes between `fork` and `exec`.
#[derive(Debug, Default)]
pub struct Placement {
    /// `cgroup.procs` of the cgroup to join, opened for writing.
    pub cgroup_procs: Option<File>,
    /// The network namespace to enter.
    pub netns: Option<File>,
    /// Start a new session, so the process survives its parent's terminal and process group.
    pub new_session: bool,
}

impl Placement {
    /// Arranges for `cmd`'s child to join the cgroup first (so that every socket it creates
    /// is seen by the cgroup's eBPF hooks), then enter the network namespace. The files were
    /// opened before `fork` because only async-signal-safe calls are allowed after it.
    pub fn apply(self, cmd: &mut Command) {
        let Placement {
            cgroup_procs,
            netns,
            new_session,
        } = self;
        let hook = move || -> std::io::Result<()> {
            if new_session && unsafe_setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(procs) = &cgroup_procs {
                // "0" moves the writing process (cgroup-v2.rst, "cgroup.procs").
                // SAFETY: writes one byte from a static buffer to an fd this closure owns.
                let n = unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) };
                if n < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(ns) = &netns {
                // SAFETY: setns on an fd this closure owns; it only affects the child.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        };
        // SAFETY: the hook only makes async-signal-safe system calls (setsid, write, setns)
        // and allocates nothing, as required between fork and exec.
        unsafe {
            cmd.pre_exec(hook);
        }
    }
}

fn unsafe_setsid() -> libc::pid_t {
    // SAFETY: setsid has no memory-safety preconditions.
    unsafe { libc::setsid() }
}

/// Opens a namespace file for [`Placement::netns`].
pub fn open_netns(path: &std::path::Path) -> Result<File> {
    File::open(path).map_err(Error::io("opening network namespace", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_own_process() {
        let me = ProcessId::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        let recycled = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!recycled.is_alive());
    }

    #[test]
    fn sees_child_exit_and_reaps_it() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let id = ProcessId::of(child.id()).unwrap();
        assert!(id.is_alive());
        id.stop(Duration::from_secs(5)).unwrap();
        assert!(!id.is_alive());
        assert!(stat(id.pid).is_none(), "the child was reaped");
        assert!(child.try_wait().is_err(), "nothing left to wait for");
    }
}
