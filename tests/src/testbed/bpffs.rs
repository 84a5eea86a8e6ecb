//! The BPF filesystem, where the agents pin programs and maps so that they outlive an agent
//! restart. A Kubernetes node has it mounted and the agent's DaemonSet mounts it as a
//! hostPath; a fresh VM does not, so the testbed mounts it the same way.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::cgroup::mounts;
use super::error::{Error, Result};

/// Where bpffs is mounted on a node.
pub const BPFFS: &str = "/sys/fs/bpf";

/// The directory under bpffs where the agents of testbed `name` pin their objects.
pub fn pin_dir(name: &str) -> PathBuf {
    Path::new(BPFFS).join(name)
}

/// Whether a bpffs is mounted at `/sys/fs/bpf`.
pub fn is_mounted() -> Result<bool> {
    let mountinfo = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(mountinfo).map_err(Error::io("reading", mountinfo))?;
    Ok(mounts(&text, "bpf").any(|p| p == Path::new(BPFFS)))
}

/// Mounts bpffs at `/sys/fs/bpf` unless one is there already.
pub fn ensure_mounted() -> Result<()> {
    if is_mounted()? {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS).map_err(Error::io("creating", BPFFS))?;
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|source| Error::MountBpffs {
        path: BPFFS.into(),
        source,
    })
}

/// Removes the pin directory of testbed `name` and everything pinned in it.
pub fn remove_pins(name: &str) -> Result<()> {
    let dir = pin_dir(name);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io("removing pin directory", dir)(e))
        }
        _ => Ok(()),
    }
}
