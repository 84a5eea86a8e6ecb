//! cgroup v2 directories for pods and node agents: finding the mount, creating, emptying and
//! removing them.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::error::{Error, Result};

/// The mount point of the cgroup v2 hierarchy, from `/proc/self/mountinfo`. It is
/// `/sys/fs/cgroup` on most machines and `/sys/fs/cgroup/unified` on hybrid ones.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mountinfo = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(mountinfo).map_err(Error::io("reading", mountinfo))?;
    mounts(&text, "cgroup2").next().ok_or(Error::NoCgroup2)
}

/// The mount points of the filesystems of type `fstype` in a mountinfo text.
pub(crate) fn mounts<'a>(
    mountinfo: &'a str,
    fstype: &'a str,
) -> impl Iterator<Item = PathBuf> + 'a {
    mountinfo.lines().filter_map(move |line| {
        // `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw` (proc(5)): the
        // optional fields end at " - ", after which comes the filesystem type.
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != fstype {
            return None;
        }
        left.split_whitespace()
            .nth(4)
            .map(|p| PathBuf::from(unescape(p)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Creates the cgroup directory `dir` and its parents.
pub fn create(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io("creating cgroup", dir))
}

/// Opens `dir/cgroup.procs` for writing. A child process writes "0" to it between `fork`
/// and `exec` to move itself into `dir` (see [`super::process`]); it is opened beforehand
/// because opening files is not async-signal-safe.
pub fn open_procs(dir: &Path) -> Result<File> {
    let procs = dir.join("cgroup.procs");
    OpenOptions::new()
        .write(true)
        .open(&procs)
        .map_err(Error::io("opening", procs))
}

/// The pids directly in the cgroup `dir` (not in its children); none if it does not exist.
pub fn procs(dir: &Path) -> Vec<Pid> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .map(Pid::from_raw)
        .collect()
}

/// Every directory of the tree at `dir`, children before parents.
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(tree(&entry.path()));
            }
        }
    }
    if dir.is_dir() {
        out.push(dir.to_owned());
    }
    out
}

/// Sends `signal` to every process in the tree at `dir`.
pub fn signal_tree(dir: &Path, signal: Signal) {
    for cg in tree(dir) {
        for pid in procs(&cg) {
            // The process may have exited since the read: nothing to do then.
            let _ = nix::sys::signal::kill(pid, signal);
        }
    }
}

/// Kills every process in the tree at `dir` and waits until it is empty. `cgroup.kill`
/// (Linux 5.14) does this atomically, so a process forking meanwhile cannot escape; on older
/// kernels every listed process is sent SIGKILL until none is left.
pub fn kill_tree(dir: &Path, timeout: Duration) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    let kill_file = dir.join("cgroup.kill");
    let deadline = Instant::now() + timeout;
    loop {
        if kill_file.exists() {
            std::fs::write(&kill_file, "1").map_err(Error::io("writing", &kill_file))?;
        } else {
            signal_tree(dir, Signal::SIGKILL);
        }
        if !populated(dir) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("the processes of cgroup {} to die", dir.display()),
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether any process is left in the tree at `dir` (`populated` in `cgroup.events`).
pub fn populated(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join("cgroup.events")) {
        Ok(events) => events.lines().any(|l| l.trim() == "populated 1"),
        Err(_) => tree(dir).iter().any(|cg| !procs(cg).is_empty()),
    }
}

/// Removes the (empty) tree at `dir`, children first. Removing a cgroup whose last process
/// has just died can fail with EBUSY for a moment, so each removal is retried briefly.
pub fn remove_tree(dir: &Path) -> Result<()> {
    for cg in tree(dir) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::remove_dir(&cg) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(Error::io("removing cgroup", &cg)(e)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_mountinfo() {
        let text = "\
35 24 0:30 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw
37 35 0:32 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,name=systemd
40 24 0:35 / /sys/fs/my\\040bpf rw shared:12 - bpf bpf rw";
        assert_eq!(
            mounts(text, "cgroup2").collect::<Vec<_>>(),
            [PathBuf::from("/sys/fs/cgroup/unified")]
        );
        assert_eq!(
            mounts(text, "bpf").next(),
            Some(PathBuf::from("/sys/fs/my bpf"))
        );
        assert_eq!(mounts(text, "xfs").next(), None);
    }
}
