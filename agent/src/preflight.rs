//! Checks the host before anything is loaded, so a missing privilege or mount is reported as
//! one line naming what is missing and how to fix it, not as an errno from deep inside aya.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "weft-agent needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN) to load eBPF programs \
         and enter pod network namespaces; it runs as uid {uid}: run it as root, or in a \
         privileged DaemonSet pod"
    )]
    NotRoot { uid: u32 },
    #[error(
        "no bpffs mounted at {path}: mount it with `mount -t bpf bpf {path}` (in Kubernetes, \
         a hostPath volume of /sys/fs/bpf), or point --bpffs at the mount"
    )]
    NoBpffs { path: PathBuf },
    #[error(
        "no cgroup v2 mount found in /proc/self/mountinfo: the agent attaches its programs to \
         pod cgroups, which needs cgroup v2; mount it with `mount -t cgroup2 none \
         /sys/fs/cgroup` (or boot with systemd.unified_cgroup_hierarchy=1)"
    )]
    NoCgroup2,
    #[error("cannot read /proc/self/mountinfo: {source}")]
    Mountinfo {
        #[source]
        source: std::io::Error,
    },
}

/// What preflight learned about the host.
#[derive(Debug, Clone)]
pub struct Host {
    pub cgroup2_mount: PathBuf,
}

/// Runs every check in order of how fundamental it is.
pub fn check(bpffs: &Path) -> Result<Host, PreflightError> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        return Err(PreflightError::NotRoot { uid });
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|source| PreflightError::Mountinfo { source })?;
    let cgroup2_mount = find_mount(&mountinfo, "cgroup2").ok_or(PreflightError::NoCgroup2)?;
    if !is_bpffs(bpffs) {
        return Err(PreflightError::NoBpffs {
            path: bpffs.to_path_buf(),
        });
    }
    Ok(Host { cgroup2_mount })
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// The mount point of the first filesystem of type `fstype` in a mountinfo text
/// (`proc_pid_mountinfo(5)`: the type follows the ` - ` separator; the mount point is field 5).
pub fn find_mount(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != fstype {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.clone().take(3).collect();
            if let Ok(code) = u8::from_str_radix(&digits, 8) {
                out.push(char::from(code));
                chars.nth(2);
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
35 33 0:30 / /sys/fs/cgroup/cpu rw,relatime shared:11 - cgroup cgroup rw,cpu
";

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        assert_eq!(
            find_mount(HYBRID, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(find_mount(HYBRID, "bpf"), None);
    }

    #[test]
    fn unescapes_mount_points() {
        let line = "40 25 0:40 / /mnt/with\\040space rw - cgroup2 none rw\n";
        assert_eq!(
            find_mount(line, "cgroup2"),
            Some(PathBuf::from("/mnt/with space"))
        );
    }

    #[test]
    fn optional_fields_do_not_confuse_the_parser() {
        let line = "41 25 0:41 / /x rw shared:1 master:2 - cgroup2 none rw\n";
        assert_eq!(find_mount(line, "cgroup2"), Some(PathBuf::from("/x")));
    }
}
